"""The search workload of `python -m asl_jax.benchmark`: exact top-k of Q x R x D
float32 descriptors with the project's JAX search (bfloat16 shortlist, float32
re-ranking and certificate), against the float32 scan (the exactness
reference: agreement of the top-k ids) and, where faiss is installed, faiss-cpu
(timed on at most `faiss_queries` queries and scaled up, exact search being
linear in the queries)."""

import importlib.util
import time


def timed_search(index, queries, k, **kw):
  """Seconds of the second full search (the first compiles), and its result."""
  index.search(queries, k, **kw)
  t0 = time.perf_counter()
  s, i = index.search(queries, k, **kw)
  return time.perf_counter() - t0, s, i


def random_descriptors(q: int, r: int, d: int):
  """(references [r, d], queries [q, d]): L2-normalised float32 Gaussians, seed 0."""
  import numpy as np
  from asl_jax.evaluation import search
  rs = np.random.default_rng(0)
  refs = search.l2_normalize(rs.standard_normal((r, d), np.float32))
  queries = search.l2_normalize(rs.standard_normal((q, d), np.float32))
  return refs, queries


def bench_search(qrd, k, faiss_queries=1000, precision=None, log=lambda _: None):
  """Rows of the search workload (see the module docstring); precision: the
  JAX search's (default: bf16 on accelerators, highest on CPU)."""
  import numpy as np
  from asl_jax.evaluation import jax_search
  q, r, d = qrd
  refs, queries = random_descriptors(q, r, d)
  common = {"workload": "search", "queries": q, "references": r, "dim": d, "k": k}
  exact = jax_search.ReferenceIndex(refs, "ip", precision="highest")
  exact_s, _, want = timed_search(exact, queries, k)
  del exact
  log(f"search: float32 scan {exact_s:.3f} s")
  fast = jax_search.ReferenceIndex(refs, "ip", precision=precision)
  fast_s, _, got = timed_search(fast, queries, k)
  rows = [{**common, "framework": f"asl_jax ({fast.precision}, chunk {fast.chunk})",
           "seconds": fast_s, "queries_per_s": q / fast_s,
           "top_k_agreement": float(np.mean(got == want)),
           "recomputed_queries": fast.last_recomputed, "streamed": fast.streamed,
           "agreement_against": "the float32 scan"},
          {**common, "framework": "asl_jax (float32 scan)", "seconds": exact_s,
           "queries_per_s": q / exact_s, "top_k_agreement": 1.0,
           "agreement_against": "itself"}]
  if importlib.util.find_spec("faiss") is not None:
    from asl_jax.evaluation.search import _faiss
    faiss = _faiss()
    nf = min(faiss_queries, q)
    flat = faiss.IndexFlatIP(d)
    flat.add(refs)
    t0 = time.perf_counter()
    _, f_ids = flat.search(queries[:nf], k)
    scaled = (time.perf_counter() - t0) * q / nf
    rows.append({**common, "framework": f"faiss-cpu IndexFlatIP ({faiss.omp_get_max_threads()}"
                 " threads)", "seconds": scaled, "queries_per_s": q / scaled,
                 "timed_queries": nf, "top_k_agreement": float(np.mean(f_ids == want[:nf])),
                 "agreement_against": "the float32 scan"})
  return rows
