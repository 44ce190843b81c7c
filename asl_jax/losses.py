"""Training losses: the ASL norm-ratio loss and the base metric-learning losses.

Batches are id-major: N identities x K views, row `i * K + k` is view k of
identity i (ASL, Wang, Sun and Yang, AAAI 2023).
"""

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def norm_ratio_loss(gate_feature: Array, information_amount: Array,
                    rng: Array | None = None, num_tries: int = 5) -> Array:
  """ASL's norm-ratio loss, mean over identities of exp(1 - |f_more|/|f_less|).

  Args:
    gate_feature: [N*K, D] un-normalised features, id-major.
    information_amount: [N, K] fraction of the source content in each view.
    rng: if given, one pair of views per identity is drawn as in the official
      code: up to `num_tries` uniform draws, stopping at the first whose two
      views differ in information amount. If None, the term is averaged over
      all ordered pairs with different amounts (a deterministic, lower-variance
      variant, method.md §7.4).
    num_tries: draws per identity, when `rng` is given.
  Returns:
    The scalar loss. An identity whose drawn views tie contributes exactly 1
    with zero gradient, and still counts in the mean (as in the official code).
  """
  n, k = information_amount.shape
  norms = jnp.linalg.norm(gate_feature.astype(jnp.float32), axis=-1).reshape(n, k)
  if rng is None:
    more = information_amount[:, :, None] > information_amount[:, None, :]
    ratio = norms[:, :, None] / norms[:, None, :]
    terms = jnp.where(more, jnp.exp(1.0 - ratio), 0.0)
    count = more.sum((1, 2))
    per_id = jnp.where(count > 0, terms.sum((1, 2)) / jnp.maximum(count, 1), 1.0)
    return per_id.mean()
  draws = jax.random.randint(rng, (n, num_tries, 2), 0, k)
  amounts = jnp.take_along_axis(information_amount[:, None, :], draws, axis=2)
  differs = amounts[..., 0] != amounts[..., 1]                 # [N, T]
  first = jnp.where(differs.any(1), jnp.argmax(differs, 1), num_tries - 1)
  pair = draws[jnp.arange(n), first]                           # [N, 2]
  pair_amount = amounts[jnp.arange(n), first]
  a_is_more = pair_amount[:, 0] > pair_amount[:, 1]
  more = jnp.where(a_is_more, pair[:, 0], pair[:, 1])
  less = jnp.where(a_is_more, pair[:, 1], pair[:, 0])
  ratio = norms[jnp.arange(n), more] / norms[jnp.arange(n), less]
  tie = pair_amount[:, 0] == pair_amount[:, 1]
  return jnp.where(tie, 1.0, jnp.exp(1.0 - jnp.where(tie, 1.0, ratio))).mean()


def _same_identity(labels: Array) -> Array:
  return labels[:, None] == labels[None, :]


def soft_triplet_loss(features: Array, labels: Array) -> Array:
  """Batch-hard soft-margin triplet loss on Euclidean distances (BoT/D²LV):
  mean over anchors of softplus(d(hardest positive) - d(hardest negative))."""
  x = features.astype(jnp.float32)
  sq = jnp.sum(x * x, -1)
  d2 = sq[:, None] + sq[None, :] - 2.0 * x @ x.T
  dist = jnp.sqrt(jnp.maximum(d2, 1e-12))
  same = _same_identity(labels)
  hardest_pos = jnp.max(jnp.where(same, dist, -jnp.inf), axis=1)
  hardest_neg = jnp.min(jnp.where(same, jnp.inf, dist), axis=1)
  return jax.nn.softplus(hardest_pos - hardest_neg).mean()


def info_nce_loss(embeddings: Array, labels: Array, temperature: float) -> Array:
  """Multi-positive InfoNCE over views (SSCD eq. 3-5): each view against the
  other views of its identity, other positives left out of the denominator."""
  z = _l2_normalize(embeddings)
  s = (z @ z.T) / temperature
  same = _same_identity(labels)
  eye = jnp.eye(s.shape[0], dtype=bool)
  positive = same & ~eye
  neg_logsumexp = jax.nn.logsumexp(jnp.where(same, -jnp.inf, s), axis=1)
  # log(exp(s_ij) / (exp(s_ij) + sum_negatives exp(s_ik))) for each positive j.
  log_prob = s - jnp.logaddexp(s, neg_logsumexp[:, None])
  per_row = -jnp.sum(jnp.where(positive, log_prob, 0.0), 1) / jnp.maximum(
      positive.sum(1), 1)
  return per_row.mean()


def koleo_loss(embeddings: Array, labels: Array) -> Array:
  """KoLeo spreading term (SSCD): -mean log distance to the nearest
  embedding of another identity."""
  z = _l2_normalize(embeddings)
  s = jnp.where(_same_identity(labels), -jnp.inf, z @ z.T)
  nearest = jnp.max(s, axis=1)
  return -jnp.log(jnp.sqrt(jnp.maximum(2.0 - 2.0 * nearest, 1e-6))).mean()


def label_smoothed_cross_entropy(logits: Array, labels: Array,
                                 smoothing: float = 0.1,
                                 num_classes: int | None = None) -> Array:
  """Cross-entropy with targets (1 - eps) one-hot + eps / num_classes.

  num_classes: the real classes when `logits` has padding columns after them
  (they get no target mass); default: all columns.
  """
  columns = logits.shape[-1]
  num_classes = num_classes or columns
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)
  if columns > num_classes:
    targets = jnp.pad(targets, ((0, 0), (0, columns - num_classes)))
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()


def _l2_normalize(x: Array, eps: float = 1e-6) -> Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def mean_norm_ratio(gate_feature: Array, information_amount: Array) -> Array:
  """Diagnostic: mean |f_more| / |f_less| over all view pairs of an identity
  with different information amounts (> 1 once ASL has learned)."""
  n, k = information_amount.shape
  norms = jnp.linalg.norm(gate_feature.astype(jnp.float32), axis=-1).reshape(n, k)
  more = information_amount[:, :, None] > information_amount[:, None, :]
  ratio = norms[:, :, None] / norms[:, None, :]
  return jnp.sum(jnp.where(more, ratio, 0.0)) / jnp.maximum(more.sum(), 1)
