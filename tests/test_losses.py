"""Loss values against hand-computed cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asl_jax import losses


def _features(norms):
  """[N*K, 2] features with the given norms (id-major)."""
  norms = np.asarray(norms, np.float32).reshape(-1)
  return jnp.asarray(np.stack([norms * 0.6, norms * 0.8], 1))


def test_norm_ratio_all_pairs_hand_computed():
  # One identity, 3 views: amounts 1.0, 0.5, 0.5; norms 2, 1, 4.
  feats = _features([2.0, 1.0, 4.0])
  amounts = jnp.array([[1.0, 0.5, 0.5]])
  # Pairs with more > less: (0,1) ratio 2, (0,2) ratio 0.5.
  want = (np.exp(1 - 2.0) + np.exp(1 - 0.5)) / 2
  got = losses.norm_ratio_loss(feats, amounts, rng=None)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_norm_ratio_all_tied_identity_counts_one_with_zero_grad():
  feats = _features([1.0, 3.0, 2.0, 5.0])  # Two identities of K=2.
  amounts = jnp.array([[0.7, 0.7], [1.0, 0.25]])
  want = (1.0 + np.exp(1 - 2.0 / 5.0)) / 2
  for rng in (None, jax.random.key(0)):
    got = losses.norm_ratio_loss(feats, amounts, rng=rng)
    np.testing.assert_allclose(got, want, rtol=1e-6)
  grad = jax.grad(lambda f: losses.norm_ratio_loss(f, amounts, jax.random.key(0)))(feats)
  assert np.all(np.asarray(grad[:2]) == 0.0)        # The tied identity.
  assert np.all(np.isfinite(np.asarray(grad)))
  assert np.linalg.norm(np.asarray(grad[2:])) > 0


def test_norm_ratio_random_draw_matches_official_loop():
  """Re-implements the official retry loop with the same draws."""
  n, k, tries = 16, 4, 5
  rs = np.random.default_rng(0)
  norms = rs.uniform(0.5, 3.0, (n, k)).astype(np.float32)
  amounts = rs.choice([0.3, 0.6, 1.0], size=(n, k)).astype(np.float32)
  amounts[0] = 1.0  # An identity whose views all tie.
  key = jax.random.key(3)
  draws = np.asarray(jax.random.randint(key, (n, tries, 2), 0, k))
  want = []
  for i in range(n):
    for t in range(tries):
      a, b = draws[i, t]
      if amounts[i, a] != amounts[i, b]:
        break
    if amounts[i, a] == amounts[i, b]:
      want.append(1.0)
      continue
    hi, lo = (a, b) if amounts[i, a] > amounts[i, b] else (b, a)
    want.append(np.exp(1 - norms[i, hi] / norms[i, lo]))
  got = losses.norm_ratio_loss(_features(norms), jnp.asarray(amounts), rng=key,
                               num_tries=tries)
  np.testing.assert_allclose(got, np.mean(want), rtol=1e-5)


def test_soft_triplet_hand_computed():
  # Identity 0: points (0,0), (3,0); identity 1: (0,4), (10,10).
  x = jnp.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [10.0, 10.0]])
  labels = jnp.array([0, 0, 1, 1])
  # Hardest positive / negative distance per anchor.
  d_ap = np.array([3.0, 3.0, np.hypot(10, 6), np.hypot(10, 6)])
  d_an = np.array([4.0, 5.0, 4.0, np.hypot(7, 10)])
  want = np.mean(np.log1p(np.exp(d_ap - d_an)))
  np.testing.assert_allclose(losses.soft_triplet_loss(x, labels), want, rtol=1e-5)


def test_info_nce_hand_computed():
  # Unit vectors: identity 0 = {e0, e0}, identity 1 = {e1, -e0}.
  z = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  labels = jnp.array([0, 0, 1, 1])
  t = 0.5
  s = np.asarray(z @ z.T) / t
  want = []
  for i, j, negs in [(0, 1, [2, 3]), (1, 0, [2, 3]), (2, 3, [0, 1]), (3, 2, [0, 1])]:
    den = np.exp(s[i, j]) + np.exp(s[i, negs]).sum()
    want.append(-np.log(np.exp(s[i, j]) / den))
  np.testing.assert_allclose(losses.info_nce_loss(z, labels, t), np.mean(want), rtol=1e-5)


def test_label_smoothed_cross_entropy_hand_computed():
  logits = jnp.array([[2.0, 0.0, 0.0]])
  p = np.exp([2.0, 0.0, 0.0]) / np.exp([2.0, 0.0, 0.0]).sum()
  q = np.array([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
  want = -(q * np.log(p)).sum()
  got = losses.label_smoothed_cross_entropy(logits, jnp.array([0]), 0.1)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_koleo_hand_computed():
  z = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  labels = jnp.array([0, 1, 2])
  # Nearest other identity: distance sqrt(2) for all three.
  np.testing.assert_allclose(losses.koleo_loss(z, labels), -np.log(np.sqrt(2)), rtol=1e-5)


@pytest.mark.parametrize("ratio,want", [(1.0, 1.0), (2.0, np.exp(-1.0))])
def test_mean_norm_ratio(ratio, want):
  feats = _features([ratio, 1.0])
  amounts = jnp.array([[1.0, 0.5]])
  np.testing.assert_allclose(losses.mean_norm_ratio(feats, amounts), ratio, rtol=1e-6)
  np.testing.assert_allclose(losses.norm_ratio_loss(feats, amounts), want, rtol=1e-6)
