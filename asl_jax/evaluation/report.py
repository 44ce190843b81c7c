"""Reports people can look at: a per-kind breakdown, a precision-recall plot
with and without the gate, and a gallery of the worst mistakes."""

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
