"""ISC2021 file formats: ground truth and prediction CSVs.

* Ground truth: `query_id,reference_id`, one row per query, an empty
  reference for queries that copy nothing.
* Predictions: `query_id,reference_id,score`, higher score = more likely a
  copy; ids without extension.
"""

import csv
from typing import Sequence


def write_ground_truth(path: str, rows: Sequence[tuple[str, str]]):
  with open(path, "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["query_id", "reference_id"])
    w.writerows(rows)


def write_predictions(path: str, query_ids, reference_ids, scores):
  with open(path, "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["query_id", "reference_id", "score"])
    for q, r, s in zip(query_ids, reference_ids, scores, strict=False):
      w.writerow([q, r, repr(float(s))])
