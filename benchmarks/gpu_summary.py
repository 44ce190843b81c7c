"""The one summary table of benchmarks/gpu_checks.sh, from the JSON files its
steps wrote into OUT: workload, asl_jax, torch eager, torch.compile default,
torch.compile max-autotune, target, met?. A step that did not finish shows as
"not run".

  python benchmarks/gpu_summary.py OUT
"""

import json
import os
import sys


def _load(out, name):
  try:
    with open(os.path.join(out, f"bench_{name}.json")) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _row(result, workload, framework):
  for r in (result or {}).get("rows", []):
    if r["workload"] == workload and r["framework"].startswith(framework) and "error" not in r:
      return r
  return None


def _rate(r):
  return f"{r['images_per_s']:,.0f} im/s" if r else "-"


def _train_line(result, label):
  mine = _row(result, "train", "asl_jax")
  eager, comp = _row(result, "train", "torch eager"), _row(result, "train", "torch.compile")
  if comp and "max-autotune" in comp["framework"]:
    comp = None
  auto = _row(result, "train", "torch.compile max-autotune")
  if not mine:
    return [label, "not run", "-", "-", "-", "", ""]
  mfu = f", MFU {mine['mfu']:.1%}" if mine.get("mfu") is not None else ""
  cell = f"{_rate(mine)}{mfu}"
  best = comp or auto
  ratio = mine["images_per_s"] / best["images_per_s"] if best else None
  per_image = mine.get("model_flops_per_image")
  target = ">= 1.0x torch.compile (1.3x stretch)"
  met = "-" if ratio is None else ("yes" if ratio >= 1.0 else "no") + f" ({ratio:.2f}x)"
  extra = f"; {per_image / 1e9:.3g} GFLOP/image" if per_image else ""
  return [label, cell + extra, _rate(eager), _rate(comp), _rate(auto), target, met]


def lines(out):
  table = []
  a = _load(out, "a_ndec_32x4")
  table.append(_train_line(a, ":ndec train 32x4"))
  s = _load(out, "b_search")
  fast = _row(s, "search", "asl_jax (bf16") or _row(s, "search", "asl_jax (highest")
  f32 = _row(s, "search", "asl_jax (float32")
  if fast:
    q, r, d = fast["queries"], fast["references"], fast["dim"]
    ok = fast["seconds"] < 0.2 and fast["top_k_agreement"] >= 0.9999
    table.append([f"search {q}x{r}x{d} top-{fast['k']}",
                  f"{fast['seconds']:.3f} s (agree {fast['top_k_agreement']:.5f}, "
                  f"{fast['recomputed_queries']} re-searched; f32 scan "
                  f"{f32['seconds']:.3f} s)" if f32 else f"{fast['seconds']:.3f} s",
                  "-", "-", "-", "< 0.2 s, agree >= 0.9999", "yes" if ok else "no"])
  else:
    table.append(["search", "not run", "-", "-", "-", "< 0.2 s", ""])
  e = _load(out, "c_embed_files")
  rows = [r for r in (e or {}).get("rows", []) if r["workload"] == "embed_files"]
  if rows:
    steady = lambda r: r.get("steady_images_per_s") or r["images_per_s"]
    best = max(rows, key=steady)
    cell = ", ".join(f"{r['workers']}w: {steady(r):,.0f} im/s ({r['images_per_s']:,.0f} with "
                     "start-up)" for r in rows)
    same = all(r.get("same_descriptors_as_first_row", True) for r in rows)
    table.append(["eval embedding from JPEGs", cell + ("" if same else "; DESCRIPTORS DIFFER"),
                  "-", "-", "-", ">= 5,000 im/s", "yes" if steady(best) >= 5000 else "no"])
  else:
    table.append(["eval embedding from JPEGs", "not run", "-", "-", "-", ">= 5,000 im/s", ""])
  v = _row(_load(out, "d_e2e_views"), "e2e", "asl_jax")
  if v and "share_of_in_memory" in v:
    table.append(["e2e from pre-generated views", f"{_rate(v)} ({v['share_of_in_memory']:.2f} "
                  "of in-memory)", "-", "-", "-", ">= 0.90 of in-memory",
                  "yes" if v["share_of_in_memory"] >= 0.9 else "no"])
  else:
    table.append(["e2e from pre-generated views", "not run", "-", "-", "-", ">= 0.90", ""])
  w = _row(_load(out, "e_ndec_64x4"), "train", "asl_jax")
  table.append([":ndec train 64x4", _rate(w) + (f", MFU {w['mfu']:.1%}" if w and w.get("mfu")
                                                 is not None else ""), "-", "-", "-", "", ""])
  t = _row(_load(out, "e_rs_two_pass"), "train", "asl_jax")
  if t:
    ratio = t["executed_flops_per_step_per_device"] / t["model_flops_per_step_per_device"]
    table.append(["RS@k two-pass train", f"{_rate(t)}, executed/model FLOPs {ratio:.3f}",
                  "-", "-", "-", "", ""])
  m = _load(out, "e_max_autotune")
  if m:
    table.append(_train_line(m, ":ndec 32x4 max-autotune"))
  return table


def format_table(table):
  head = ["workload", "asl_jax", "torch eager", "torch.compile", "max-autotune", "target",
          "met?"]
  widths = [max(len(str(r[i])) for r in table + [head]) for i in range(len(head))]
  fmt = lambda r: " | ".join(str(c).ljust(w) for c, w in zip(r, widths))
  return "\n".join([fmt(head), "-+-".join("-" * w for w in widths)] + [fmt(r) for r in table])


if __name__ == "__main__":
  print(format_table(lines(sys.argv[1] if len(sys.argv) > 1 else "/tmp/out")))
