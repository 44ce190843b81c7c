"""Verification of many candidate pairs in bounded memory.

Holding every image's features at once costs memory in proportion to the
images (about 2.4 MB an image at the 512-pixel working size: 713 MB for
photo_dev's 291, a terabyte at NDEC's 591k). Here the pairs are taken in
query order, in batches of at most `batch_pairs` pairs and `batch_queries`
queries: each query's features (and its mirror image's) are extracted once,
in the batch where its pairs are, and dropped after its last pair; the
references' features (descriptors and keypoints only, no image) sit in a
least-recently-used cache of `reference_cache` entries. Memory is then
bounded by the batch and the cache, whatever the number of images; a
reference evicted and needed again is extracted again (counted). Verdicts are
those of verifying each pair on its own (`verification.verify`).
"""

import collections
import os
import time
from concurrent import futures

import numpy as np

from asl_jax import verification


class LRUCache:
  """At most `capacity` items, the least recently used evicted first."""

  def __init__(self, capacity: int):
    if capacity < 1:
      raise ValueError(f"An LRU cache needs a capacity of at least 1, not {capacity}.")
    self.capacity, self.items = capacity, collections.OrderedDict()
    self.hits = self.misses = self.max_size = 0

  def get(self, key, make):
    """The item of `key`, made by make() when it is not held."""
    if key in self.items:
      self.hits += 1
      self.items.move_to_end(key)
      return self.items[key]
    self.misses += 1
    value = self.items[key] = make()
    if len(self.items) > self.capacity:
      self.items.popitem(last=False)
    self.max_size = max(self.max_size, len(self.items))
    return value


def batches(query_index: np.ndarray, batch_pairs: int, batch_queries: int):
  """Positions of the pairs, sorted by query (then position), cut into
  batches of at most `batch_pairs` pairs and `batch_queries` distinct
  queries; a query's pairs may run over into the next batch."""
  order = np.argsort(query_index, kind="stable")
  start, queries, last = 0, 0, None
  for i, pos in enumerate(order):
    q = query_index[pos]
    new_query = q != last
    if i > start and (i - start >= batch_pairs or (new_query and queries >= batch_queries)):
      yield order[start:i]
      start, queries = i, 0
      new_query = True
    queries += new_query
    last = q
  if len(order) > start:
    yield order[start:]


def verify_stream(query_index, reference_index, load_query, load_reference,
                  cfg: verification.VerifyConfig, workers: int = 0, *,
                  batch_pairs: int = 256, batch_queries: int = 32,
                  reference_cache: int = 1024, log=print, progress_seconds: float = 30.0):
  """Verdicts of the pairs (query_index[i], reference_index[i]), in their
  order, and what it took (see the module docstring).

  load_query, load_reference: index -> uint8 RGB image. workers: threads for
  the extraction and the pairs (0: one per core). Logs a progress line every
  `progress_seconds`.
  """
  query_index = np.asarray(query_index, np.int64)
  reference_index = np.asarray(reference_index, np.int64)
  n = len(query_index)
  verdicts = [None] * n
  refs = LRUCache(reference_cache)
  extracted = {"queries": 0, "references": 0}

  def query_features(q):
    image = load_query(int(q))
    extracted["queries"] += 1
    mirror = (verification.extract(verification.mirrored(image), cfg)
              if cfg.mirror else None)
    return verification.extract(image, cfg), mirror

  def reference_features(r):
    extracted["references"] += 1
    return verification.extract(load_reference(int(r)), cfg, keep_image=False)

  workers = workers or os.cpu_count() or 1
  previous = verification.cv2.getNumThreads()
  verification.cv2.setNumThreads(1)  # Nested thread pools contend.
  t0 = last_log = time.time()
  extract_s = verify_s = 0.0
  held = {}  # The queries of the batch, and the last one's, which may run over.
  try:
    with futures.ThreadPoolExecutor(workers) as pool:
      for done, positions in _counted(batches(query_index, batch_pairs, batch_queries)):
        t = time.time()
        qs = sorted(set(query_index[positions].tolist()))
        new = [q for q in qs if q not in held]
        held = {q: held[q] for q in qs if q in held}
        held.update(zip(new, pool.map(query_features, new), strict=True))
        rs = sorted(set(reference_index[positions].tolist()))
        # Those held first (each a hit, made most recent), then the others, so
        # that inserting these never evicts one this batch is about to read.
        batch_refs = {r: refs.get(r, None) for r in rs if r in refs.items}
        missing = [r for r in rs if r not in batch_refs]
        made = zip(missing, pool.map(reference_features, missing), strict=True)
        batch_refs.update((r, refs.get(r, lambda f=f: f)) for r, f in made)
        t1 = time.time()

        def one(pos, held=held, batch_refs=batch_refs):
          q = held[int(query_index[pos])]
          return verification.verify(q[0], batch_refs[int(reference_index[pos])], cfg, q[1])
        for pos, v in zip(positions, pool.map(one, positions), strict=True):
          verdicts[pos] = v
        last = int(query_index[positions[-1]])
        held = {last: held[last]}  # Only the last query can have pairs in the next batch.
        extract_s, verify_s = extract_s + t1 - t, verify_s + time.time() - t1
        if time.time() - last_log >= progress_seconds:
          last_log = time.time()
          log(f"  verifying: {done} of {n} pairs, {done / (last_log - t0):.1f} pairs/s")
  finally:
    verification.cv2.setNumThreads(previous)
  seconds = time.time() - t0
  return verdicts, {
      "pairs": n, "seconds": seconds, "pairs_per_second": n / max(seconds, 1e-9),
      "extract_seconds": extract_s, "verify_seconds": verify_s,
      "query_extractions": extracted["queries"],
      "reference_extractions": extracted["references"],
      "distinct_queries": int(len(np.unique(query_index))),
      "distinct_references": int(len(np.unique(reference_index))),
      "reference_cache": reference_cache, "reference_cache_max": refs.max_size,
      "batch_pairs": batch_pairs, "batch_queries": batch_queries}


def _counted(batch_iter):
  """(pairs done after the batch, the batch) of each batch."""
  done = 0
  for positions in batch_iter:
    done += len(positions)
    yield done, positions
