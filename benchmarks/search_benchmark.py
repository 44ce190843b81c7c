"""Exact k-NN search benchmark: Q queries x R references x D dims, top-k.

  python benchmarks/search_benchmark.py --num_queries 50000 \
      --num_references 1000000 --dim 256 --backends jax,faiss \
      --faiss_queries 1000

JAX times the whole query set (after one compiling call); the data and the
timing are those of `python -m asl_jax.benchmark --only search`
(asl_jax/benchmark/search.py). faiss-cpu is timed
on `--faiss_queries` queries against all references and scaled up linearly to
the full query set (exact search cost is linear in the number of queries).
The JAX results are checked against faiss on those queries.
"""

import time

import jax
import numpy as np
from absl import app, flags

from asl_jax.benchmark import search as bench_search
from asl_jax.evaluation import jax_search

_Q = flags.DEFINE_integer("num_queries", 50_000, "Queries.")
_R = flags.DEFINE_integer("num_references", 1_000_000, "References.")
_D = flags.DEFINE_integer("dim", 256, "Dimensions.")
_K = flags.DEFINE_integer("k", 10, "Neighbours per query.")
_BACKENDS = flags.DEFINE_list("backends", ["jax", "faiss"], "jax and/or faiss.")
_FQ = flags.DEFINE_integer("faiss_queries", 1000, "Queries timed with faiss.")
_QB = flags.DEFINE_integer("query_block", 4096, "JAX queries per block.")
_RB = flags.DEFINE_integer("ref_block", 1 << 20, "JAX references per block per device.")
_PREC = flags.DEFINE_list("precision", ["bf16", "highest"], "JAX search precisions: bf16 "
                          "(shortlist, exact re-ranking) and/or highest (float32).")
_CHUNK = flags.DEFINE_list("chunk", ["256"], "JAX top-k chunk sizes (0 = one wide top-k).")


def main(argv):
  del argv
  t = time.perf_counter()
  refs, queries = bench_search.random_descriptors(_Q.value, _R.value, _D.value)
  print(f"data: {_Q.value} x {_R.value} x {_D.value} float32, k={_K.value} "
        f"(generated in {time.perf_counter() - t:.1f} s)")
  nf = min(_FQ.value, _Q.value)
  check = None
  if "faiss" in _BACKENDS.value:
    import faiss  # Only here: a GPU host may have no faiss.
    index = faiss.IndexFlatIP(_D.value)
    index.add(refs)
    t = time.perf_counter()
    _, check = index.search(queries[:nf], _K.value)
    dt = time.perf_counter() - t
    print(f"faiss-cpu IndexFlatIP, {faiss.omp_get_max_threads()} threads: {nf} queries in "
          f"{dt:.2f} s -> {dt * _Q.value / nf:.1f} s for {_Q.value} queries (scaled)")
  if "jax" in _BACKENDS.value:
    print(f"jax: {jax.device_count()} x {jax.devices()[0].device_kind}")
    for prec, chunk in [(p, int(c)) for p in _PREC.value for c in _CHUNK.value]:
      t = time.perf_counter()
      ref_index = jax_search.ReferenceIndex(refs, "ip", ref_block=_RB.value, precision=prec,
                                            chunk=chunk)
      jax.block_until_ready(ref_index.refs)
      put = time.perf_counter() - t
      dt, _, idx = bench_search.timed_search(ref_index, queries, _K.value,
                                             query_block=_QB.value)  # After a compiling call.
      line = (f"jax exact, precision={prec}, chunk={chunk}: {_Q.value} queries in {dt:.3f} s "
              f"({ref_index.last_recomputed} queries re-searched in float32; references to "
              f"device {put:.2f} s once)")
      if check is not None:
        line += f"; top-{_K.value} equal to faiss on {nf} queries: " \
                f"{np.mean(idx[:nf] == check):.5f} of entries"
      print(line, flush=True)


if __name__ == "__main__":
  app.run(main)
