"""Copy-detection evaluation of a trained model on the queries and references.

Embeds both splits (L2-normalised descriptor and the gate feature's norm),
retrieves the k nearest references of each query with faiss, applies ASL's
gate, computes the ISC metrics with and without it, counts what the predicted
pairs are (true copies, hard negatives by kind, distractors), and writes
`metrics.json`, `predictions.csv` (after the gate) and
`predictions_without_gate.csv` into the workdir.
"""

import collections
import json
import os
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np

from asl_jax import copy_edits, data, sharding
from asl_jax.evaluation import io as eval_io
from asl_jax.evaluation import metrics as metrics_lib
from asl_jax.evaluation import report as report_lib
from asl_jax.evaluation import search
from asl_jax.models import resnet


class _LoadForEval(grain.transforms.Map):
  """Record index (or -1 for padding) -> resized uint8 image."""

  def __init__(self, source, image_size):
    self.source, self.image_size = source, image_size

  def map(self, index):
    if index < 0:
      return np.zeros((self.image_size, self.image_size, 3), np.uint8)
    record = self.source[int(index)]
    image = data.decode_image(record["image"], record)
    return copy_edits.resize(image, (self.image_size, self.image_size))


def _plan(n: int, batch: int, process: int, processes: int) -> np.ndarray:
  """Record indices this process loads, batch by batch (-1 pads)."""
  per = batch // processes
  chunks = []
  for start in range(0, n, batch):
    idx = np.arange(start + process * per, start + (process + 1) * per)
    chunks.append(np.where(idx < min(start + batch, n), idx, -1))
  return np.concatenate(chunks) if chunks else np.zeros(0, np.int64)


def make_embed_fn(model, mesh):
  def embed(params, batch_stats, images):
    aux = model.apply({"params": params, "batch_stats": batch_stats},
                      resnet.images_to_input(images), train=False)
    d = aux["descriptor"]
    d = d / jnp.maximum(jnp.linalg.norm(d, axis=-1, keepdims=True), 1e-12)
    return d, jnp.linalg.norm(aux["gate_feature"], axis=-1)
  return jax.jit(embed, in_shardings=(None, None, sharding.data_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


def embed_split(embed_fn, state, source, image_size, batch_size, mesh,
                name="", log=print, num_threads=4):
  """(descriptors [n, d], gate norms [n]) for every record of a split."""
  n = len(source)
  processes = jax.process_count()
  devices = jax.device_count()
  # Whole device multiples, and no bigger than the split needs (a small split
  # would otherwise be padded up to a full evaluation batch).
  batch_size = max(min(batch_size, -(-n // devices) * devices) // devices, 1) * devices
  plan = _plan(n, batch_size, jax.process_index(), processes)
  ds = grain.MapDataset.source(plan).map(_LoadForEval(source, image_size))
  ds = ds.batch(batch_size // processes).to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4))
  desc, norms, t0 = [], [], time.time()
  for i, images in enumerate(ds):
    d, g = embed_fn(state.params["model"], state.batch_stats,
                    sharding.global_batch(images, mesh))
    desc.append(np.asarray(d))
    norms.append(np.asarray(g))
    done = min((i + 1) * batch_size, n)
    if (i + 1) % 20 == 0 or done == n:
      log(f"  embedded {name} {done}/{n} ({done / (time.time() - t0):.0f} images/s)")
  desc, norms = np.concatenate(desc)[:n], np.concatenate(norms)[:n]
  return desc, norms


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

  return {"counts": counts,
          "removed_fraction": {
              "true_copy": removed("true_copy"),
              "hard_negative": removed("hard_negative"),
              "hard_negative:reverse_crop": removed("hard_negative:reverse_crop"),
              "distractor": removed("distractor"),
              "negative": removed("negative"),
          }}


def evaluate_model(model, state, builder, config, workdir, log=print,
                   background_builder=None) -> dict:
  """Runs the whole evaluation and writes the reports; returns metrics.json.

  builder: the dataset of the queries and references; background_builder:
  the one whose `train` split is the score-normalisation background
  (default: `builder`).
  """
  mesh = sharding.make_mesh()
  embed_fn = make_embed_fn(model, mesh)
  size, bs = config.eval.get("image_size", 0) or config.data.image_size, config.eval.batch_size
  refs_src, queries_src = (data.source(builder, s) for s in ("references", "queries"))
  log(f"Evaluating on {len(queries_src)} queries x {len(refs_src)} references")
  ref_desc, ref_norm = embed_split(embed_fn, state, refs_src, size, bs, mesh,
                                   "references", log)
  q_desc, q_norm = embed_split(embed_fn, state, queries_src, size, bs, mesh,
                               "queries", log)
  meta = data.query_metadata(builder)
  query_ids = list(meta)
  reference_ids = [data.text(refs_src[i]["id"]) for i in range(len(refs_src))]
  gt = metrics_lib.ground_truth_pairs((q, m["reference_id"]) for q, m in meta.items())
  pairs = search.search(q_desc, ref_desc, k=config.eval.k)
  sn = config.eval.score_norm
  if sn.method != "none":
    background = data.source(background_builder or builder, "train")
    train_desc, _ = embed_split(embed_fn, state, background, size, bs, mesh,
                                "train (score normalisation)", log)
    bias = search.score_normalization_bias(q_desc, train_desc, sn.method, sn.n,
                                           sn.n_end, sn.factor)
    pairs.score = pairs.score - bias[pairs.query_index]
  keep = search.asl_gate(pairs, q_norm, ref_norm)
  soft = search.soft_gate_scores(pairs, q_norm, ref_norm, config.eval.soft_gate_temperature)
  variants = {"without_gate": (pairs, pairs.score), "with_gate": (pairs.select(keep),
                                                                  pairs.score[keep]),
              "soft_gate": (pairs, soft)}
  results, curves = {}, {}
  for name, (sel, scores) in variants.items():
    q = [query_ids[i] for i in sel.query_index]
    r = [reference_ids[i] for i in sel.reference_index]
    results[name] = metrics_lib.evaluate(q, r, scores, gt)
    curves[name.replace("_", " ")] = (q, r, scores, gt)
    if jax.process_index() == 0 and name != "soft_gate":
      fname = "predictions.csv" if name == "with_gate" else "predictions_without_gate.csv"
      eval_io.write_predictions(os.path.join(workdir, fname), q, r, scores)
  cats = categorize(pairs, query_ids, reference_ids, meta, gt)
  report = {
      "settings": {"dataset": builder.info.full_name, "k": int(config.eval.k),
                   "search": "faiss IndexFlatIP on L2-normalised descriptors",
                   "score_norm": json.loads(config.eval.score_norm.to_json()),
                   "gate": "drop when |g(query)| > |g(reference)|",
                   "soft_gate": "extension: score * sigmoid(log(|g_r|/|g_q|) / T), "
                                f"T={config.eval.soft_gate_temperature}",
                   "gate_feature": config.model.gate_feature,
                   "num_queries": len(query_ids),
                   "num_references": len(reference_ids),
                   "image_size": size, "steps": int(state.step)},
      **results,
      "gate": gate_report(cats, keep),
      "breakdown": report_lib.per_kind_breakdown(meta, query_ids, reference_ids, pairs,
                                                 keep, gt),
  }
  if jax.process_index() == 0:
    _write_outputs(workdir, report, curves, query_ids, reference_ids, q_desc, q_norm,
                   ref_desc, ref_norm, pairs, keep, gt, meta, queries_src, refs_src)
  log(format_table(report))
  return report


def _write_outputs(workdir, report, curves, query_ids, reference_ids, q_desc, q_norm,
                   ref_desc, ref_norm, pairs, keep, gt, meta, queries_src, refs_src):
  """metrics.json, descriptors (ISC working layout + gate norms), PR plot and
  the gallery of mistakes."""
  with open(os.path.join(workdir, "metrics.json"), "w") as f:
    json.dump(report, f, indent=2)
  eval_io.write_descriptors(os.path.join(workdir, "queries.h5"), query_ids, q_desc,
                            gate_norms=q_norm)
  eval_io.write_descriptors(os.path.join(workdir, "references.h5"), reference_ids,
                            ref_desc, gate_norms=ref_norm)
  report_lib.precision_recall_png(
      os.path.join(workdir, "precision_recall.png"),
      {k: v for k, v in curves.items() if k != "soft gate"})
  report_lib.gallery_png(os.path.join(workdir, "gallery.png"), _gallery_rows(
      pairs, keep, q_norm, ref_norm, gt, meta, query_ids, reference_ids, queries_src,
      refs_src))


def _thumb(source, index):
  record = source[int(index)]
  return data.decode_image(record["image"], record)


def _gallery_rows(pairs, keep, qn, rn, gt, meta, query_ids, reference_ids, queries_src,
                  refs_src, n=6):
  """The top false positives kept by the gate, then missed copies."""
  rows = []
  order = np.argsort(-pairs.score, kind="stable")
  fps = [j for j in order if keep[j] and
         (query_ids[pairs.query_index[j]], reference_ids[pairs.reference_index[j]]) not in gt]
  for j in fps[:n]:
    qi, ri = pairs.query_index[j], pairs.reference_index[j]
    m = meta.get(query_ids[qi], {})
    kind = m.get("hard_negative_kind") or m.get("kind", "")
    rows.append({"title": f"false positive: {query_ids[qi]} -> {reference_ids[ri]}",
                 "caption": f"score {pairs.score[j]:.3f}, query kind: {kind}\n"
                            f"norm ratio |g_q|/|g_r| = {qn[qi] / rn[ri]:.3f}",
                 "query": _thumb(queries_src, qi), "reference": _thumb(refs_src, ri)})
  predicted = [(query_ids[a], reference_ids[b])
               for a, b in zip(pairs.query_index, pairs.reference_index)]
  retrieved = set(predicted)
  kept = {predicted[j] for j in np.flatnonzero(keep)}
  ref_pos = {r: i for i, r in enumerate(reference_ids)}
  q_pos = {q: i for i, q in enumerate(query_ids)}
  for q, r in sorted(gt - kept)[:n]:
    qi, ri = q_pos[q], ref_pos[r]
    why = "removed by the gate" if (q, r) in retrieved else "not retrieved"
    rows.append({"title": f"missed copy: {q} -> {r} ({why})",
                 "caption": f"edits: {', '.join(meta.get(q, {}).get('edits', []))}\n"
                            f"norm ratio |g_q|/|g_r| = {qn[qi] / rn[ri]:.3f}",
                 "query": _thumb(queries_src, qi), "reference": _thumb(refs_src, ri)})
  return rows


def format_table(report: dict) -> str:
  """The short results table printed at the end of a run."""
  def f(x):
    return "  n/a " if x is None else f"{x:6.3f}"
  a, b, c = report["without_gate"], report["with_gate"], report["soft_gate"]
  g = report["gate"]
  row = lambda name, key: f"{name:24s}" + "".join(f"{f(x[key]):>10s}" for x in (a, b, c))
  lines = [
      "",
      f"{'':24s}{'no gate':>10s}{'ASL gate':>10s}{'soft gate':>10s}",
      row("μAP", "micro_ap"), row("Recall@P90", "recall_at_p90"),
      row("Recall@1", "recall_at_rank_1"),
      f"{'predicted pairs:':24s}{'before':>10s}{'after':>10s}",
  ]
  for cat, c in g["counts"].items():
    lines.append(f"  {cat:22s}{c['before']:>10d}{c['after']:>10d}")
  rf = g["removed_fraction"]
  lines.append(f"gate removes {_pct(rf['hard_negative:reverse_crop'])} of the "
               f"reverse-direction hard-negative pairs and {_pct(rf['true_copy'])} "
               "of the true-copy pairs")
  if rf.get("negative") is not None:
    lines.append(f"gate removes {_pct(rf['negative'])} of the pairs of non-copy "
                 "queries (real data: hard negatives and distractors together)")
  return "\n".join(lines)


def _pct(x):
  return "n/a" if x is None else f"{100 * x:.1f}%"
