"""Exact k-nearest-neighbour search on accelerators, in JAX.

The references are cut into blocks that are either kept on the devices (when
they fit a share of device memory) or streamed from the host, one block at a
time, so that 10M references work on one GPU; every block is split over the
devices of a 1-D mesh. For each block and query block:

1. candidates are scored in bfloat16 (float32 accumulation): a shortlist of
   the best `shortlist` (k' > k) references per query, found through the
   per-chunk maxima when `chunk` is set (the best k' references lie in the k'
   chunks with the highest maxima);
2. the shortlist is re-scored exactly in float32 and merged into the running
   top-k (only that, and the block's k'-th approximate score, is kept);
3. a certificate: a reference left out of a shortlist scored at most t (the
   block's k'-th approximate score), so exactly at most t + eps, where eps
   bounds bfloat16's rounding error (|q| |r|max (2^-7 + D 2^-23)). A query whose
   k-th exact score is below max(t) + eps is searched again in float32
   throughout; so the result is the float32 search's, up to exact ties.

`precision="highest"` is the plain float32 scan (no shortlist).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from asl_jax import sharding

try:  # jax >= 0.6 exports shard_map at the top level.
  _shard_map = jax.shard_map
except AttributeError:  # pragma: no cover
  from jax.experimental.shard_map import shard_map as _shard_map

# bfloat16 rounding of both operands (2 x 2^-8, and their product) plus float32
# accumulation over D terms (D x 2^-23), relative to |q| |r|.
_BF16_REL = 2.0 ** -7 + 2.0 ** -16
_F32_ACC = 2.0 ** -23


def _top(s, k, chunk):
  """Top-k values and column positions of each row of s [Q, B]; with `chunk`,
  through the chunk maxima: the k best lie in the k chunks of highest maximum."""
  q, b = s.shape
  if not chunk or b % chunk or b // chunk <= k:
    return jax.lax.top_k(s, k)
  blocks = s.reshape(q, b // chunk, chunk)
  _, which = jax.lax.top_k(blocks.max(-1), k)                      # [Q, k] chunks
  cand = jnp.take_along_axis(blocks, which[:, :, None], axis=1)    # [Q, k, chunk]
  vals, pos = jax.lax.top_k(cand.reshape(q, k * chunk), k)
  return vals, jnp.take_along_axis(which, pos // chunk, 1) * chunk + pos % chunk


def _scores(q, r, r_lo, r_sq, metric, precision):
  """[Q, B] scores: inner products, or -|q - r|^2 for l2; r_lo is r in bfloat16."""
  if precision == "bf16":
    s = jnp.dot(q.astype(jnp.bfloat16), r_lo.T, preferred_element_type=jnp.float32)
  else:
    s = jnp.dot(q, r.T, precision=jax.lax.Precision.HIGHEST)
  if metric == "l2":
    s = 2.0 * s - r_sq[None] - jnp.sum(q * q, axis=1, keepdims=True)
  return s


def _local(q, r, r_lo, r_sq, valid, *, k, shortlist, metric, precision, chunk, offset):
  """This device's part of one block: (exact top-k scores, global ids, the
  k'-th approximate score t, or -inf when nothing was left out)."""
  n = r.shape[0]
  base = offset + jax.lax.axis_index("data") * n
  s = jnp.where(valid[None], _scores(q, r, r_lo, r_sq, metric, precision), -jnp.inf)
  if precision != "bf16":
    top, pos = _top(s, min(k, n), chunk)
    t = jnp.full((q.shape[0],), -jnp.inf)
  else:
    kk = min(shortlist, n)
    approx, pos = _top(s, kk, chunk)
    t = approx[:, -1] if kk < n else jnp.full((q.shape[0],), -jnp.inf)
    rows = r[pos]                                                  # [Q, k', D] float32
    top = jnp.einsum("qd,qkd->qk", q, rows, precision=jax.lax.Precision.HIGHEST)
    if metric == "l2":
      top = 2.0 * top - r_sq[pos] - jnp.sum(q * q, axis=1, keepdims=True)
    top = jnp.where(jnp.isfinite(approx), top, -jnp.inf)
  ids = base + pos.astype(jnp.int32)
  top = jax.lax.all_gather(top, "data", axis=1, tiled=True)
  ids = jax.lax.all_gather(ids, "data", axis=1, tiled=True)
  return top, ids, jax.lax.pmax(t, "data")


@functools.lru_cache(maxsize=32)
def _block_fn(mesh, k, shortlist, metric, precision, chunk):
  """jit(running (s, i, t), q, block, offset) -> the running state merged with
  the block's: top-k exact scores and ids, and max t."""
  def run(best_s, best_i, best_t, q, r, r_lo, r_sq, valid, offset):
    local = functools.partial(_local, k=k, shortlist=shortlist, metric=metric,
                              precision=precision, chunk=chunk, offset=offset)
    s, i, t = _shard_map(local, mesh=mesh, in_specs=(P(),) + (P("data"),) * 4,
                         out_specs=(P(), P(), P()), check_vma=False)(q, r, r_lo, r_sq, valid)
    all_s = jnp.concatenate([best_s, s], 1)
    top, pos = jax.lax.top_k(all_s, k)
    return top, jnp.take_along_axis(jnp.concatenate([best_i, i], 1), pos, 1), \
        jnp.maximum(best_t, t)
  return jax.jit(run, donate_argnums=(0, 1, 2))


_to_bf16 = jax.jit(lambda r: r.astype(jnp.bfloat16))


class ReferenceIndex:
  """References held once (on the devices when they fit, else on the host and
  streamed block by block); `search` many query batches."""

  def __init__(self, references: np.ndarray, metric: str = "ip",
               ref_block: int | None = None, mesh=None, precision: str | None = None,
               chunk: int | None = None, shortlist: int | None = None,
               device_fraction: float = 0.3, stream: bool | None = None):
    """precision: "bf16" (shortlist in bfloat16, exact float32 re-ranking, the
    certificate; the accelerator default) or "highest" (float32 throughout, the
    CPU default: XLA's CPU bfloat16 products are slower than its float32 ones;
    "default" is its alias).
    ref_block: references per block (default 2^20 on an accelerator, 65,536 on
    CPU). chunk: columns per chunk maximum in the top-k (default 256 on an
    accelerator, 0 = one wide top-k, on CPU). shortlist: k' per block and query
    (default 3k). device_fraction: the share of one device's memory the
    references may take there; beyond it they stream from the host (stream:
    True or False forces either)."""
    if metric not in ("ip", "l2"):
      raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}.")
    self.mesh = mesh or sharding.make_mesh()
    device = self.mesh.devices.flat[0]
    on_cpu = device.platform == "cpu"
    precision = precision or ("highest" if on_cpu else "bf16")
    if precision not in ("bf16", "highest", "default"):
      raise ValueError(f"precision must be 'bf16' or 'highest', got {precision!r}.")
    self.default_query_block = 1024 if on_cpu else 4096
    self.chunk = (0 if on_cpu else 256) if chunk is None else chunk
    self.metric, self.shortlist = metric, shortlist
    self._sync = on_cpu and self.mesh.devices.size > 1
    self.precision = "highest" if precision == "default" else precision
    n_dev = self.mesh.devices.size
    references = np.ascontiguousarray(references, np.float32)
    self.n, self.dim = references.shape
    ref_block = ref_block or (65536 if on_cpu else 1 << 20)
    self.ref_block = -(-min(ref_block, -(-self.n // n_dev) * n_dev) // n_dev) * n_dev
    total = -(-self.n // self.ref_block) * self.ref_block
    self._host = np.zeros((total, self.dim), np.float32)
    self._host[:self.n] = references
    self.max_norm = float(np.linalg.norm(references, axis=1).max(initial=0.0))
    limit = (device.memory_stats() or {}).get("bytes_limit") if not on_cpu else None
    self.streamed = (bool(limit) and self._host.nbytes > device_fraction * limit * n_dev
                     if stream is None else stream)
    self._spec = NamedSharding(self.mesh, P("data"))
    self._blocks = None if self.streamed else [self._put(b) for b in range(self.num_blocks)]
    self.refs = None if self.streamed else self._blocks[0][0]  # For block_until_ready.
    self.last_recomputed = 0

  @property
  def num_blocks(self) -> int:
    return len(self._host) // self.ref_block

  def _put(self, b):
    """Block b on the devices: (float32 rows, bfloat16 rows, squared norms, valid)."""
    rows = self._host[b * self.ref_block:(b + 1) * self.ref_block]
    valid = np.arange(b * self.ref_block, (b + 1) * self.ref_block) < self.n
    r, sq, ok = (jax.device_put(x, self._spec) for x in (rows, (rows ** 2).sum(1), valid))
    return r, _to_bf16(r), sq, ok

  def _blocks_iter(self):
    if not self.streamed:
      yield from enumerate(self._blocks)
      return
    nxt = self._put(0)
    for b in range(self.num_blocks):  # The next block's copy overlaps this block's search.
      cur, nxt = nxt, (self._put(b + 1) if b + 1 < self.num_blocks else None)
      yield b, cur

  def _scan(self, queries, k, query_block, precision):
    """Running (scores, ids, t) of all queries over every block, on the devices."""
    fn = _block_fn(self.mesh, k, self.shortlist or 3 * k, self.metric, precision, self.chunk)
    rep = NamedSharding(self.mesh, P())
    starts = range(0, len(queries), query_block)
    qs = [jax.device_put(np.pad(queries[s:s + query_block],
                                ((0, query_block - len(queries[s:s + query_block])), (0, 0))),
                         rep) for s in starts]
    state = [(jnp.full((query_block, k), -jnp.inf), jnp.full((query_block, k), -1, jnp.int32),
              jnp.full((query_block,), -jnp.inf)) for _ in starts]
    for b, block in self._blocks_iter():
      offset = np.int32(b * self.ref_block)
      for j, q in enumerate(qs):
        state[j] = fn(*state[j], q, *block, offset)
        if self._sync:  # The CPU's collectives deadlock with several programs in flight.
          jax.block_until_ready(state[j])
    s, i, t = (np.concatenate([np.asarray(st[j]) for st in state])[:len(queries)]
               for j in range(3))
    return s, i, t

  def search(self, queries: np.ndarray, k: int, query_block: int | None = None):
    """(scores [nq, k], indices [nq, k]) as numpy, best first: the float32
    exact search's, up to exact ties. `last_recomputed` says how many queries
    the certificate sent to the float32 scan."""
    k = min(k, self.n)
    queries = np.ascontiguousarray(queries, np.float32)
    query_block = min(query_block or self.default_query_block, max(len(queries), 1))
    s, i, t = self._scan(queries, k, query_block, self.precision)
    self.last_recomputed = 0
    if self.precision == "bf16":
      q_norm = np.linalg.norm(queries, axis=1)
      eps = q_norm * self.max_norm * (_BF16_REL + self.dim * _F32_ACC) * 1.01
      if self.metric == "l2":
        eps = 2 * eps
      redo = np.flatnonzero(~(s[:, -1] >= t + eps))
      self.last_recomputed = len(redo)
      if len(redo):
        block = min(query_block, max(64, 1 << (len(redo) - 1).bit_length()))
        s[redo], i[redo], _ = self._scan(queries[redo], k, block, "highest")
    return s, i
