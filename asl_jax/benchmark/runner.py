"""What a benchmark run is asked (`Request`: workloads, frameworks, search
size; `Options`: counts and sizes) and `run`, which measures the requested
workloads and returns the JSON-able results."""

import dataclasses
import importlib.util
import os
import platform
import sys
import time

from asl_jax.benchmark import harness, workloads as jax_workloads

WORKLOADS = ("train", "input", "e2e", "embed", "embed_files", "search")


class Request:
  """What was asked for, checked before any work (UserError otherwise)."""

  def __init__(self, only, compare, search=""):
    from asl_jax.errors import UserError
    self.workloads = [w.strip() for w in only if w.strip()]
    bad = [w for w in self.workloads if w not in WORKLOADS]
    if bad or not self.workloads:
      raise UserError(f"--only={','.join(only)} names {bad or 'nothing'}: the workloads are "
                      f"{', '.join(WORKLOADS)}; give a comma-separated subset, e.g. "
                      "--only=train,embed.")
    self.compare = [c.strip() for c in compare if c.strip()]
    if [c for c in self.compare if c != "torch"]:
      raise UserError(f"--compare={','.join(compare)}: the one framework compared with is "
                      "torch (--compare torch).")
    if self.compare and importlib.util.find_spec("torch") is None:
      raise UserError("--compare torch needs PyTorch, which is not installed in this "
                      f"environment ({sys.executable}). Install the extra with "
                      "`pip install -e '.[bench]'` (or torch itself), or leave --compare out "
                      "to measure asl_jax alone.")
    self.search = None
    if search:
      try:
        q, r, d = (int(x) for x in search.split(","))
        assert min(q, r, d) > 0
      except (ValueError, AssertionError):
        raise UserError(f"--search={search!r}: give three positive integers Q,R,D, e.g. "
                        "--search=2000,100000,256.") from None
      self.search = (q, r, d)


@dataclasses.dataclass
class Options:
  """Counts and sizes of a run (the command line's flags of the same names)."""
  steps: int = 20  # Timed steps per train/embed/e2e row.
  warmup: int = 3  # Untimed steps first (compilation included).
  num_classes: int = 100_000  # Classifier width, when the config classifies.
  input_workers: tuple = ()  # Worker processes of the input rows (default 0, cores/2, cores).
  input_batches: int = 20  # Timed batches per input row.
  peak_override: float = 0.0  # Peak TFLOP/s per device for the MFU (0: the table's).
  fake_train: int = 0  # For ndec/full*: a fake download of this many training images.
  fake_root: str = "/tmp/asl_bench_data"
  config_name: str = ""  # For the results: the config file and its overrides.
  overrides: tuple = ()
  k: int = 10  # Neighbours per query of the search workload.
  torch_compile: bool = True
  embed_files_images: int = 0  # Default: 16,384 on accelerators, 512 on CPU.
  embed_workers: tuple = ()  # Default: 0 and all cores; -1 = all cores.
  torch_max_autotune: bool = False


def _header(config, options: Options, peak) -> dict:
  """The run's description: devices, host, versions, config and sizes."""
  import flax
  import jax
  import jaxlib
  classes = options.num_classes if config.loss.classification > 0 else 0
  return {
      "device_kind": jax.devices()[0].device_kind, "device_count": jax.device_count(),
      "platform": jax.devices()[0].platform, "process_count": jax.process_count(),
      "host_cores": os.cpu_count(), "host": platform.node(),
      "versions": {"python": platform.python_version(), "jax": jax.__version__,
                   "jaxlib": jaxlib.__version__, "flax": flax.__version__},
      "config": options.config_name, "overrides": list(options.overrides),
      "batch": config.data.ids_per_batch * config.data.views_per_id,
      "ids_per_batch": config.data.ids_per_batch, "views_per_id": config.data.views_per_id,
      "image_size": config.data.image_size, "dtype": config.model.dtype,
      "model": config.model.variant, "num_classes": classes,
      "num_chunks": config.train.num_chunks,
      "peak_tflops_per_device": peak, "steps": options.steps, "warmup": options.warmup,
      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": []}


def _data_rows(config, request, o: Options, trained, in_memory, log) -> list:
  """The input and e2e rows (the config's dataset prepared first)."""
  builder = jax_workloads.prepare_data(config, o.fake_train, o.fake_root)
  rows = []
  if "input" in request.workloads:
    cores = os.cpu_count() or 1
    workers = ([int(w) for w in o.input_workers] if o.input_workers
               else sorted({0, max(1, cores // 2), cores}))
    log(f"input: the Grain pipeline at {workers} worker processes")
    rows.extend(jax_workloads.bench_input(config, builder, workers, o.input_batches))
  if "e2e" in request.workloads:
    log("e2e: the update fed by the pipeline")
    rows.append(jax_workloads.bench_e2e(config, builder, trained, o.steps, o.warmup,
                                        in_memory))
  return rows


def run(config, request: Request, options: Options | None = None, log=print) -> dict:
  """Measures the requested workloads; returns the JSON-able results."""
  import jax
  from asl_jax import config_check
  o = options or Options()
  config_check.validate(config, num_devices=jax.device_count())
  workloads = request.workloads
  peak = harness.peak_tflops(jax.devices()[0].device_kind, config.model.dtype, o.peak_override)
  on_cpu = jax.devices()[0].platform == "cpu"
  result = _header(config, o, peak)
  classes, rows = result["num_classes"], result["rows"]
  trained, in_memory, flops_train, flops_embed = None, None, None, None
  if "train" in workloads or "e2e" in workloads:
    log("train: compiling and timing the update on device-resident data")
    row, trained = jax_workloads.bench_train(config, classes, o.steps, o.warmup, peak)
    in_memory, flops_train = row["images_per_s"], row["model_flops_per_step_per_device"]
    if "train" in workloads:
      rows.append(row)
  if "embed" in workloads:
    log("embed: descriptor extraction")
    row = jax_workloads.bench_embed(config, o.steps, o.warmup)
    flops_embed = row["flops_per_step_per_device"]
    rows.append(row)
  if "embed_files" in workloads:
    from asl_jax.benchmark.embed_files import bench_embed_files
    n = o.embed_files_images or (512 if on_cpu else 16384)
    workers = [int(w) for w in o.embed_workers] or [0, os.cpu_count() or 1]
    log(f"embed_files: evaluation embedding of {n} JPEG files at {workers} workers")
    rows.extend(bench_embed_files(config, n, workers, log=log))
  if "input" in workloads or "e2e" in workloads:
    rows.extend(_data_rows(config, request, o, trained, in_memory, log))
  if "search" in workloads:
    qrd = request.search or ((2000, 100_000, 256) if on_cpu else (50_000, 1_000_000, 256))
    log(f"search: exact {qrd[0]} x {qrd[1]} x {qrd[2]}, top-{o.k}")
    from asl_jax.benchmark.search import bench_search
    rows.extend(bench_search(qrd, o.k, log=log))
  if request.compare:
    from asl_jax.benchmark import compare
    compare.describe(result)
    log("torch: the same model and step, eager and torch.compile")
    flops_per_device = (flops_train * jax.device_count()) if flops_train else None
    rows.extend(compare.torch_rows(config, workloads, classes, o.steps, o.warmup,
                                   flops_per_device, flops_embed, peak, o.torch_compile,
                                   o.torch_max_autotune))
    compare.add_ratios(rows)
  return result
