"""`python -m asl_jax.benchmark` as a package (the command and its workloads are
described in `__main__.py`): `harness` (timing, rates and MFU, the table, the JSON),
`workloads` (train, input, e2e, embed), `embed_files`, `search`, `compare` (the
torch rows), `torch_model` and `torch_step` (the PyTorch side), `runner`
(`Request`, `Options`, `run`); `__main__` is the command line. Scripts in
benchmarks/ call these functions.
"""

from asl_jax.benchmark.harness import (PEAK_TFLOPS, compiled_flops, format_table, mfu,
                                       peak_tflops, percentiles, rates, time_each, write_json)
from asl_jax.benchmark.runner import WORKLOADS, Options, Request, run
from asl_jax.benchmark.workloads import build_step, prepare_data

__all__ = ["PEAK_TFLOPS", "WORKLOADS", "Options", "Request", "build_step", "compiled_flops",
           "format_table", "mfu", "peak_tflops", "percentiles", "prepare_data", "rates", "run",
           "time_each", "write_json"]
