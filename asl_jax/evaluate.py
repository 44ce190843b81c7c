"""Evaluate anyone's copy-detection output with the ISC2021 metrics.

Predictions (matching track):
  python -m asl_jax.evaluate --predictions P.csv --ground_truth G.csv

Descriptors (descriptor track), a track-2 submission file or working files:
  python -m asl_jax.evaluate --descriptors D.h5 --ground_truth G.csv \
      --metric l2 --global_budget auto
  python -m asl_jax.evaluate --query_descriptors Q.h5 \
      --reference_descriptors R0.h5,R1.h5 --ground_truth G.csv --k 10

Prints one JSON object (micro_ap, recall_at_p90, recall_at_rank_1/10, the
counts used and the settings). A malformed input exits with status 2 and a
message naming the file and line.
"""

import json
import sys

from absl import app, flags

from asl_jax import paths
from asl_jax.errors import UserError

_PRED = flags.DEFINE_string("predictions", None, "CSV query_id,reference_id,score.")
_GT = flags.DEFINE_string("ground_truth", None, "CSV query_id,reference_id.")
_DESC = flags.DEFINE_string("descriptors", None, "Track-2 submission HDF5.")
_QDESC = flags.DEFINE_string("query_descriptors", None, "Working-layout HDF5 of queries.")
_RDESC = flags.DEFINE_list("reference_descriptors", None, "Working-layout HDF5 shards.")
_TDESC = flags.DEFINE_list("train_descriptors", None,
                           "Training descriptors (PCA-whitening, score normalisation).")
_K = flags.DEFINE_integer("k", 10, "Nearest references per query.")
_BUDGET = flags.DEFINE_string("global_budget", None,
                              "Keep the N best pairs overall; 'auto' = 10 x queries in GT.")
_METRIC = flags.DEFINE_enum("metric", "ip", ["ip", "l2"], "Similarity.")
_BACKEND = flags.DEFINE_enum("backend", "auto", ["auto", "faiss", "jax"], "Search backend "
                             "(auto: faiss on a CPU host that has it, else jax).")
_INDEX = flags.DEFINE_string("index", "Flat", "faiss index-factory string.")
_PCA = flags.DEFINE_integer("pca_dim", 0, "PCA-whiten to this many dimensions.")
_SN = flags.DEFINE_enum("score_norm", "none", ["none", "sscd", "isc"], "Score normalisation.")
_SN_N = flags.DEFINE_integer("score_norm_n", 1, "First background neighbour (1-based).")
_SN_END = flags.DEFINE_integer("score_norm_n_end", 3, "Last background neighbour (sscd).")
_SN_F = flags.DEFINE_float("score_norm_factor", 1.0, "β (sscd) or factor (isc).")
_DROP = flags.DEFINE_bool("drop_unlisted_queries", False,
                          "Drop predictions for queries not in the ground truth "
                          "(DrivenData's leaderboard behaviour).")
_MAX = flags.DEFINE_integer("max_results", 0, "Refuse more predictions than this (0 = no cap).")
_WRITE = flags.DEFINE_string("write_predictions", None, "Also write the predictions here.")


def check_flags(predictions, descriptor_flags: dict, k: int, budget: str | None):
  """The flags' combination and values, before any file is read."""
  given = [name for name, value in descriptor_flags.items() if value]
  if predictions and given:
    raise UserError(f"--predictions was given together with {', '.join(given)}: evaluate "
                    "either a predictions CSV or descriptors, not both (the descriptors "
                    "would be ignored).")
  if k < 1:
    raise UserError(f"--k={k}: give the number of nearest references per query, at least 1 "
                    "(10 in the ISC protocol).")
  if budget not in (None, "", "auto"):
    try:
      ok = int(budget) > 0
    except ValueError:
      ok = False
    if not ok:
      raise UserError(f"--global_budget={budget!r}: give a positive number of pairs, or auto "
                      "(10 per query, the ISC track-2 rule).")


def check_ids(q, gt_rows, r=None, log=None):
  """Predictions whose ids the ground truth does not know: none known is an
  error (ids from another set); some unknown is a warning with counts."""
  listed = {row[0] for row in gt_rows}
  known_refs = {row[1] for row in gt_rows if row[1]}
  unknown = sum(1 for x in q if x not in listed)
  if q and unknown == len(q):
    raise UserError(f"None of the {len(q)} predictions' query ids appear in the ground "
                    f"truth (e.g. {q[0]!r} vs {gt_rows[0][0]!r}): the files come from different "
                    "sets, or their ids are written differently.")
  if unknown and log:
    log(f"warning: {unknown} of {len(q)} predictions name queries the ground truth does not "
        "list; they count as false positives (--drop_unlisted_queries drops them).")
  if r is not None and known_refs and q and not known_refs & set(r):
    log and log(f"warning: none of the {len(r)} predictions' reference ids appear among the "
                f"ground truth's {len(known_refs)} (e.g. {r[0]!r} vs {next(iter(known_refs))!r})"
                ": are the references from another set?")


def _search(qv, rv, budget):
  from asl_jax.evaluation import search
  if qv.shape[1] != rv.shape[1]:
    raise UserError(f"The query descriptors have {qv.shape[1]} dimensions, the references "
                    f"{rv.shape[1]}; they must come from the same model.")
  try:
    return search.search(qv, rv, k=_K.value, metric=_METRIC.value, backend=_BACKEND.value,
                         index=_INDEX.value, global_budget=budget)
  except RuntimeError as e:  # faiss: an index string it cannot parse or train.
    if _BACKEND.value == "jax":  # Only faiss raises RuntimeError for an index string.
      raise
    first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    raise UserError(f"--index={_INDEX.value!r}: faiss could not build or train this index "
                    f"({first}). Give an index-factory string such as Flat, "
                    "IVF1024,Flat or IVF1024,PQ32 (with enough references to train it).") from None


def _descriptor_predictions(gt_rows):
  import numpy as np
  from asl_jax.evaluation import io, search
  if _DESC.value:
    qids, qv, rids, rv = io.read_submission(_DESC.value)
  elif _QDESC.value and _RDESC.value:
    qids, qv = io.read_descriptors(_QDESC.value)
    rids, rv = io.read_descriptors(_RDESC.value)
  else:
    raise UserError("Give --descriptors FILE.h5 (track-2 layout) or both "
                    "--query_descriptors and --reference_descriptors.")
  listed = {row[0] for row in gt_rows}
  keep = np.array([q in listed for q in qids])
  if not keep.any():
    raise UserError("None of the query descriptors' ids appear in the ground truth.")
  qids, qv = [q for q, k in zip(qids, keep) if k], qv[keep]
  train = io.read_descriptors(_TDESC.value)[1] if _TDESC.value else None
  settings = {"metric": _METRIC.value, "backend": _BACKEND.value, "index": _INDEX.value}
  if _PCA.value:
    if train is None:
      raise UserError("--pca_dim needs --train_descriptors (never fit on references).")
    whiten = search.pca_whitening(train, _PCA.value)
    qv, rv, train = whiten(qv), whiten(rv), whiten(train)
    settings["pca_dim"] = _PCA.value
  budget = None
  if _BUDGET.value:
    budget = 10 * len(qids) if _BUDGET.value == "auto" else int(_BUDGET.value)
    settings["global_budget"] = budget
  else:
    settings["k"] = _K.value
  cands = _search(qv, rv, budget)
  if _SN.value != "none":
    if train is None:
      raise UserError("--score_norm needs --train_descriptors as the background set.")
    cands.score = search.normalized_scores(cands, qv, train, _SN.value, _SN_N.value,
                                           _SN_END.value, _SN_F.value)
    settings["score_norm"] = {"method": _SN.value, "n": _SN_N.value,
                              "n_end": _SN_END.value, "factor": _SN_F.value}
  q = [qids[i] for i in cands.query_index]
  r = [rids[i] for i in cands.reference_index]
  return q, r, cands.score, settings


def run() -> dict:
  from asl_jax.evaluation import io, metrics
  if not _GT.value:
    raise UserError("--ground_truth G.csv is required.")
  check_flags(_PRED.value, {"--descriptors": _DESC.value, "--query_descriptors": _QDESC.value,
                            "--reference_descriptors": _RDESC.value,
                            "--train_descriptors": _TDESC.value}, _K.value, _BUDGET.value)
  if _WRITE.value:
    paths.output_file(_WRITE.value, "--write_predictions", "the predictions")
  gt_rows = io.read_ground_truth(_GT.value)
  if _PRED.value:
    p = io.read_predictions(_PRED.value)
    q, r, s, settings = p.query_ids, p.reference_ids, p.scores, {"predictions": _PRED.value}
  else:
    q, r, s, settings = _descriptor_predictions(gt_rows)
  check_ids(q, gt_rows, r, log=lambda m: print(m, file=sys.stderr))
  if _WRITE.value:
    io.write_predictions(_WRITE.value, q, r, s)
  out = metrics.evaluate_predictions(q, r, s, gt_rows, _DROP.value, _MAX.value)
  out["settings"] = settings
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    print(json.dumps(run(), indent=2))
  except UserError as e:
    print(f"asl_jax.evaluate: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  from asl_jax import cli
  cli.help_exits_zero(sys.argv[1:])
  app.run(main)
