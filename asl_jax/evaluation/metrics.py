"""ISC2021 copy-detection metrics, computed as the official `isc/metrics.py`.

* Predictions (query, reference, score) from all queries are pooled and
  sorted by decreasing score; at equal scores negatives rank first, so ties
  never help (a constant-score submission gains nothing).
* μAP = (1 / N_gt) * sum of the precision at each true positive, where N_gt
  counts every ground-truth pair, predicted or not.
* Recall@P90 = the highest recall over prefixes with precision >= 0.9; when
  no prefix reaches 0.9 it is None (ISC), reported as 0.0 by DrivenData and
  SSCD (`recall_at_p90_or_zero`).
* Recall at rank k: a ground-truth pair has rank = (number of its query's
  predictions scoring >= its score) - 1, or "not found".
"""

import collections
from typing import Iterable, Sequence

import numpy as np

from asl_jax.errors import UserError

GroundTruth = set[tuple[str, str]]


def ground_truth_pairs(rows: Iterable[tuple[str, str]]) -> GroundTruth:
  """(query, reference) pairs of the rows with a non-empty reference."""
  return {(q, r) for q, r in rows if r}


def check_duplicates(query_ids: Sequence[str], reference_ids: Sequence[str]):
  """Raises ValueError naming the first duplicated (query, reference) pairs."""
  counts = collections.Counter(zip(query_ids, reference_ids, strict=False))
  dup = [pair for pair, c in counts.items() if c > 1]
  if dup:
    raise ValueError(f"{len(dup)} duplicate (query, reference) predictions, "
                     f"e.g. {dup[:3]}; each pair may be predicted once.")


def _sorted_labels(query_ids, reference_ids, scores, gt: GroundTruth):
  scores = np.asarray(scores, np.float64)
  y = np.fromiter(((q, r) in gt for q, r in zip(query_ids, reference_ids, strict=False)),
                  bool, len(scores))
  # Primary key: score descending; secondary: negatives (False) first.
  order = np.lexsort((y, -scores))
  return y[order], scores[order]


def micro_ap(query_ids, reference_ids, scores, gt: GroundTruth) -> dict:
  """μAP, Recall@P90 and its threshold, with the counts used.

  Args:
    query_ids, reference_ids, scores: the predictions, one entry each.
    gt: the ground-truth (query, reference) pairs.
  Returns:
    dict with micro_ap, recall_at_p90 (None if precision 0.9 is never
    reached), threshold_at_p90, num_predictions, num_true_positives,
    num_ground_truth.
  """
  if not gt:
    raise ValueError("The ground truth has no (query, reference) pair, so "
                     "recall and μAP are undefined.")
  check_duplicates(query_ids, reference_ids)
  y, s = _sorted_labels(query_ids, reference_ids, scores, gt)
  n_gt = len(gt)
  out = {"num_predictions": int(len(y)), "num_true_positives": int(y.sum()),
         "num_ground_truth": n_gt, "micro_ap": 0.0, "recall_at_p90": None,
         "threshold_at_p90": None}
  if not len(y):
    return out
  tp = np.cumsum(y)
  precision = tp / np.arange(1, len(y) + 1)
  recall = tp / n_gt
  out["micro_ap"] = float(precision[y].sum() / n_gt)
  ok = np.flatnonzero(precision >= 0.9)
  if len(ok):
    j = ok[np.argmax(recall[ok])]  # First (highest-score) index of the max.
    out["recall_at_p90"] = float(recall[j])
    out["threshold_at_p90"] = float(s[j])
  return out


def recall_at_ranks(query_ids, reference_ids, scores, gt: GroundTruth,
                    ranks: Sequence[int] = (1, 10)) -> dict:
  """Fraction of ground-truth pairs found within the top `k` of their query
  (ties pessimistic), for each k."""
  by_query = collections.defaultdict(list)
  for q, r, s in zip(query_ids, reference_ids, np.asarray(scores, np.float64), strict=False):
    by_query[q].append((r, s))
  found_rank = []
  for q, r in gt:
    preds = by_query.get(q, [])
    match = [s for rr, s in preds if rr == r]
    if not match:
      found_rank.append(np.inf)
      continue
    found_rank.append(sum(s >= match[0] for _, s in preds) - 1)
  found_rank = np.asarray(found_rank)
  return {f"recall_at_rank_{k}": float(np.mean(found_rank < k)) for k in ranks}


def recall_at_p90_or_zero(metrics: dict) -> float:
  """DrivenData/SSCD convention: 0.0 where precision 0.9 is never reached."""
  return metrics["recall_at_p90"] or 0.0


def precision_recall_curve(query_ids, reference_ids, scores, gt: GroundTruth):
  """(precision, recall, thresholds) along the pooled, tie-pessimistic list."""
  y, s = _sorted_labels(query_ids, reference_ids, scores, gt)
  tp = np.cumsum(y)
  return tp / np.arange(1, len(y) + 1), tp / len(gt), s


def evaluate(query_ids, reference_ids, scores, gt: GroundTruth) -> dict:
  """All the ISC metrics of one prediction list."""
  out = micro_ap(query_ids, reference_ids, scores, gt)
  out.update(recall_at_ranks(query_ids, reference_ids, scores, gt))
  return out


def evaluate_predictions(q, r, s, gt_rows, drop_unlisted=False, max_results=0) -> dict:
  """The ISC metrics of predictions (query ids, reference ids, scores) against
  ground-truth rows (query_id, reference_id or ""); drop_unlisted: leave out
  queries the ground truth does not list; max_results: refuse more pairs."""
  if max_results and len(q) > max_results:
    raise UserError(f"{len(q)} predictions exceed --max_results={max_results}.")
  listed = {row[0] for row in gt_rows}
  if drop_unlisted:
    keep = [i for i, qq in enumerate(q) if qq in listed]
    q, r, s = [q[i] for i in keep], [r[i] for i in keep], [s[i] for i in keep]
  gt = ground_truth_pairs(gt_rows)
  try:
    out = evaluate(q, r, s, gt)
  except ValueError as e:  # Empty ground truth, duplicate pairs.
    raise UserError(str(e)) from None
  out["recall_at_p90_or_zero"] = recall_at_p90_or_zero(out)
  out["num_queries_in_ground_truth"] = len(listed)
  return out
