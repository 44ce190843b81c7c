"""RS@k against a NumPy reference written here from the formulas of
recall_surrogate.md (A.2, A.3), the doc's closed-form facts, chunking and
gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asl_jax import recall_surrogate
from asl_jax.recall_surrogate import rs_at_k_loss


def reference(e, labels, ks=(1, 2, 4, 8, 16), tau1=1.0, tau2=0.01, query_in_rank=True,
              query_mask=None, database=None):
  """A loop over queries q, positives x and database items z (all items, or
  those where `database` is True)."""
  sig = lambda u: 1 / (1 + np.exp(-np.clip(u, -50, 50)))
  e = np.asarray(e, np.float64)
  b = len(e)
  s = e @ e.T
  losses = []
  db = [z for z in range(b) if database is None or database[z]]
  for q in range(b):
    pos = [x for x in db if x != q and labels[x] == labels[q]]
    if not pos or (query_mask is not None and not query_mask[q]):
      continue
    per_k = []
    for k in sorted({min(k, b) for k in ks}):
      total = 0.0
      for x in pos:
        rank = 1.0
        for z in db:
          if z == x or (z == q and not query_in_rank):
            continue
          rank += sig((s[q, z] - s[q, x]) / tau2)
        total += sig((k - rank) / tau1)
      per_k.append(1 - min(total, k) / min(k, len(pos)))
    losses.append(np.mean(per_k))
  return float(np.mean(losses))


def unit(x):
  x = np.asarray(x, np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def separated(classes=5, per=4):
  """Classes of `per` identical embeddings, orthogonal to the other classes."""
  return np.repeat(np.eye(classes, 8, dtype=np.float32), per, 0), np.repeat(np.arange(classes), per)


def test_the_docs_closed_form_values():
  e, y = separated()
  assert float(rs_at_k_loss(e, y)[0]) == pytest.approx(0.215, abs=1e-3)
  assert float(rs_at_k_loss(e, y, k_values=(1,))[0]) == pytest.approx(0.453, abs=1e-3)
  assert float(rs_at_k_loss(e, y, query_in_rank=False)[0]) == pytest.approx(0.113, abs=1e-3)


@pytest.mark.parametrize("query_in_rank", [True, False])
@pytest.mark.parametrize("batch", ["random", "ties", "masked", "clip"])
def test_matches_the_numpy_reference(batch, query_in_rank):
  rng = np.random.default_rng(0)
  mask = None
  if batch == "random":
    y = np.repeat(np.arange(6), 4)
    e = unit(rng.normal(size=(24, 16)) + 2 * np.repeat(rng.normal(size=(6, 16)), 4, 0))
  elif batch == "ties":  # Coarse values: many equal similarities.
    y = np.repeat(np.arange(5), 4)
    e = unit(np.round(rng.normal(size=(20, 4)) * 1.5) + 0.01)
  elif batch == "masked":  # Two singletons (no positives) and database-only items.
    y = np.array([0, 0, 0, 1, 1, 1, 2, 3, 4, 4, 4, 4])
    e = unit(rng.normal(size=(12, 8)))
    mask = np.array([True] * 9 + [False, True, True])
  else:  # A class of 10 near-identical items: the soft count exceeds small k.
    y = np.array([0] * 10 + [1, 1, 2, 2])
    e = unit(np.concatenate([np.ones((10, 8)) + 0.001 * rng.normal(size=(10, 8)),
                             rng.normal(size=(4, 8))]))
  got = float(rs_at_k_loss(e, y, query_in_rank=query_in_rank,
                           query_mask=None if mask is None else jnp.asarray(mask))[0])
  want = reference(e, y, query_in_rank=query_in_rank, query_mask=mask)
  assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
  if batch == "clip":  # Without the clip the soft recall at k = 1 would exceed 1.
    m = rs_at_k_loss(e, y, query_in_rank=query_in_rank)[1]
    assert float(m["rs@k/soft_recall@1"]) <= 1.0


def test_chunked_equals_whole_and_k_is_capped_at_the_batch():
  rng = np.random.default_rng(1)
  y = np.repeat(np.arange(4), 3)
  e = unit(rng.normal(size=(12, 8)))
  whole, mw = rs_at_k_loss(e, y)
  chunked, mc = rs_at_k_loss(e, y, chunk=4, max_positives=2)
  assert float(whole) == pytest.approx(float(chunked), rel=1e-6)
  assert set(mw) == {f"rs@k/{m}@{k}" for m in ("soft_recall", "hit") for k in (1, 2, 4, 8, 12)}
  assert float(mw["rs@k/hit@12"]) == 1.0
  assert float(whole) == pytest.approx(reference(e, y, ks=(1, 2, 4, 8, 12)), rel=1e-5)
  with pytest.raises(ValueError, match="does not split"):
    rs_at_k_loss(e, y, chunk=5)


def test_gradient_matches_finite_differences():
  rng = np.random.default_rng(2)
  y = np.repeat(np.arange(3), 3)
  x = rng.normal(size=(9, 6)).astype(np.float32)

  def f(x):
    e = x / jnp.linalg.norm(x, axis=1, keepdims=True)
    return rs_at_k_loss(e, y, tau2=0.1, k_values=(1, 2, 4))[0]

  g = np.asarray(jax.grad(f)(jnp.asarray(x)))
  assert np.abs(g).max() > 1e-4
  eps = 1e-2
  for i, j in [(0, 0), (3, 2), (8, 5), (5, 1)]:
    d = np.zeros_like(x)
    d[i, j] = eps
    fd = (float(f(jnp.asarray(x + d))) - float(f(jnp.asarray(x - d)))) / (2 * eps)
    assert g[i, j] == pytest.approx(fd, rel=5e-2, abs=2e-4)


@pytest.mark.parametrize("query_in_rank", [True, False])
def test_asymmetric_design_matches_the_reference_and_the_docs_one_positive_form(query_in_rank):
  """View 0 the reference, views 1..3 queries against the references only,
  identities 0 and 3 distractors (every 3rd of 6): each query has one
  positive, so L(q) = 1 - mean_k sigmoid(k - 1 - sum_z sigmoid((s_qz - s_qx) / tau2))."""
  n, k = 6, 4
  query, database = map(np.asarray, recall_surrogate.batch_masks(n, k, "asymmetric", 2))
  distractor = np.repeat([True, False, False, True, False, False], k)
  view = np.tile(np.arange(k), n)
  np.testing.assert_array_equal(query, (view > 0) & ~distractor)
  np.testing.assert_array_equal(database, (view == 0) | distractor)
  rng = np.random.default_rng(3)
  y = np.repeat(np.arange(n), k)
  e = unit(rng.normal(size=(n * k, 8)) + 1.5 * np.repeat(rng.normal(size=(n, 8)), k, 0))
  got, metrics = rs_at_k_loss(e, y, k_values=(1, 2, 4), query_in_rank=query_in_rank,
                              query_mask=jnp.asarray(query), database_mask=jnp.asarray(database),
                              max_positives=1)
  want = reference(e, y, ks=(1, 2, 4), query_in_rank=query_in_rank, query_mask=query,
                   database=database)
  assert float(got) == pytest.approx(want, rel=1e-5)
  sig = lambda u: 1 / (1 + np.exp(-u))
  s = e.astype(np.float64) @ e.T.astype(np.float64)
  per_query, hits = [], []
  for q in np.flatnonzero(query):
    x = q - q % k  # Its reference.
    others = [z for z in np.flatnonzero(database) if z != x]
    rank = 1 + sum(sig((s[q, z] - s[q, x]) / 0.01) for z in others)
    per_query.append(1 - np.mean([sig(kk - rank) for kk in (1, 2, 4)]))
    hits.append(all(s[q, z] <= s[q, x] for z in others))
  assert float(got) == pytest.approx(np.mean(per_query), rel=1e-5)
  assert float(metrics["rs@k/hit@1"]) == pytest.approx(np.mean(hits))


def test_simix_mixes_same_image_views_linearly_and_sets_the_roles():
  n, k = 3, 4
  rng = np.random.default_rng(4)
  e = jnp.asarray(unit(rng.normal(size=(n * k, 8))))
  labels = jnp.asarray([7, 8, 9])
  key = jax.random.key(0)
  for design, first, p in (("symmetric", 0, 6), ("asymmetric", 1, 3)):
    mixed, y, query, database = recall_surrogate.simix(e, labels, n, k, design, key, 1)
    assert mixed.shape == (n * (k + p), 8)
    np.testing.assert_array_equal(np.asarray(y), np.repeat([7, 8, 9], k + p))
    m = np.asarray(mixed).reshape(n, k + p, 8)
    np.testing.assert_allclose(m[:, :k], np.asarray(e).reshape(n, k, 8), rtol=1e-6)
    pairs = [(i, j) for i in range(first, k) for j in range(i + 1, k)]
    assert len(pairs) == p
    q = np.asarray(e[5])
    for v, (i, j) in enumerate(pairs):  # s(q, v) = a s(q, e_i) + (1 - a) s(q, e_j), a in (0, 1).
      for ident in range(n):
        real = np.asarray(e).reshape(n, k, 8)[ident]
        ei, ej, ev = real[i], real[j], m[ident, k + v]
        a = (ev @ q - ej @ q) / (ei @ q - ej @ q)
        np.testing.assert_allclose(ev, a * ei + (1 - a) * ej, rtol=1e-4, atol=1e-6)
        assert 0 < a < 1
    query, database = np.asarray(query).reshape(n, k + p), np.asarray(database).reshape(n, k + p)
    assert not query[0].any() and database[0, :k].all()  # Identity 0: the distractor.
    assert not database[0, k:].any()
    assert query[1:, k:].all()  # Virtual samples are queries,
    assert database[1:, k:].all() == (design == "symmetric")  # database items when symmetric.
  with pytest.raises(ValueError, match="supported"):
    recall_surrogate.simix(e.reshape(-1, 8)[:10], labels[:2], 2, 5, "symmetric", key)
