"""The Recall@k surrogate loss RS@k (Patel, Tolias and Matas, CVPR 2022).

As the authors' code computes it (the paper's Sections 3.2 and
3.3): for each query q of a batch of L2-normalised embeddings and each of its
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

For copy detection (A.9) a batch is N training images x m views, one class
per image. `batch_masks` gives the two designs: symmetric (every view a query,
the rest of the batch its database) and asymmetric (view 0, the unedited
image, is the reference; views 1..m-1 are queries searched against the
references only; some identities are distractors: database items with no
query). `simix` adds SiMix's virtual samples (A.5), and `rs_term` is the
training term built from `config.loss`.
"""

import jax
import jax.numpy as jnp

DEFAULT_K = (1, 2, 4, 8, 16)
SIMIX_GROUPS = (3, 4, 6)  # Views mixed per image: the official code's set.
DESIGNS = ("symmetric", "asymmetric")


def _sigmoid(x):
  # The official code clamps the exponent to +-50.
  return jax.nn.sigmoid(jnp.clip(x, -50.0, 50.0))


def rs_at_k_loss(embeddings: jax.Array, labels: jax.Array, *, k_values=DEFAULT_K,
                 tau1: float = 1.0, tau2: float = 0.01, query_in_rank: bool = True,
                 max_positives: int | None = None, chunk: int | None = None,
                 query_mask: jax.Array | None = None,
                 database_mask: jax.Array | None = None) -> tuple[jax.Array, dict]:
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
    database_mask: [B] bool, False for items that are not in any query's
      database Omega (neither positives nor in the rank sums; e.g. the
      asymmetric design's queries). Default: every item.
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
  in_db = jnp.ones((b,), bool) if database_mask is None else jnp.asarray(database_mask, bool)
  positive = same & ~eye & in_db[None, :]                           # [B, B]
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
    keep = jnp.broadcast_to(in_db[:, None], (b, m))
    keep = keep & (jnp.arange(b)[:, None] != q_order[None, :])      # z != x
    if not query_in_rank:
      keep = keep & (jnp.arange(b)[:, None] != q_index)             # z != q
    rank = 1.0 + jnp.sum(jnp.where(keep, _sigmoid(diff), 0.0), axis=0)  # [m]
    member = _sigmoid((k_arr[:, None] - rank[None, :]) / tau1)      # [K, m]
    count = jnp.sum(jnp.where(q_valid[None, :], member, 0.0), axis=1)  # [K]
    npos = jnp.sum(q_valid).astype(jnp.float32)
    recall = jnp.minimum(count, k_arr) / jnp.maximum(jnp.minimum(k_arr, npos), 1.0)
    # The exact rank of the best positive, for the batch's hit@k.
    beats = ((s[None, :] > s_pos[:, None]) & (jnp.arange(b)[None, :] != q_index)
             & in_db[None, :])
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


def distractor_identities(n: int, count: int) -> jax.Array:
  """[N] bool: `count` identities spread evenly over the batch (every
  N/count-th, so that each host's share of the batch holds some)."""
  if count == 0:
    return jnp.zeros((n,), bool)
  return jnp.arange(n) % (n // count) == 0


def batch_masks(n: int, k: int, design: str, distractor_ids: int = 0):
  """(query_mask, database_mask), each [N*K] bool, of an id-major N x K batch.

  symmetric: every view is a query and a database item (distractor
    identities are database items only).
  asymmetric: view 0 of each identity is its reference, the only database
    item of its class; views 1..K-1 are queries (the distractors' views are
    all database items, none a query), so each query has one positive.
  """
  view = jnp.tile(jnp.arange(k), n)
  distractor = jnp.repeat(distractor_identities(n, distractor_ids), k)
  if design == "symmetric":
    return ~distractor, jnp.ones((n * k,), bool)
  if design == "asymmetric":
    return (view > 0) & ~distractor, (view == 0) | distractor
  raise ValueError(f"Unknown RS@k batch design {design!r}; expected one of {DESIGNS}.")


def simix(embeddings: jax.Array, identity_labels: jax.Array, n: int, k: int, design: str,
          rng: jax.Array, distractor_ids: int = 0):
  """SiMix (A.5): for each identity, every unordered pair (i, j) of its mixed
  views gives a virtual sample a e_i + (1 - a) e_j, a ~ U(0, 1) per pair (not
  re-normalised, so s(q, v) = a s(q, e_i) + (1 - a) s(q, e_j)).

  The mixed views are all K views (symmetric) or the K-1 edited views
  (asymmetric); the virtual samples keep their identity's label. As in the
  official code they are queries and database items (symmetric); in the
  asymmetric design they are queries only (the database stays the
  references). Distractor identities get no virtual samples.

  Returns (embeddings [N*(K+P), D], labels, query_mask, database_mask), with P
  virtual samples per identity after its K real ones (id-major).
  """
  first = 0 if design == "symmetric" else 1
  group = k - first
  if group not in SIMIX_GROUPS:
    raise ValueError(f"SiMix mixes {group} views per image here; supported: {SIMIX_GROUPS}.")
  i, j = (a + first for a in jnp.triu_indices(group, 1))
  p = i.shape[0]
  e = embeddings.astype(jnp.float32).reshape(n, k, -1)
  alpha = jax.random.uniform(rng, (n, p, 1))
  virtual = alpha * e[:, i] + (1.0 - alpha) * e[:, j]                  # [N, P, D]
  mixed = jnp.concatenate([e, virtual], 1).reshape(n * (k + p), -1)
  labels = jnp.repeat(identity_labels, k + p)
  query, database = (x.reshape(n, k) for x in batch_masks(n, k, design, distractor_ids))
  real = ~distractor_identities(n, distractor_ids)[:, None]
  v_query = jnp.broadcast_to(real, (n, p))
  v_database = v_query if design == "symmetric" else jnp.zeros((n, p), bool)
  return (mixed, labels, jnp.concatenate([query, v_query], 1).reshape(-1),
          jnp.concatenate([database, v_database], 1).reshape(-1))


def max_positives(k: int, design: str, use_simix: bool) -> int:
  """Positives per query: K-1 (symmetric; K-1+P with SiMix) or 1 (asymmetric)."""
  if design == "asymmetric":
    return 1
  return k - 1 + (k * (k - 1) // 2 if use_simix else 0)


def rs_term(descriptor: jax.Array, identity_labels: jax.Array, k: int, cfg,
            rng: jax.Array | None = None):
  """The RS@k training term of an id-major N x K batch of descriptors
  (identity_labels: [N]), from
  `config.loss` (rs_design, rs_k, rs_tau1, rs_tau2, rs_query_in_rank,
  rs_chunk, rs_distractor_ids, simix). Returns (loss, metrics)."""
  z = descriptor.astype(jnp.float32)
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-6)
  n = identity_labels.shape[0]
  design, d = cfg.rs_design, cfg.rs_distractor_ids
  if cfg.simix:
    z, labels, query, database = simix(z, identity_labels, n, k, design, rng, d)
  else:
    labels = jnp.repeat(identity_labels, k)
    query, database = batch_masks(n, k, design, d)
  chunk = cfg.rs_chunk or None
  if chunk and z.shape[0] % chunk:
    chunk = next(c for c in range(chunk, 0, -1) if z.shape[0] % c == 0)
  return rs_at_k_loss(
      z, labels, k_values=tuple(cfg.rs_k), tau1=cfg.rs_tau1, tau2=cfg.rs_tau2,
      query_in_rank=cfg.rs_query_in_rank, chunk=chunk, query_mask=query,
      database_mask=database, max_positives=max_positives(k, design, cfg.simix))
