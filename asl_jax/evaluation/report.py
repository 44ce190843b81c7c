"""Reports people can look at: what each candidate pair is and what a
decision removed of each kind, a per-kind breakdown, the results table printed
at the end of a run, a precision-recall plot with and without the gate, and a
gallery of the worst mistakes."""

import collections

from PIL import Image, ImageDraw, ImageFont

from asl_jax.evaluation import metrics


def per_kind_breakdown(meta: dict, query_ids, reference_ids, pairs, keep,
                       gt: metrics.GroundTruth) -> dict:
  """What happened to each kind of query.

  copies, per edit: how many, found among the k candidates, found at rank 1,
  and removed by the gate; hard negatives, per kind: pairs with the reference
  they resemble that were predicted, and removed by the gate; distractors:
  their predictions and how many the gate removed.
  """
  by_query = collections.defaultdict(list)
  for j, (qi, ri) in enumerate(zip(pairs.query_index, pairs.reference_index)):
    by_query[query_ids[qi]].append((reference_ids[ri], float(pairs.score[j]), bool(keep[j])))
  edits = collections.defaultdict(lambda: collections.Counter())
  hard = collections.defaultdict(lambda: collections.Counter())
  distractors = collections.Counter()
  for q, m in meta.items():
    preds = by_query.get(q, [])
    if m["kind"] == "copy":
      match = [p for p in preds if p[0] == m["reference_id"]]
      best = max((p[1] for p in preds), default=None)
      for e in (m["edits"] or ["(none)"]):
        c = edits[e]
        c["queries"] += 1
        c["found"] += bool(match)
        c["rank_1"] += bool(match) and match[0][1] >= best
        c["removed_by_gate"] += bool(match) and not match[0][2]
    elif m["kind"] == "hard_negative":
      c = hard[m["hard_negative_kind"]]
      c["queries"] += 1
      match = [p for p in preds if p[0] == m["resembles_id"]]
      c["predicted"] += bool(match)
      c["removed_by_gate"] += bool(match) and not match[0][2]
    elif m["kind"] == "distractor":
      distractors["queries"] += 1
      distractors["predictions"] += len(preds)
      distractors["removed_by_gate"] += sum(not p[2] for p in preds)
  return {"copies_by_edit": {k: dict(v) for k, v in sorted(edits.items())},
          "hard_negatives_by_kind": {k: dict(v) for k, v in sorted(hard.items())},
          "distractors": dict(distractors)}


def precision_recall_png(path: str, curves: dict):
  """curves: label -> (query ids, reference ids, scores, gt)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
  for label, (q, r, s, gt) in curves.items():
    p, rec, _ = metrics.precision_recall_curve(q, r, s, gt)
    ap = metrics.micro_ap(q, r, s, gt)["micro_ap"]
    ax.plot(rec, p, label=f"{label} (μAP {ap:.3f})")
  ax.axhline(0.9, color="grey", lw=0.5, ls="--")
  ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
         title="Pooled precision-recall (ISC2021)")
  ax.legend(loc="lower left")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def gallery_png(path: str, rows: list[dict], thumb: int = 96):
  """rows: dicts with 'title', 'query' and 'reference' (uint8 images or None)
  and 'caption'; one row per pair, query left, reference right."""
  font = ImageFont.load_default(size=12)
  line = 16
  width, height = 2 * thumb + 560, len(rows) * (thumb + 8) + 8
  canvas = Image.new("RGB", (width, max(height, 40)), "white")
  draw = ImageDraw.Draw(canvas)
  for i, row in enumerate(rows):
    y = 8 + i * (thumb + 8)
    for j, key in enumerate(("query", "reference")):
      if row.get(key) is not None:
        im = Image.fromarray(row[key]).resize((thumb, thumb))
        canvas.paste(im, (8 + j * (thumb + 4), y))
    x = 2 * thumb + 20
    draw.text((x, y), row["title"], fill="black", font=font)
    for k, text in enumerate(row["caption"].split("\n")):
      draw.text((x, y + line * (k + 1)), text, fill=(60, 60, 60), font=font)
  canvas.save(path)


def categorize(pairs, query_ids, reference_ids, meta, gt) -> list[str]:
  """What each candidate pair is: true_copy, hard_negative:<kind>,
  distractor (the query has no copy and resembles nothing), negative (a
  non-copy query of the real data, whose ground truth does not say which
  kind) or wrong_reference."""
  out = []
  for qi, ri in zip(pairs.query_index, pairs.reference_index, strict=False):
    q, r = query_ids[qi], reference_ids[ri]
    m = meta.get(q, {})
    if (q, r) in gt:
      out.append("true_copy")
    elif m.get("kind") == "hard_negative" and m.get("resembles_id") == r:
      out.append("hard_negative:" + m["hard_negative_kind"])
    elif m.get("kind") == "distractor":
      out.append("distractor")
    elif m.get("kind") == "negative":  # Real data: hard negative or distractor.
      out.append("negative")
    else:
      out.append("wrong_reference")
  return out


def gate_report(categories, keep) -> dict:
  """Counts of each category before and after the gate."""
  before = collections.Counter(categories)
  after = collections.Counter(c for c, k in zip(categories, keep, strict=False) if k)
  counts = {c: {"before": before[c], "after": after[c]} for c in sorted(before)}
  hn_before = sum(v for c, v in before.items() if c.startswith("hard_negative"))
  hn_after = sum(v for c, v in after.items() if c.startswith("hard_negative"))
  counts["hard_negative"] = {"before": hn_before, "after": hn_after}

  def removed(cat):
    b = counts.get(cat, {"before": 0, "after": 0})
    return (b["before"] - b["after"]) / b["before"] if b["before"] else None

  kinds = sorted(c for c in before if c.startswith("hard_negative:"))
  return {"counts": counts,
          "removed_fraction": {
              "true_copy": removed("true_copy"),
              "hard_negative": removed("hard_negative"),
              "hard_negative:reverse_crop": removed("hard_negative:reverse_crop"),
              **{c: removed(c) for c in kinds},
              "distractor": removed("distractor"),
              "negative": removed("negative"),
              "wrong_reference": removed("wrong_reference"),
          }}


def format_table(report: dict) -> str:
  """The short results table printed at the end of a run."""
  def f(x):
    return "  n/a " if x is None else f"{x:6.3f}"
  names = ["without_gate", "with_gate", "soft_gate", "calibrated_gate", "decision"]
  heads = ["no gate", "ASL gate", "soft gate", "calibr.", "decision"]
  cols = [report[n] for n in names]
  g, d = report["gate"], report["decisions"]["decision"]
  w = max([24] + [len(cat) + 3 for cat in g["counts"]])  # The label column, for the longest.
  row = lambda name, key: f"{name:{w}s}" + "".join(f"{f(x[key]):>10s}" for x in cols)
  decision = report["decision_settings"]["decision"]
  lines = [
      "",
      f"{'':{w}s}" + "".join(f"{h:>10s}" for h in heads),
      row("μAP", "micro_ap"), row("Recall@P90", "recall_at_p90"),
      row("Recall@1", "recall_at_rank_1"),
      f"{'predicted pairs:':{w}s}{'before':>10s}{'ASL gate':>10s}{'decision':>10s}",
  ]
  for cat, c in g["counts"].items():
    lines.append(f"  {cat:{w - 2}s}{c['before']:>10d}{c['after']:>10d}"
                 f"{d['counts'][cat]['after']:>10d}")
  for label, rep in (("the paper's ASL gate", g), (f"the decision ({decision})", d)):
    rf = rep["removed_fraction"]
    kinds = ", ".join(f"{k.split(':')[1]} {_pct(v)}" for k, v in rf.items()
                      if k.startswith("hard_negative:") and v is not None)
    lines.append(f"{label} removes {_pct(rf['true_copy'])} of the true-copy pairs; of the "
                 f"hard-negative pairs: {kinds or 'n/a'}")
    if rf.get("negative") is not None:
      lines.append(f"  and {_pct(rf['negative'])} of the pairs of non-copy queries (real "
                   "data without kinds: hard negatives and distractors together)")
  return "\n".join(lines)


def _pct(x):
  return "n/a" if x is None else f"{100 * x:.1f}%"
