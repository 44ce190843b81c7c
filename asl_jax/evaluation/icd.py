"""Copy-detection evaluation of a trained model on the queries and references.

Embeds both splits (L2-normalised descriptor and the gate feature's norm),
retrieves the k nearest references of each query with faiss, applies ASL's
gate, computes the ISC metrics with and without it, counts what the predicted
pairs are (true copies, hard negatives by kind, distractors), and writes
`metrics.json`, `predictions.csv` (after the gate) and
`predictions_without_gate.csv` into the workdir. The parts live beside it:
embedding.py (images to descriptors and gate norms), search.py (candidates,
score normalisation), decisions.py (the gate and the other decisions),
metrics.py and report.py (what is measured and shown).
"""

import dataclasses
import json
import os

import jax
import numpy as np

from asl_jax import data, input_pipeline, sharding
from asl_jax.evaluation import decisions, embedding, gate_apply
from asl_jax.evaluation import io as eval_io
from asl_jax.evaluation import metrics as metrics_lib
from asl_jax.evaluation import report as report_lib
from asl_jax.evaluation import search


def view_norms(embed_fn, state, src, config, size, mesh, num_images: int) -> np.ndarray:
  """Gate norms [n, 2] of n images of `src` (column 0) and of one crop of
  each made by the training chain (column 1: data.crop_area, data.train_edits),
  embedded at the evaluation size (and at eval.gate_sizes: the views are made
  at the largest size and resized to each)."""
  n = min(num_images, len(src))
  gate_sizes = getattr(embed_fn, "gate_sizes", ())
  spec = dataclasses.replace(input_pipeline.view_spec(config.data), num_views=2,
                             image_size=max((size,) + gate_sizes))
  backgrounds = input_pipeline.Backgrounds(src) if len(src) > 1 else None
  rng = np.random.default_rng(config.seed + 0xCA1)
  pick = np.sort(rng.choice(len(src), n, replace=False))
  views = []
  for i in pick:
    record = src[int(i)]
    v, _ = input_pipeline.make_views(data.decode_pil(record["image"], record), rng, spec,
                                     input_pipeline.background_fn(backgrounds, int(i)))
    views.append(v)
  images = np.concatenate(views)  # [2n, S, S, 3]: source, view, source, view...
  devices = jax.device_count()
  batch = max(config.eval.batch_size // devices, 1) * devices
  norms = []
  for start in range(0, len(images), batch):
    chunk = images[start:start + batch]
    pad = (-len(chunk)) % devices
    chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    inputs = embedding.gate_inputs(chunk, (size,) + gate_sizes)  # The embedding side first.
    _, g = embed_fn(state.params["model"], state.batch_stats,
                    *sharding.global_batch(tuple(inputs), mesh))
    norms.append(np.asarray(g)[:len(chunk) - pad])
  return np.concatenate(norms).reshape(n, 2)


def calibrate(embed_fn, state, builder, config, size, mesh, log=print) -> dict | None:
  """The calibrated gate threshold (decisions.calibrate_threshold) from
  `eval.calibration.num_images` training images and a crop of each
  (`view_norms`); None when the set has no training split."""
  if "train" not in builder.info.splits:
    return None
  cal = config.eval.calibration
  norms = view_norms(embed_fn, state, data.source(builder, "train"), config, size, mesh,
                     cal.num_images)
  n = len(norms)
  result = decisions.calibrate_threshold(norms[:, 1] / np.maximum(norms[:, 0], 1e-12),
                                         cal.max_copy_drop)
  log(f"  calibrated gate threshold {result['threshold']:.3f} on {n} training images: "
      f"drops {100 * result['training_copies_dropped']:.1f}% of their copies and "
      f"{100 * result['training_reverse_dropped']:.1f}% of the reverse pairs (the paper's "
      f"threshold 1: {100 * result['paper_threshold_training_copies_dropped']:.1f}% / "
      f"{100 * result['paper_threshold_training_reverse_dropped']:.1f}%)")
  return result


def norm_diagnostics(embed_fn, state, refs_src, config, size, mesh, meta, q_norm, ref_norm,
                     calibration, log=print) -> dict:
  """Does the gate norm carry information amount, and where? The norm
  ratio's separation (decisions.separation, an AUC) of copy-direction and
  reverse-direction pairs on: training images and crops of them (what the
  norm-ratio loss saw), references and crops of them (the same kind of views
  of images never trained on; a diagnostic, nothing is fitted on it), and
  the set's own copies against its reverse-crop hard negatives."""
  out = {"training_views": calibration and calibration["separation_auc"]}
  n = config.eval.calibration.num_images
  if n > 0:
    norms = view_norms(embed_fn, state, refs_src, config, size, mesh, n)
    ratio = norms[:, 1] / np.maximum(norms[:, 0], 1e-12)
    out["unseen_views"] = decisions.separation(ratio, 1 / ratio)
  ref_pos = {data.text(refs_src[i]["id"]): i for i in range(len(refs_src))}
  ratio = lambda qi, r: float(q_norm[qi] / max(ref_norm[ref_pos[r]], 1e-12))
  copies = [ratio(i, m["reference_id"]) for i, m in enumerate(meta.values())
            if m["kind"] == "copy" and m["reference_id"] in ref_pos]
  reverse = [ratio(i, m["resembles_id"]) for i, m in enumerate(meta.values())
             if m["hard_negative_kind"] == "reverse_crop" and m["resembles_id"] in ref_pos]
  out["set_pairs"] = decisions.separation(copies, reverse)
  out["set_pairs_counts"] = {"copies": len(copies), "reverse_crops": len(reverse)}
  f = lambda x: "n/a" if x is None else f"{x:.3f}"
  log(f"  norm-ratio separation (AUC, 0.5 = none): training views {f(out['training_views'])}, "
      f"unseen views {f(out.get('unseen_views'))}, this set's copies vs reverse crops "
      f"{f(out['set_pairs'])}")
  return out


def evaluate_model(model, state, builder, config, workdir, log=print,
                   background_builder=None) -> dict:
  """Runs the whole evaluation and writes the reports; returns metrics.json.

  builder: the dataset of the queries and references; background_builder:
  the one whose `train` split is the score-normalisation background
  (default: `builder`).
  """
  mesh = sharding.make_mesh()
  embed_fn = embedding.make_embed_fn(model, mesh, config.eval)
  size, bs = embedding.embedding_size(config), config.eval.batch_size
  workers = embedding.eval_workers(config.eval.num_workers)
  io_kw = {"num_workers": workers, "num_threads": 2 if workers else 4}
  refs_src, queries_src = (data.source(builder, s) for s in ("references", "queries"))
  log(f"Evaluating on {len(queries_src)} queries x {len(refs_src)} references")
  resize = config.eval.resize
  ref_desc, ref_norm = embedding.embed_split(embed_fn, state, refs_src, size, bs, mesh,
                                             "references", log, resize=resize, **io_kw)
  q_desc, q_norm = embedding.embed_split(embed_fn, state, queries_src, size, bs, mesh,
                                         "queries", log, resize=resize, **io_kw)
  meta = data.query_metadata(builder)
  query_ids = list(meta)
  reference_ids = [data.text(refs_src[i]["id"]) for i in range(len(refs_src))]
  gt = metrics_lib.ground_truth_pairs((q, m["reference_id"]) for q, m in meta.items())
  pairs = search.search(q_desc, ref_desc, k=config.eval.k)
  sn = config.eval.score_norm
  if sn.method != "none":
    background = data.source(background_builder or builder, "train")
    train_desc, _ = embedding.embed_split(embed_fn, state, background, size, bs, mesh,
                                          "train (score normalisation)", log, resize=resize,
                                          **io_kw)
    pairs.score = search.normalized_scores(pairs, q_desc, train_desc, sn.method, sn.n,
                                           sn.n_end, sn.factor)
  keep = decisions.asl_gate(pairs, q_norm, ref_norm)
  soft = decisions.soft_gate_scores(pairs, q_norm, ref_norm, config.eval.soft_gate_temperature)
  ev = config.eval
  decision = ev.decision
  decisions.check_decision(decision)
  calibration = None
  if ev.calibration.num_images > 0:
    calibration = calibrate(embed_fn, state, background_builder or builder, config, size,
                            mesh, log)
  threshold = calibration["threshold"] if calibration else 1.0
  diagnostics = norm_diagnostics(embed_fn, state, refs_src, config, size, mesh, meta,
                                 q_norm, ref_norm, calibration, log)
  calibrated_keep = decisions.asl_gate(pairs, q_norm, ref_norm, threshold)
  verdicts, verify_timing, verify_cfg = None, None, decisions.verify_config(ev.verify)
  if decision.startswith("verify") or ev.rescore:
    verdicts, verify_timing = decisions.verify_candidates(
        pairs.query_index, pairs.reference_index, lambda i: _image(queries_src, i),
        lambda i: _image(refs_src, i),
        verify_cfg, ev.verify.workers, log)
  final_keep = decisions.combine(decision, keep, calibrated_keep, verdicts or [])
  final_scores = pairs.score
  if ev.rescore and verdicts is not None:
    final_scores = decisions.rescored(pairs.score, verdicts, ev.rescore)
  variants = {"without_gate": (pairs, pairs.score, None),
              "with_gate": (pairs.select(keep), pairs.score[keep], keep),
              "soft_gate": (pairs, soft, None),
              "calibrated_gate": (pairs.select(calibrated_keep), pairs.score[calibrated_keep],
                                  calibrated_keep)}
  if verdicts is not None:
    for name in ("verify", "verify_else_norm", "verify_else_calibrated"):
      k = decisions.combine(name, keep, calibrated_keep, verdicts)
      variants[name] = (pairs.select(k), pairs.score[k], k)
  variants["decision"] = (pairs.select(final_keep), final_scores[final_keep], final_keep)
  results, curves = {}, {}
  for name, (sel, scores, _) in variants.items():
    q = [query_ids[i] for i in sel.query_index]
    r = [reference_ids[i] for i in sel.reference_index]
    results[name] = metrics_lib.evaluate(q, r, scores, gt)
    if name in ("without_gate", "with_gate", "decision"):
      curves[{"without_gate": "no gate", "with_gate": "ASL gate (paper)",
              "decision": f"decision: {decision}"}[name]] = (q, r, scores, gt)
    if jax.process_index() == 0 and name in ("without_gate", "decision"):
      fname = "predictions.csv" if name == "decision" else "predictions_without_gate.csv"
      eval_io.write_predictions(os.path.join(workdir, fname), q, r, scores)
  cats = report_lib.categorize(pairs, query_ids, reference_ids, meta, gt)
  gate_record = {"decision": decision, "rescore": float(ev.rescore),
                 "calibration": calibration, "verify": dataclasses.asdict(verify_cfg),
                 "gate_feature": config.model.gate_feature,
                 "images": gate_apply.images_record(builder.info.full_name, {
                     "queries": (query_ids, lambda i: _image(queries_src, query_ids.index(i))),
                     "references": (reference_ids,
                                    lambda i: _image(refs_src, reference_ids.index(i)))})}
  report = {
      "settings": {"dataset": builder.info.full_name, "k": int(config.eval.k),
                   "search": "faiss IndexFlatIP on L2-normalised descriptors",
                   "score_norm": json.loads(config.eval.score_norm.to_json()),
                   "gate": "drop when |g(query)| > |g(reference)|",
                   "soft_gate": "extension: score * (score >= 0) or / (below 0) "
                                "sigmoid(log(|g_r|/|g_q|) / T), "
                                f"T={config.eval.soft_gate_temperature}",
                   "gate_feature": config.model.gate_feature,
                   "num_queries": len(query_ids),
                   "num_references": len(reference_ids),
                   "image_size": size, "resize": resize,
                   "gate_sizes": list(embedding.gate_sizes(config.eval)),
                   "gate_flip_average": bool(config.eval.gate_flip_average),
                   "steps": int(state.step)},
      **results,
      "gate": report_lib.gate_report(cats, keep),
      "decisions": {name: report_lib.gate_report(cats, k) for name, (_, _, k) in variants.items()
                    if k is not None},
      "decision_settings": gate_record,
      "norm_diagnostics": diagnostics,
      "verification_timing": verify_timing,
      "breakdown": report_lib.per_kind_breakdown(meta, query_ids, reference_ids, pairs,
                                                 keep, gt),
  }
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "gate.json"), "w") as f:
      json.dump(gate_record, f, indent=2)
    if not os.path.exists(os.path.join(workdir, "config.json")):  # Training wrote it.
      with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    # The gallery shows the configured decision's mistakes (what predictions.csv holds).
    _write_outputs(workdir, report, curves, query_ids, reference_ids, q_desc, q_norm,
                   ref_desc, ref_norm, pairs, final_keep, gt, meta, queries_src, refs_src,
                   verdicts)
  log(report_lib.format_table(report))
  return report


def _write_outputs(workdir, report, curves, query_ids, reference_ids, q_desc, q_norm,
                   ref_desc, ref_norm, pairs, keep, gt, meta, queries_src, refs_src,
                   verdicts=None):
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
      refs_src, verdicts=verdicts))


def _image(source, index):
  """The decoded image of record `index` (the record read once)."""
  record = source[int(index)]
  return data.decode_image(record["image"], record)


def _gallery_rows(pairs, keep, qn, rn, gt, meta, query_ids, reference_ids, queries_src,
                  refs_src, n=6, verdicts=None):
  """The top false positives kept by the decision, then missed copies."""
  def verdict(j):
    if verdicts is None:
      return ""
    v = verdicts[j]
    return f", verification: {v.reason} ({v.inliers} inliers)"
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
                            f"norm ratio |g_q|/|g_r| = {qn[qi] / rn[ri]:.3f}{verdict(j)}",
                 "query": _image(queries_src, qi), "reference": _image(refs_src, ri)})
  predicted = [(query_ids[a], reference_ids[b])
               for a, b in zip(pairs.query_index, pairs.reference_index)]
  retrieved = set(predicted)
  kept = {predicted[j] for j in np.flatnonzero(keep)}
  ref_pos = {r: i for i, r in enumerate(reference_ids)}
  q_pos = {q: i for i, q in enumerate(query_ids)}
  index_of = {p: j for j, p in enumerate(predicted)}
  for q, r in sorted(gt - kept)[:n]:
    qi, ri = q_pos[q], ref_pos[r]
    why = (f"removed by the decision{verdict(index_of[(q, r)])}" if (q, r) in retrieved
           else "not retrieved")
    rows.append({"title": f"missed copy: {q} -> {r} ({why})",
                 "caption": f"edits: {', '.join(meta.get(q, {}).get('edits', []))}\n"
                            f"norm ratio |g_q|/|g_r| = {qn[qi] / rn[ri]:.3f}",
                 "query": _image(queries_src, qi), "reference": _image(refs_src, ri)})
  return rows
