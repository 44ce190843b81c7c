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

import argparse
import json
import sys

from asl_jax import cli, paths
from asl_jax.errors import UserError


def parse(argv=None):
  """The flags (the names and meanings the absl version had: comma lists,
  --drop_unlisted_queries / --nodrop_unlisted_queries)."""
  p = cli.parser("python -m asl_jax.evaluate", __doc__)
  p.add_argument("--predictions", help="CSV query_id,reference_id,score.")
  p.add_argument("--ground_truth", help="CSV query_id,reference_id.")
  p.add_argument("--descriptors", help="Track-2 submission HDF5.")
  p.add_argument("--query_descriptors", help="Working-layout HDF5 of queries.")
  p.add_argument("--reference_descriptors", type=cli.comma_list,
                 help="Working-layout HDF5 shards, comma-separated.")
  p.add_argument("--train_descriptors", type=cli.comma_list,
                 help="Training descriptors (PCA-whitening, score normalisation), "
                 "comma-separated.")
  p.add_argument("--k", type=int, default=10, help="Nearest references per query.")
  p.add_argument("--global_budget",
                 help="Keep the N best pairs overall; 'auto' = 10 x queries in GT.")
  p.add_argument("--metric", choices=["ip", "l2"], default="ip", help="Similarity.")
  p.add_argument("--backend", choices=["auto", "faiss", "jax"], default="auto",
                 help="Search backend (auto: faiss on a CPU host that has it, else jax).")
  p.add_argument("--index", default="Flat", help="faiss index-factory string.")
  p.add_argument("--pca_dim", type=int, default=0, help="PCA-whiten to this many dimensions.")
  p.add_argument("--score_norm", choices=["none", "sscd", "isc"], default="none",
                 help="Score normalisation.")
  p.add_argument("--score_norm_n", type=int, default=1,
                 help="First background neighbour (1-based).")
  p.add_argument("--score_norm_n_end", type=int, default=3,
                 help="Last background neighbour (sscd).")
  p.add_argument("--score_norm_factor", type=float, default=1.0,
                 help="β (sscd) or factor (isc).")
  p.add_argument("--drop_unlisted_queries", action="store_true",
                 help="Drop predictions for queries not in the ground truth "
                 "(DrivenData's leaderboard behaviour).")
  p.add_argument("--nodrop_unlisted_queries", dest="drop_unlisted_queries",
                 action="store_false", help=argparse.SUPPRESS)
  p.add_argument("--max_results", type=int, default=0,
                 help="Refuse more predictions than this (0 = no cap).")
  p.add_argument("--write_predictions", help="Also write the predictions here.")
  p.add_argument("--overwrite", action="store_true",
                 help="Replace an existing --write_predictions (once the new file is complete).")
  return p.parse_args(argv)


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


def _search(a, qv, rv, budget):
  from asl_jax.evaluation import search
  if qv.shape[1] != rv.shape[1]:
    raise UserError(f"The query descriptors have {qv.shape[1]} dimensions, the references "
                    f"{rv.shape[1]}; they must come from the same model.")
  try:
    return search.search(qv, rv, k=a.k, metric=a.metric, backend=a.backend,
                         index=a.index, global_budget=budget)
  except RuntimeError as e:  # faiss: an index string it cannot parse or train.
    if a.backend == "jax":  # Only faiss raises RuntimeError for an index string.
      raise
    first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    raise UserError(f"--index={a.index!r}: faiss could not build or train this index "
                    f"({first}). Give an index-factory string such as Flat, "
                    "IVF1024,Flat or IVF1024,PQ32 (with enough references to train it).") from None


def _check_train_flags(a, train):
  """--pca_dim and --score_norm_n(_end) against the training descriptors, before
  any search (they were a library's ValueError and a traceback)."""
  if a.pca_dim < 0:
    raise UserError(f"--pca_dim {a.pca_dim}: give the dimensions to PCA-whiten to, or 0 "
                    "for none.")
  if train is None:
    return
  count, dim = train.shape
  if a.pca_dim > min(count, dim):
    raise UserError(
        f"--pca_dim {a.pca_dim}: the PCA is learned on --train_descriptors, {count} of "
        f"{dim} dimensions, so it can give at most {min(count, dim)}. Give a smaller "
        "--pca_dim or more training descriptors.")
  last = a.score_norm_n if a.score_norm == "isc" else a.score_norm_n_end
  if a.score_norm != "none" and not 1 <= a.score_norm_n <= last <= count:
    raise UserError(
        f"--score_norm {a.score_norm} averages background neighbours n..n_end of each "
        f"query (n = --score_norm_n {a.score_norm_n}, n_end = "
        f"{'n' if a.score_norm == 'isc' else '--score_norm_n_end ' + str(a.score_norm_n_end)}"
        f"); they must satisfy 1 <= n <= n_end <= {count}, the training descriptors given.")


def _descriptor_predictions(a, gt_rows):
  import numpy as np
  from asl_jax.evaluation import io, search
  if a.descriptors:
    qids, qv, rids, rv = io.read_submission(a.descriptors)
  elif a.query_descriptors and a.reference_descriptors:
    qids, qv = io.read_descriptors(a.query_descriptors)
    rids, rv = io.read_descriptors(a.reference_descriptors)
  else:
    raise UserError("Give --descriptors FILE.h5 (track-2 layout) or both "
                    "--query_descriptors and --reference_descriptors.")
  listed = {row[0] for row in gt_rows}
  keep = np.array([q in listed for q in qids])
  if not keep.any():
    raise UserError("None of the query descriptors' ids appear in the ground truth.")
  qids, qv = [q for q, k in zip(qids, keep) if k], qv[keep]
  train = io.read_descriptors(a.train_descriptors)[1] if a.train_descriptors else None
  _check_train_flags(a, train)
  settings = {"metric": a.metric, "backend": a.backend, "index": a.index}
  if a.pca_dim:
    if train is None:
      raise UserError("--pca_dim needs --train_descriptors (never fit on references).")
    whiten = search.pca_whitening(train, a.pca_dim)
    qv, rv, train = whiten(qv), whiten(rv), whiten(train)
    settings["pca_dim"] = a.pca_dim
  budget = None
  if a.global_budget:
    budget = 10 * len(qids) if a.global_budget == "auto" else int(a.global_budget)
    settings["global_budget"] = budget
  else:
    settings["k"] = a.k
  cands = _search(a, qv, rv, budget)
  if a.score_norm != "none":
    if train is None:
      raise UserError("--score_norm needs --train_descriptors as the background set.")
    cands.score = search.normalized_scores(cands, qv, train, a.score_norm, a.score_norm_n,
                                           a.score_norm_n_end, a.score_norm_factor)
    settings["score_norm"] = {"method": a.score_norm, "n": a.score_norm_n,
                              "n_end": a.score_norm_n_end, "factor": a.score_norm_factor}
  q = [qids[i] for i in cands.query_index]
  r = [rids[i] for i in cands.reference_index]
  return q, r, cands.score, settings


def run(a) -> dict:
  """The metrics of what the parsed flags `a` name (a UserError for bad input)."""
  from asl_jax.evaluation import io, metrics
  if not a.ground_truth:
    raise UserError("--ground_truth G.csv is required.")
  check_flags(a.predictions, {"--descriptors": a.descriptors,
                              "--query_descriptors": a.query_descriptors,
                              "--reference_descriptors": a.reference_descriptors,
                              "--train_descriptors": a.train_descriptors},
              a.k, a.global_budget)
  if a.write_predictions:
    paths.new_output_file(a.write_predictions, "--write_predictions", a.overwrite,
                          "the predictions")
  gt_rows = io.read_ground_truth(a.ground_truth)
  if a.predictions:
    p = io.read_predictions(a.predictions)
    q, r, s, settings = p.query_ids, p.reference_ids, p.scores, {"predictions": a.predictions}
  else:
    q, r, s, settings = _descriptor_predictions(a, gt_rows)
  check_ids(q, gt_rows, r, log=lambda m: print(m, file=sys.stderr))
  if a.write_predictions:
    io.write_predictions(a.write_predictions, q, r, s)
  out = metrics.evaluate_predictions(q, r, s, gt_rows, a.drop_unlisted_queries, a.max_results)
  out["settings"] = settings
  return out


def main(argv=None) -> int:
  """Prints the metrics as one JSON object; returns the exit status."""
  return cli.run_command(lambda a: print(json.dumps(run(a), indent=2)), parse, argv)


if __name__ == "__main__":
  cli.exit_process(main())
