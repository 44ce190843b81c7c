"""Candidate search: k nearest references per query, and score normalisation
(the gate and the other decisions: evaluation/decisions.py).

Exact search is faiss's on the CPU (`IndexFlatIP` on L2-normalised
descriptors, so the score is the cosine similarity) and the project's JAX
search on accelerators (asl_jax/evaluation/jax_search.py), or wherever faiss
is not installed: faiss is imported only when used.
"""

import dataclasses

import numpy as np


def _faiss():
  """faiss, imported on first use (a GPU host may run without it)."""
  import logging
  # faiss's loader logs each CPU-specific build it could not load (three
  # ModuleNotFoundError lines under absl's INFO logging): noise, not errors.
  logging.getLogger("faiss.loader").setLevel(logging.WARNING)
  try:
    import faiss
  except ImportError:
    from asl_jax.errors import UserError
    raise UserError("This step needs faiss (faiss-cpu), which is not installed here: "
                    "`pip install faiss-cpu`, or use the JAX search (backend='jax', "
                    "the default on accelerators and without faiss).") from None
  return faiss


def default_backend() -> str:
  """"faiss" on a CPU host with faiss installed, else "jax"."""
  import importlib.util
  import jax
  if jax.default_backend() == "cpu" and importlib.util.find_spec("faiss") is not None:
    return "faiss"
  return "jax"


@dataclasses.dataclass
class Candidates:
  """Flat list of (query index, reference index, score) candidate pairs."""
  query_index: np.ndarray      # int64 [M]
  reference_index: np.ndarray  # int64 [M]
  score: np.ndarray            # float32 [M]

  def select(self, keep: np.ndarray) -> "Candidates":
    return Candidates(self.query_index[keep], self.reference_index[keep],
                      self.score[keep])

  def __len__(self):
    return len(self.score)


def l2_normalize(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _to_candidates(scores: np.ndarray, indices: np.ndarray) -> Candidates:
  nq, k = indices.shape
  q = np.repeat(np.arange(nq), k)
  keep = indices.reshape(-1) >= 0
  return Candidates(q[keep], indices.reshape(-1)[keep].astype(np.int64),
                    scores.reshape(-1)[keep].astype(np.float32))


def _faiss_knn(queries, references, k, metric, index_spec, nprobe, rerank):
  faiss = _faiss()
  d = references.shape[1]
  faiss_metric = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}[metric]
  if index_spec == "Flat":
    index = faiss.IndexFlat(d, faiss_metric)
    index.add(references)
    dist, idx = index.search(queries, k)
    return (dist if metric == "ip" else -dist), idx
  # Approximate index for large reference sets, then exact re-ranking of its
  # `rerank * k` candidates so the returned scores are exact.
  index = faiss.index_factory(d, index_spec, faiss_metric)
  index.train(references)
  index.add(references)
  try:
    faiss.extract_index_ivf(index).nprobe = nprobe
  except RuntimeError:
    pass  # Not an IVF index.
  _, cand = index.search(queries, min(k * rerank, len(references)))
  safe = np.where(cand >= 0, cand, 0)
  vecs = references[safe]                                  # [nq, c, d]
  s = np.einsum("qd,qcd->qc", queries, vecs)
  if metric == "l2":
    s = 2 * s - (vecs ** 2).sum(-1) - (queries ** 2).sum(-1, keepdims=True)
  s = np.where(cand >= 0, s, -np.inf)
  order = np.argsort(-s, axis=1, kind="stable")[:, :k]
  idx = np.take_along_axis(cand, order, 1)
  return np.take_along_axis(s, order, 1), np.where(np.isfinite(
      np.take_along_axis(s, order, 1)), idx, -1)


def search(queries: np.ndarray, references: np.ndarray, *, k: int = 10,
           metric: str = "ip", backend: str = "auto", index: str = "Flat",
           nprobe: int = 16, rerank: int = 10,
           global_budget: int | None = None) -> Candidates:
  """Candidate (query, reference, score) pairs, behind one function.

  Args:
    queries, references: descriptors [nq, d], [nr, d].
    k: nearest references per query (the per-query mode).
    metric: "ip" (score = inner product) or "l2" (score = -squared distance,
      as the ISC descriptor track scores).
    backend: "faiss" (CPU), "jax" (exact, on the accelerator, references
      sharded over the devices) or "auto" (`default_backend()`).
    index: faiss index: "Flat" (exact) or an index-factory string such as
      "IVF1024,PQ32x4fs" whose candidates are re-ranked exactly.
    nprobe, rerank: IVF probes; candidates kept per result for re-ranking.
    global_budget: if set, return instead the `global_budget` best pairs over
      all queries (the official descriptor-track protocol uses 10 x number of
      queries), exact up to ties at the cut.
  """
  queries = np.ascontiguousarray(queries, np.float32)
  references = np.ascontiguousarray(references, np.float32)
  if queries.shape[1] != references.shape[1]:
    raise ValueError(f"Query descriptors have {queries.shape[1]} dimensions "
                     f"but references have {references.shape[1]}.")
  if metric not in ("ip", "l2"):
    raise ValueError(f"metric must be 'ip' or 'l2', got {metric!r}.")
  if backend == "auto":
    backend = "faiss" if index != "Flat" else default_backend()
  if backend == "jax":
    from asl_jax.evaluation import jax_search
    ref_index = jax_search.ReferenceIndex(references, metric)
    knn_fn = lambda kk: ref_index.search(queries, kk)
  elif backend == "faiss":
    knn_fn = lambda kk: _faiss_knn(queries, references, kk, metric, index,
                                   nprobe, rerank)
  else:
    raise ValueError(f"backend must be 'faiss' or 'jax', got {backend!r}.")
  if global_budget is None:
    return _to_candidates(*knn_fn(min(k, len(references))))
  # Global budget: per-query top-K, then the best `global_budget` overall. If
  # some query had all K of its candidates selected, a deeper one might be
  # missing: redo with a larger K (exact, since lists are sorted).
  kk = min(max(16, 2 * global_budget // max(len(queries), 1)), len(references))
  while True:
    cands = _to_candidates(*knn_fn(kk))
    top = np.argsort(-cands.score, kind="stable")[:global_budget]
    counts = np.bincount(cands.query_index[top], minlength=len(queries))
    if counts.max(initial=0) < kk or kk == len(references):
      return cands.select(np.sort(top))
    kk = min(kk * 4, len(references))


def pca_whitening(train: np.ndarray, dim: int):
  """A faiss PCA-whitening (eigen power -0.5) to `dim` dimensions, learned on
  training descriptors only (never on references); returns x -> L2-normalised
  projection."""
  train = np.ascontiguousarray(train, np.float32)
  if dim > train.shape[1] or dim > len(train):
    raise ValueError(f"PCA to {dim} dimensions needs at least {dim} training "
                     f"descriptors of at least {dim} dimensions; got {train.shape}.")
  pca = _faiss().PCAMatrix(train.shape[1], dim, -0.5)
  pca.train(train)
  return lambda x: l2_normalize(pca.apply(np.ascontiguousarray(x, np.float32)))


def score_normalization_bias(queries: np.ndarray, background: np.ndarray,
                             method: str, n: int, n_end: int, factor: float
                             ) -> np.ndarray:
  """Per-query bias subtracted from every score of that query.

  The background set is the training set, never the references (the ISC
  rules score each reference independently). With s_i the query's i-th
  highest inner product with the background (1-based):
    "sscd": factor * mean(s_n .. s_n_end)   (SSCD eq. 8: β = 1, n = 1, n_end = 3)
    "isc":  factor * s_n                    (ISC script: factor 2, n = 10)
  """
  if method not in ("sscd", "isc"):
    raise ValueError(f"Unknown score normalisation {method!r}; use 'none', "
                     "'sscd' or 'isc'.")
  last = n if method == "isc" else n_end
  if not 1 <= n <= last <= len(background):
    raise ValueError(f"Score normalisation needs 1 <= n <= n_end <= {len(background)} "
                     f"background images; got n={n}, n_end={n_end}.")
  cands = search(queries, background, k=last)  # Each query's `last` best, best first.
  sims = cands.score.reshape(len(queries), last)
  return factor * sims[:, n - 1:last].mean(axis=1)


def normalized_scores(candidates: Candidates, queries: np.ndarray, background: np.ndarray,
                      method: str, n: int, n_end: int, factor: float) -> np.ndarray:
  """The candidates' scores less their query's `score_normalization_bias`
  (background: the training descriptors, never the references)."""
  bias = score_normalization_bias(queries, background, method, n, n_end, factor)
  return candidates.score - bias[candidates.query_index]
