"""The benchmark's harness: timing, rates and MFU, the results table and the
JSON file; shared by every workload and by the scripts in benchmarks/."""

import json
import time

from asl_jax import flops, paths

PEAK_TFLOPS = flops.PEAK_TFLOPS  # Dense peak TFLOP/s per chip, (bf16, fp32).
peak_tflops = flops.peak_tflops


def percentiles(seconds):
  """p10, p50 and p90 of step times in milliseconds."""
  import numpy as np
  p10, p50, p90 = np.percentile(np.asarray(seconds) * 1e3, [10, 50, 90])
  return {"p10_ms": float(p10), "p50_ms": float(p50), "p90_ms": float(p90)}


def mfu(flops_per_step: float, step_seconds: float, peak: float | None):
  """(achieved TFLOP/s, model FLOPs utilisation) of one device."""
  achieved = flops_per_step / step_seconds / 1e12
  return achieved, (achieved / peak if peak else None)


def mean_seconds(fn, *args, repeats: int = 3) -> float:
  """Mean seconds of `repeats` calls of the JAX function fn(*args), after one
  untimed call (compilation)."""
  import jax
  jax.block_until_ready(fn(*args))
  return sum(time_each(lambda: fn(*args), repeats, jax.block_until_ready)) / repeats


def time_each(step, n: int, sync):
  """Seconds of each of `n` calls of `step()` (synchronised after each)."""
  out = []
  for _ in range(n):
    t0 = time.perf_counter()
    sync(step())
    out.append(time.perf_counter() - t0)
  return out


def rates(images, seconds, flop=None, peak=None):
  """images/s at the median step, the percentiles and (with FLOPs) TFLOP/s and MFU."""
  import numpy as np
  t = percentiles(seconds)
  row = {"images_per_s": images / float(np.median(seconds)), **t}
  if flop and np.isfinite(flop):
    row["tflops_per_s"], row["mfu"] = mfu(flop, float(np.median(seconds)), peak)
  return row


def compiled_flops(compiled) -> float:
  """XLA's cost analysis of a compiled function: its FLOPs (nan when absent)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def _what(r: dict) -> str:
  """The table's second column: the framework, or the setting of a data row."""
  if r["workload"] == "input":
    return f"{r['source']}, {r['workers']} workers"
  if r["workload"] == "e2e":
    return f"fed by Grain, {r['workers']} workers"
  if r["workload"] == "embed_files":
    return f"JPEG files, {r['workers']} workers"
  return r["framework"]


def _row_line(r: dict) -> str:
  what = _what(r)
  if "error" in r:
    return f"{r['workload']:<8} {what:<34} failed: {r['error']}"
  if r["workload"] == "search":
    rate = f"{r['queries_per_s']:.0f} q/s"
    return (f"{r['workload']:<8} {what[:34]:<34} {'':>6} {rate:>12} "
            f"{r['seconds'] * 1e3:>8.0f} {'':>8} {'':>8} {'':>8} {'':>6} "
            f"agree {r['top_k_agreement']:.4f}")
  f = lambda v, fmt: (fmt % v) if isinstance(v, (int, float)) else "-"
  ratio = r.get("asl_jax_over_this", r.get("share_of_in_memory"))
  return (f"{r['workload']:<8} {what[:34]:<34} {r['batch']:>6} "
          f"{r['images_per_s']:>8.1f} im/s {f(r.get('p10_ms'), '%.1f'):>8} "
          f"{f(r.get('p50_ms'), '%.1f'):>8} {f(r.get('p90_ms'), '%.1f'):>8} "
          f"{f(r.get('tflops_per_s'), '%.3f'):>8} {f(r.get('mfu'), '%.3f'):>6} "
          f"{f(ratio, '%.2f'):>7}")


def format_table(result: dict) -> str:
  """The printed table of a run's results (one line per row)."""
  head = (f"{result['device_count']} x {result['device_kind']} ({result['host_cores']} host "
          f"cores); {result['config']} {' '.join(result['overrides'])}; batch "
          f"{result['batch']} at {result['image_size']} px, {result['dtype']}, "
          f"{result['model']}; {result['date']}")
  lines = [head, f"{'workload':<8} {'what':<34} {'batch':>6} {'rate':>12} {'p10 ms':>8} "
           f"{'p50 ms':>8} {'p90 ms':>8} {'TFLOP/s':>8} {'MFU':>6} {'ratio':>7}"]
  lines += [_row_line(r) for r in result["rows"]]
  lines.append("ratio: asl_jax / torch on torch rows; e2e: share of the in-memory train rate. "
               "search rows: p10 column = seconds x 1000 for all queries.")
  return "\n".join(lines)


def write_json(result: dict, path: str):
  """The results as the indented JSON file `--json` names (a file already
  there is replaced only once the new one is complete)."""
  with paths.replaced_when_written(path) as f:
    json.dump(result, f, indent=1)
