"""ISC2021 metrics against hand-computed cases and a direct re-implementation."""

import numpy as np
import pytest

from asl_jax.evaluation import metrics

GT = {("Q1", "R1"), ("Q2", "R2"), ("Q3", "R3"), ("Q4", "R4")}


def _split(preds):
  q, r, s = zip(*preds, strict=False)
  return list(q), list(r), list(s)


def test_example_a_ties_rank_negatives_first():
  # evaluation.md §1.8 example A: sorted labels -,+,-,+,-,+.
  preds = [("Q1", "R1", 0.9), ("Q5", "R7", 0.9), ("Q2", "R9", 0.8),
           ("Q2", "R2", 0.7), ("Q3", "R8", 0.5), ("Q3", "R3", 0.5)]
  out = metrics.evaluate(*_split(preds), GT)
  assert out["micro_ap"] == pytest.approx(0.375, abs=1e-12)
  assert out["recall_at_p90"] is None
  assert metrics.recall_at_p90_or_zero(out) == 0.0
  assert out["recall_at_rank_1"] == pytest.approx(0.25)
  assert out["recall_at_rank_10"] == pytest.approx(0.75)
  assert out["num_true_positives"] == 3 and out["num_ground_truth"] == 4


def test_example_a_without_unlisted_query():
  # Dropping Q5 (as DrivenData does for queries not in the GT) gives 0.5667.
  preds = [("Q1", "R1", 0.9), ("Q2", "R9", 0.8), ("Q2", "R2", 0.7),
           ("Q3", "R8", 0.5), ("Q3", "R3", 0.5)]
  out = metrics.micro_ap(*_split(preds), GT)
  assert out["micro_ap"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 4, abs=1e-12)
  assert out["recall_at_p90"] == pytest.approx(0.25)
  assert out["threshold_at_p90"] == pytest.approx(0.9)


def test_example_b():
  preds = [("Q1", "R1", .95), ("Q2", "R2", .9), ("Q3", "R3", .8), ("Q5", "R7", .7),
           ("Q4", "R4", .6)]
  out = metrics.micro_ap(*_split(preds), GT)
  assert out["micro_ap"] == pytest.approx(0.95, abs=1e-12)
  assert out["recall_at_p90"] == pytest.approx(0.75)
  assert out["threshold_at_p90"] == pytest.approx(0.8)


def test_all_negative_and_empty_predictions():
  out = metrics.micro_ap(["Q9"], ["R9"], [1.0], GT)
  assert out["micro_ap"] == 0.0 and out["recall_at_p90"] is None
  out = metrics.evaluate([], [], [], GT)
  assert out["micro_ap"] == 0.0 and out["num_predictions"] == 0
  assert out["recall_at_rank_1"] == 0.0


def test_constant_scores_gain_nothing_from_order():
  preds_pos_first = [("Q1", "R1", 1.0), ("Q9", "R9", 1.0)]
  preds_neg_first = [("Q9", "R9", 1.0), ("Q1", "R1", 1.0)]
  a = metrics.micro_ap(*_split(preds_pos_first), GT)["micro_ap"]
  b = metrics.micro_ap(*_split(preds_neg_first), GT)["micro_ap"]
  assert a == b == pytest.approx(0.5 / 4)


def test_duplicates_are_an_error():
  with pytest.raises(ValueError, match="duplicate"):
    metrics.micro_ap(["Q1", "Q1"], ["R1", "R1"], [0.5, 0.4], GT)


def test_empty_ground_truth_is_an_error():
  with pytest.raises(ValueError, match="no \\(query, reference\\) pair"):
    metrics.micro_ap(["Q1"], ["R1"], [0.5], set())


def _reference_isc(q, r, s, gt):
  """Straightforward transcription of the official definitions."""
  items = sorted(((si, (qi, ri) in gt) for qi, ri, si in zip(q, r, s, strict=False)),
                 key=lambda t: (t[0], not t[1]))[::-1]
  tp, ap, best = 0, 0.0, None
  for k, (_score, y) in enumerate(items, 1):
    prev_recall = tp / len(gt)
    tp += y
    p, rec = tp / k, tp / len(gt)
    ap += (rec - prev_recall) * p
    if p >= 0.9 and (best is None or rec > best):
      best = rec
  return ap, best


def test_random_cases_match_reference_implementation():
  rs = np.random.default_rng(0)
  for trial in range(200):
    n_q, n_r = rs.integers(1, 15), rs.integers(1, 15)
    gt = {(f"Q{i}", f"R{rs.integers(n_r)}") for i in range(n_q) if rs.random() < 0.6}
    if not gt:
      continue
    pairs = {(f"Q{rs.integers(n_q)}", f"R{rs.integers(n_r)}") for _ in range(rs.integers(0, 40))}
    pairs |= {p for p in gt if rs.random() < 0.7}
    pairs = sorted(pairs)
    scores = rs.integers(0, 5, len(pairs)) / 4.0  # Heavy ties.
    q = [p[0] for p in pairs]
    r = [p[1] for p in pairs]
    out = metrics.micro_ap(q, r, scores, gt)
    want_ap, want_rp90 = _reference_isc(q, r, scores, gt)
    assert out["micro_ap"] == pytest.approx(want_ap, abs=1e-9), trial
    if want_rp90 is None:
      assert out["recall_at_p90"] is None
    else:
      assert out["recall_at_p90"] == pytest.approx(want_rp90, abs=1e-12)
