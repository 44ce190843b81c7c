"""Which candidate pairs to keep: ASL's gate, its calibrated form, and
asymmetric verification; and `python -m asl_jax.gate` for anyone's
predictions.

The decisions (`eval.decision`):
  norm                  the paper's gate (method.md §2.3): drop a pair when
                        |g(query)| > |g(reference)|, a threshold of 1.
  calibrated_norm       extension: drop when |g(query)| / |g(reference)| > t,
                        t chosen on training images (`calibrate_threshold`).
  verify                extension: asymmetric pairwise verification
                        (verification.py); undecided pairs are kept.
  verify_else_norm      verification where it decides, the paper's gate
                        elsewhere; verify_else_calibrated likewise.
  none                  keep every pair.

Rescoring (`eval.rescore` = w > 0, an extension): a pair that verification
finds to be a copy gets w added to its score, as the ISC2021 matching-track
winners raised verified pairs above unverified ones.

  python -m asl_jax.gate --predictions P.csv --workdir RUN \
      --queries DIR --references DIR --output OUT.csv [--ground_truth G.csv]
  python -m asl_jax.gate ... --dataset folder/photo_dev   (a prepared dataset)

reads another system's candidates (`query_id,reference_id,score`), applies
the run's decision (its gate norms come from RUN/queries.h5 and
RUN/references.h5, written by the run's evaluation of the same images; its
calibrated threshold and settings from RUN/gate.json) and writes the kept
pairs in the same format; with a ground truth it prints the ISC metrics
before and after.
"""

import dataclasses
import json
import os
import sys

import numpy as np

from asl_jax import paths, verification, verification_stream
from asl_jax.errors import UserError

DECISIONS = ("none", "norm", "calibrated_norm", "verify", "verify_else_norm",
             "verify_else_calibrated")


def check_decision(decision: str):
  if decision not in DECISIONS:
    raise UserError(f"eval.decision={decision!r}: use one of {', '.join(DECISIONS)} "
                    "(asl_jax/gate.py says what each does).")


def norm_keep(query_index, reference_index, query_norm, reference_norm,
              threshold: float = 1.0) -> np.ndarray:
  """Keep unless |g(q)| / |g(r)| > threshold (1: the paper's gate)."""
  return query_norm[query_index] <= threshold * reference_norm[reference_index]


def calibrate_threshold(copy_ratios: np.ndarray, max_copy_drop: float) -> dict:
  """The threshold t on |g(q)| / |g(r)| that drops at most `max_copy_drop`
  of the copy-direction ratios (a view's norm over its source's, measured on
  training images): their (1 - max_copy_drop) quantile. Returns t and the
  rule, for the run's record."""
  copy_ratios = np.asarray(copy_ratios, np.float64)
  if not len(copy_ratios) or not 0 <= max_copy_drop < 1:
    raise UserError("Calibrating the gate needs copy-direction norm ratios of training "
                    f"views and 0 <= eval.calibration.max_copy_drop < 1 (got "
                    f"{len(copy_ratios)} ratios, {max_copy_drop}).")
  t = float(np.quantile(copy_ratios, 1 - max_copy_drop))
  reverse = 1 / copy_ratios
  return {"threshold": t,
          "rule": f"drop when |g(query)|/|g(reference)| > t, t = the {1 - max_copy_drop:.3g} "
                  "quantile of |g(view)|/|g(source)| over training views (each a crop of "
                  "its source, edited by the training chain)",
          "num_views": int(len(copy_ratios)),
          "separation_auc": separation(copy_ratios, reverse),
          "training_copies_dropped": float(np.mean(copy_ratios > t)),
          "training_reverse_dropped": float(np.mean(reverse > t)),
          "paper_threshold_training_reverse_dropped": float(np.mean(reverse > 1)),
          "paper_threshold_training_copies_dropped": float(np.mean(copy_ratios > 1))}


def separation(copy_ratios, reverse_ratios) -> float | None:
  """AUC of the norm ratio: the chance that a reverse-direction pair's
  |g(q)|/|g(r)| exceeds a copy pair's (0.5: the norms say nothing; 1: a
  threshold separates them)."""
  c, v = np.asarray(copy_ratios, np.float64), np.asarray(reverse_ratios, np.float64)
  if not len(c) or not len(v):
    return None
  return float(np.mean(v[:, None] > c[None, :]) + 0.5 * np.mean(v[:, None] == c[None, :]))


def combine(decision: str, paper_keep, calibrated_keep, verdicts) -> np.ndarray:
  """The kept mask of `decision` from its parts (None where not computed)."""
  n = len(paper_keep)
  if decision == "none":
    return np.ones(n, bool)
  if decision == "norm":
    return np.asarray(paper_keep)
  if decision == "calibrated_norm":
    return np.asarray(calibrated_keep)
  decided = np.array([v.decided for v in verdicts], bool)
  verified = np.array([v.keep for v in verdicts], bool)
  if decision == "verify":
    return verified
  fallback = paper_keep if decision == "verify_else_norm" else calibrated_keep
  return np.where(decided, verified, np.asarray(fallback))


def rescored(scores, verdicts, weight: float) -> np.ndarray:
  """Extension: + weight for pairs verification judged to be copies."""
  copy = np.array([v.decided and v.keep for v in verdicts], bool)
  return np.asarray(scores, np.float32) + np.float32(weight) * copy


def verify_candidates(query_index, reference_index, load_query, load_reference,
                      cfg: verification.VerifyConfig, workers: int = 0, log=print, **stream):
  """Verdicts for candidate pairs, in bounded memory (verification_stream.py:
  each query's features extracted once, the references' in an LRU cache;
  `stream`: its batch and cache sizes). load_*: index -> uint8 RGB image.
  Returns the verdicts and what it took (pairs/s, extractions, seconds)."""
  verdicts, timing = verification_stream.verify_stream(
      query_index, reference_index, load_query, load_reference, cfg, workers, log=log, **stream)
  timing["images"] = timing["query_extractions"] + timing["reference_extractions"]
  log(f"  verified {timing['pairs']} pairs in {timing['seconds']:.1f} s "
      f"({timing['pairs_per_second']:.1f} pairs/s): features of {timing['query_extractions']} "
      f"queries and {timing['reference_extractions']} reference extractions "
      f"({timing['distinct_references']} distinct references, cache of "
      f"{timing['reference_cache']})")
  return verdicts, timing


def verify_config(cfg) -> verification.VerifyConfig:
  """`eval.verify` (a ConfigDict or dict) as a VerifyConfig; unknown fields
  are an error naming them."""
  fields = {f.name for f in dataclasses.fields(verification.VerifyConfig)}
  given = dict(cfg)
  given.pop("workers", None)
  unknown = sorted(set(given) - fields)
  if unknown:
    raise UserError(f"eval.verify has unknown fields {unknown}; known: {sorted(fields)}.")
  return verification.VerifyConfig(**given)


# ---------------------------------------------------------------- the CLI --
def _read_norms(path: str) -> dict[str, float]:
  from asl_jax.evaluation import io as eval_io
  if not os.path.exists(path):
    raise UserError(f"{path} does not exist: the run's evaluation writes it (with each "
                    "image's gate norm). Evaluate the run on these images first.")
  norms = eval_io.read_gate_norms(path)
  if norms is None:
    raise UserError(f"{path} holds no gate norms (gate_norms); it was not written by an "
                    "asl_jax evaluation.")
  return norms


def _image_loader(where):
  """(id -> uint8 RGB image, the ids it has) for a folder of images, or for
  a split of a prepared dataset given as (builder, split)."""
  from PIL import Image
  if isinstance(where, tuple):
    from asl_jax import data
    builder, split = where
    src = data.source(builder, split)
    index = {data.text(src[i]["id"]): i for i in range(len(src))}

    def load_record(image_id: str) -> np.ndarray:
      record = src[index[image_id]]  # Read once.
      return data.decode_image(record["image"], record)
    return load_record, index
  from asl_jax.evaluation.io import image_files
  files = image_files(where)

  def load(image_id: str) -> np.ndarray:
    try:
      with Image.open(files[image_id]) as im:
        return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:
      raise UserError(f"{files[image_id]} could not be read as an image ({e}); replace the "
                      "file or leave its pairs out of the predictions.") from None
  return load, files


def image_signature(image) -> list[int]:
  """A 12 x 12 grey thumbnail: the same image re-encoded or resized keeps it,
  another image does not."""
  from PIL import Image
  im = Image.fromarray(np.asarray(image, np.uint8)).convert("L").resize((12, 12), Image.BOX)
  return np.asarray(im).ravel().tolist()


def images_record(dataset: str, splits: dict, sample: int = 8) -> dict:
  """What gate.json records of the images a run evaluated: per split (name ->
  (ids, id -> image)), the count, a SHA-1 of the sorted ids and the
  signatures of `sample` images spread over them."""
  import hashlib
  out = {"dataset": dataset}
  for split, (ids, load) in splits.items():
    ordered = sorted(ids)
    picks = ordered[::max(1, len(ordered) // sample)][:sample]
    out[split] = {"count": len(ordered),
                  "ids_sha1": hashlib.sha1("\n".join(ordered).encode()).hexdigest(),
                  "signatures": {i: image_signature(load(i)) for i in picks}}
  return out


def check_images(record: dict | None, split: str, load, available, where: str, log=print):
  """Refuses images that are not those the run evaluated under the same ids
  (their gate norms would be another image's)."""
  if not record or split not in record:
    log(f"warning: the run's gate.json records no {split} images (a run from before it "
        "did); cannot check that these are the images it evaluated.")
    return
  sigs = {i: s for i, s in record[split]["signatures"].items() if i in available}
  differ = [i for i, s in sigs.items()
            if np.abs(np.subtract(image_signature(load(i)), s)).mean() > 12]
  if differ:
    raise UserError(f"The {split} in {where} are not the images the run evaluated under the "
                    f"same ids ({len(differ)} of {len(sigs)} checked differ, e.g. "
                    f"{', '.join(differ[:3])}; the run evaluated {record.get('dataset')}): "
                    "its gate norms belong to other images. Evaluate the run on this set "
                    "first (--config.eval.data_name), or use --decision verify.")


def apply(predictions, workdir: str, queries, references,
          decision: str | None = None, rescore: float | None = None,
          workers: int = 0, log=print) -> dict:
  """Applies a run's decision to (query ids, reference ids, scores); returns
  the kept pairs, their scores and what was done. queries, references:
  folders of images, or (prepared builder, split)."""
  q_ids, r_ids, scores = predictions
  gate_path = os.path.join(workdir, "gate.json")
  if not os.path.exists(gate_path):
    raise UserError(f"{gate_path} does not exist: --workdir must be an asl_jax run whose "
                    "evaluation has finished (it writes gate.json).")
  with open(gate_path) as f:
    run = json.load(f)
  decision, weight = _decision_and_weight(run, decision, rescore, gate_path, log)
  calibration = run.get("calibration") or {}
  if "calibrated" in decision and "threshold" not in calibration:
    raise UserError(f"--decision {decision} needs the run's calibrated threshold, but "
                    f"{gate_path} records no calibration (the run had "
                    "eval.calibration.num_images=0). Use --decision norm (the paper's gate) "
                    "or verify_else_norm, or evaluate the run with a calibration.")
  n = len(q_ids)
  paper = calibrated = np.ones(n, bool)
  if decision in ("norm", "calibrated_norm", "verify_else_norm", "verify_else_calibrated"):
    qn = _read_norms(os.path.join(workdir, "queries.h5"))
    rn = _read_norms(os.path.join(workdir, "references.h5"))
    missing = sorted({q for q in q_ids if q not in qn}) + sorted(
        {r for r in r_ids if r not in rn})
    if missing:
      raise UserError(
          f"{len(missing)} ids of the predictions have no gate norm in {workdir}'s "
          f"queries.h5/references.h5 (e.g. {', '.join(missing[:5])}): the run was "
          "evaluated on other images. Evaluate it on this set first "
          "(--config.eval.data_name), or use --decision verify, which needs no norms.")
    for split, where in (("queries", queries), ("references", references)):
      if where is None:  # Norms alone (a library caller without the images): nothing to compare.
        continue
      load, available = _image_loader(where)
      check_images(run.get("images"), split, load, available,
                   where if isinstance(where, str) else where[0].info.full_name, log)
    ratio = np.array([qn[q] / max(rn[r], 1e-12) for q, r in zip(q_ids, r_ids, strict=True)])
    paper = ratio <= 1.0
    calibrated = ratio <= calibration.get("threshold", 1.0)
  verdicts = None
  if decision.startswith("verify") or weight:
    cfg = verify_config(run.get("verify", {}))
    load_q, qfiles = _image_loader(queries)
    load_r, rfiles = _image_loader(references)
    missing = sorted({q for q in q_ids if q not in qfiles}) + sorted(
        {r for r in r_ids if r not in rfiles})
    if missing:
      where = (f"{queries} or {references}" if isinstance(queries, str)
               else f"{queries[0].info.full_name}'s queries or references")
      raise UserError(f"{len(missing)} ids of the predictions have no image in {where} "
                      f"(e.g. {', '.join(missing[:5])}).")
    uq = sorted(set(q_ids))
    ur = sorted(set(r_ids))
    qi = {q: i for i, q in enumerate(uq)}
    ri = {r: i for i, r in enumerate(ur)}
    verdicts, timing = verify_candidates(
        [qi[q] for q in q_ids], [ri[r] for r in r_ids], lambda i: load_q(uq[i]),
        lambda i: load_r(ur[i]), cfg, workers, log)
  keep = combine(decision, paper, calibrated,
                 verdicts if verdicts is not None else [])
  out_scores = np.asarray(scores, np.float32)
  if weight and verdicts is not None:
    out_scores = rescored(out_scores, verdicts, weight)
  idx = np.flatnonzero(keep)
  return {"query_ids": [q_ids[i] for i in idx], "reference_ids": [r_ids[i] for i in idx],
          "scores": out_scores[idx], "decision": decision, "rescore": weight,
          "kept": int(len(idx)), "dropped": int(n - len(idx)),
          "verification": timing if verdicts is not None else None}


def _decision_and_weight(run: dict, decision, rescore, gate_path: str, log):
  """The decision and the rescoring weight, each said where it comes from. An
  explicit --decision that verifies nothing (norm, calibrated_norm, none)
  means that decision alone: the run's rescoring is not carried over."""
  if decision is None:
    decision = run.get("decision")
    if decision is None:
      raise UserError(f"{gate_path} records no decision; give --decision.")
    source = f"the run's ({gate_path})"
  else:
    source = "--decision"
  check_decision(decision)
  if rescore is not None:
    weight, wsource = float(rescore), "--rescore"
  elif source == "--decision" and not decision.startswith("verify"):
    weight, wsource = 0.0, f"none with --decision {decision} (--rescore W to add it)"
  else:
    weight = float(run.get("rescore") or 0.0)
    wsource = f"the run's ({gate_path}; --rescore 0 to leave scores as they are)"
  log(f"decision: {decision}, from {source}; rescoring of verified copies: +{weight:g}, "
      f"from {wsource}")
  return decision, weight


def _prepared(name: str, data_dir: str):
  """The builder of a dataset already prepared (nothing is prepared here)."""
  import ml_collections

  from asl_jax import data
  cfg = ml_collections.ConfigDict({"name": name, "data_dir": data_dir, "manual_dir": "",
                                   "prepare_workers": 1, "skip_bad_images": False,
                                   "synthetic": {}})
  if name == "ndec/synthetic":
    raise UserError("--dataset ndec/synthetic: give its images as folders, or a set "
                    "prepared from a folder (folder/<name>) or a download (ndec/full).")
  b = data.builder(cfg, name)
  if not b.is_prepared():
    raise UserError(f"--dataset {name} is not prepared under {data.data_dir(cfg)} (looked "
                    f"for {b.data_dir}); prepare it first (README, 'Your own images').")
  return b


def main(argv=None) -> int:
  import argparse
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--predictions", required=True, help="CSV query_id,reference_id,score.")
  p.add_argument("--workdir", required=True, help="The asl_jax run whose gate to apply.")
  p.add_argument("--queries", help="Folder of the query images.")
  p.add_argument("--references", help="Folder of the reference images.")
  p.add_argument("--dataset", help="Or a prepared dataset holding both (e.g. folder/photo_dev, "
                 "ndec/full), as config.data.name names it.")
  p.add_argument("--data_dir", default="", help="Where --dataset is prepared (default: "
                 "$TFDS_DATA_DIR or ~/tensorflow_datasets).")
  p.add_argument("--output", required=True, help="Where the kept predictions go (CSV).")
  p.add_argument("--ground_truth", help="CSV query_id,reference_id: print the metrics.")
  p.add_argument("--decision", choices=DECISIONS, help="Default: the run's (gate.json).")
  p.add_argument("--rescore", type=float, help="Default: the run's (gate.json).")
  p.add_argument("--workers", type=int, default=0, help="Verification threads (0: cores).")
  args = p.parse_args(argv)
  from asl_jax import evaluate
  from asl_jax.evaluation import io as eval_io
  try:
    queries, references = args.queries, args.references
    if args.dataset:
      if queries or references:
        raise UserError("Give either --dataset or --queries and --references, not both.")
      builder = _prepared(args.dataset, args.data_dir)
      queries, references = (builder, "queries"), (builder, "references")
    elif not (queries and references):
      raise UserError("Give --queries DIR and --references DIR (folders of images), or "
                      "--dataset NAME (a prepared dataset).")
    else:
      for path in (queries, references):
        if not os.path.isdir(path):
          raise UserError(f"{path} is not a folder of images.")
    paths.output_file(args.output, "--output", "the kept predictions")
    pred = eval_io.read_predictions(args.predictions)
    gt_rows = eval_io.read_ground_truth(args.ground_truth) if args.ground_truth else None
    result = apply((pred.query_ids, pred.reference_ids, pred.scores), args.workdir,
                   queries, references, args.decision, args.rescore, args.workers,
                   log=lambda m: print(m, file=sys.stderr))
    eval_io.write_predictions(args.output, result["query_ids"], result["reference_ids"],
                              result["scores"])
    report = {k: v for k, v in result.items()
              if k not in ("query_ids", "reference_ids", "scores")}
    if gt_rows is not None:
      report["before"] = evaluate.evaluate_predictions(
          pred.query_ids, pred.reference_ids, pred.scores, gt_rows)
      report["after"] = evaluate.evaluate_predictions(
          result["query_ids"], result["reference_ids"], result["scores"], gt_rows)
    print(json.dumps(report, indent=2))
  except UserError as e:
    print(f"asl_jax.gate: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
