"""Which candidate pairs to keep: ASL's gate, its soft and calibrated forms,
and asymmetric verification, each defined here once (the run's evaluation,
`evaluation/icd.py`, and `python -m asl_jax.gate` both decide with these).

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
"""

import dataclasses

import numpy as np

from asl_jax import verification, verification_stream
from asl_jax.errors import UserError

DECISIONS = ("none", "norm", "calibrated_norm", "verify", "verify_else_norm",
             "verify_else_calibrated")


def check_decision(decision: str):
  """Refuses a decision not in DECISIONS, naming those that are."""
  if decision not in DECISIONS:
    raise UserError(f"eval.decision={decision!r}: use one of {', '.join(DECISIONS)} "
                    "(asl_jax/evaluation/decisions.py says what each does).")


def norm_keep(query_norm, reference_norm, threshold: float = 1.0) -> np.ndarray:
  """The gate rule, per pair: keep unless |g(q)| / |g(r)| > threshold (1:
  the paper's gate, method.md §2.3). query_norm, reference_norm: the two
  gate norms of each pair (arrays of one length, or scalars)."""
  return query_norm <= threshold * reference_norm


def asl_gate(candidates, query_gate_norm: np.ndarray, reference_gate_norm: np.ndarray,
             threshold: float = 1.0) -> np.ndarray:
  """ASL's asymmetric gate on search candidates (`search.Candidates`): keep a
  pair unless the query's gate-feature norm exceeds the reference's (ratio >
  1 drops; another threshold: the calibrated gate). Norms are per image."""
  return norm_keep(query_gate_norm[candidates.query_index],
                   reference_gate_norm[candidates.reference_index], threshold)


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


def soft_gate_scores(candidates, query_gate_norm: np.ndarray,
                     reference_gate_norm: np.ndarray, temperature: float) -> np.ndarray:
  """Extension (not in the paper): score x s, s = sigmoid(log(|g_r| / |g_q|) / T),
  for a score >= 0, and score / s below 0.

  Pairs are kept but demoted as the query's norm exceeds the reference's;
  T -> 0 approaches the hard gate's ordering. Scores can be negative after
  score normalisation, and multiplying those by s < 1 would raise them: so
  they are divided, and the result falls with the norm ratio and rises with
  the score for either sign.
  """
  log_ratio = np.log(reference_gate_norm[candidates.reference_index]) - np.log(
      query_gate_norm[candidates.query_index])
  factor = 1.0 / (1.0 + np.exp(-log_ratio / temperature))
  score = candidates.score
  return np.where(score >= 0, score * factor, score / factor)
