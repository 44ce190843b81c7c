"""The Recall@k surrogate loss RS@k (Patel, Tolias and Matas, CVPR 2022).

As the authors' code computes it (../shared/docs/recall_surrogate.md, A.2 and
A.3): for each query q of a batch of L2-normalised embeddings and each of its
positives x (same label, q itself excluded),

  soft rank  r(q, x) = 1 + sum_{z in Omega_q, z != x} sigmoid((s(q,z) - s(q,x)) / tau2)
  recall     R_k(q)  = min(sum_x sigmoid((k - r(q, x)) / tau1), k) / min(k, |P_q|)
  loss               = mean_q mean_k (1 - R_k(q)),  k in K, each k capped at the batch

with s the dot product in float32 (`precision=HIGHEST`: tau2 = 0.01 must
resolve similarity differences that bfloat16 cannot). Omega_q is the rest of
the batch. The official code also counts the query in its own rank sum
(`query_in_rank=True`): s(q, q) = 1, so every positive's rank grows by about
one; the clean definition (`False`) leaves it out. On perfectly separated
classes of 4 the official form gives 0.215 for K = {1, 2, 4, 8, 16} and 0.453
for K = {1}, the clean one 0.113 (tests). Queries without positives are
masked out of the mean. The loss is computed in chunks of queries
(`lax.map`), so that its memory is O(chunk x B x m) rather than O(B^2 x m).
"""

import jax
import jax.numpy as jnp

DEFAULT_K = (1, 2, 4, 8, 16)


def _sigmoid(x):
  # The official code clamps the exponent to +-50.
  return jax.nn.sigmoid(jnp.clip(x, -50.0, 50.0))


def rs_at_k_loss(embeddings: jax.Array, labels: jax.Array, *, k_values=DEFAULT_K,
                 tau1: float = 1.0, tau2: float = 0.01, query_in_rank: bool = True,
                 max_positives: int | None = None, chunk: int | None = None,
                 query_mask: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """RS@k of a batch; returns (loss, metrics).

  Args:
    embeddings: [B, D], L2-normalised (the similarity is their dot product).
    labels: [B] int; equal labels are positives of each other.
    k_values: the k set K; each k is capped at the batch size.
    tau1, tau2: temperatures of the rank and of the similarity differences.
    query_in_rank: count the query in its own rank sum, as the official code.
    max_positives: an upper bound on |P_q| (static; default B - 1); positives
      are gathered into [B, max_positives] so the rank tensor is
      [chunk, B, max_positives].
    chunk: queries per step of the loss (None: all at once).
    query_mask: [B] bool, False for items that are database-only (e.g. the
      asymmetric design's references and distractors).
  Returns:
    The mean loss over queries with positives, and metrics: the soft recall
    at each k and the hit rate at each k (a positive among the k most similar
    items, the DML recall@k) on the batch.
  """
  e = jnp.asarray(embeddings, jnp.float32)
  b = e.shape[0]
  ks = tuple(sorted({min(int(k), b) for k in k_values}))
  m = max_positives or max(b - 1, 1)
  labels = jnp.asarray(labels)
  same = labels[:, None] == labels[None, :]
  eye = jnp.eye(b, dtype=bool)
  positive = same & ~eye                                            # [B, B]
  # Each query's positives gathered into m slots (padding marked invalid).
  order = jnp.argsort(~positive, axis=1, stable=True)[:, :m]        # [B, m]
  valid = jnp.take_along_axis(positive, order, 1)                   # [B, m]
  n_pos = positive.sum(1)
  is_query = n_pos > 0 if query_mask is None else (n_pos > 0) & query_mask
  k_arr = jnp.asarray(ks, jnp.float32)

  def per_query(args):
    q_emb, q_order, q_valid, q_index = args                          # [D], [m], [m], []
    s = jnp.dot(e, q_emb, precision=jax.lax.Precision.HIGHEST)       # [B]
    s_pos = s[q_order]                                               # [m]
    diff = (s[:, None] - s_pos[None, :]) / tau2                      # [B(z), m(x)]
    keep = jnp.ones((b, m), bool)
    keep = keep & (jnp.arange(b)[:, None] != q_order[None, :])      # z != x
    if not query_in_rank:
      keep = keep & (jnp.arange(b)[:, None] != q_index)             # z != q
    rank = 1.0 + jnp.sum(jnp.where(keep, _sigmoid(diff), 0.0), axis=0)  # [m]
    member = _sigmoid((k_arr[:, None] - rank[None, :]) / tau1)      # [K, m]
    count = jnp.sum(jnp.where(q_valid[None, :], member, 0.0), axis=1)  # [K]
    npos = jnp.sum(q_valid).astype(jnp.float32)
    recall = jnp.minimum(count, k_arr) / jnp.maximum(jnp.minimum(k_arr, npos), 1.0)
    # The exact rank of the best positive, for the batch's hit@k.
    beats = (s[None, :] > s_pos[:, None]) & (jnp.arange(b)[None, :] != q_index)
    exact = 1 + jnp.sum(beats, axis=1)                              # [m]
    best = jnp.min(jnp.where(q_valid, exact, b + 1))
    return recall, (best <= k_arr).astype(jnp.float32)

  xs = (e, order, valid, jnp.arange(b))
  if chunk and chunk < b:
    if b % chunk:
      raise ValueError(f"The batch of {b} does not split into chunks of {chunk}.")
    recall, hit = jax.lax.map(per_query, xs, batch_size=chunk)
  else:
    recall, hit = jax.vmap(per_query)(xs)                           # [B, K]
  w = is_query.astype(jnp.float32)
  denom = jnp.maximum(w.sum(), 1.0)
  loss = jnp.sum(w * jnp.mean(1.0 - recall, axis=1)) / denom
  metrics = {f"rs@k/soft_recall@{k}": jnp.sum(w * recall[:, i]) / denom
             for i, k in enumerate(ks)}
  metrics.update({f"rs@k/hit@{k}": jnp.sum(w * hit[:, i]) / denom for i, k in enumerate(ks)})
  return loss, metrics
