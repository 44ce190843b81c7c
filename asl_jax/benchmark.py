"""One command that measures a config on whatever devices JAX sees.

  python -m asl_jax.benchmark --config configs/asl.py:ndec \
      [--only train,input,e2e,embed,search] [--compare torch] [--json out.json]

Workloads:
  train   the config's jitted update on device-resident data (the number that
          compares across frameworks): images/s, step-time percentiles, the
          the step's FLOPs counted from its jaxpr (asl_jax/flops.py: model FLOPs,
          which MFU uses, and executed FLOPs with a two-pass recompute; XLA's
          cost analysis beside them), TFLOP/s and MFU;
  input   the Grain training pipeline alone (decode, crops, online edit chain;
          or pre-generated views with --config.data.views_dir) at 0, several
          and all worker processes;
  e2e     the update fed by that pipeline (config's data.num_workers), and its
          share of the in-memory rate (below 1: input-bound);
  embed   descriptor extraction at the evaluation size and batch;
  embed_files  evaluation embedding from JPEG files end to end (Grain decoding
          in 0 and W worker processes; asl_jax/bench_embed_files.py;
          --embed_files_images N, --embed_workers);
  search  exact k-NN of Q x R x D float32 descriptors: the project's JAX search
          (bfloat16 shortlist, exact float32 re-ranking), the float32 scan it
          must agree with, and faiss where installed (asl_jax/bench_search.py;
          --search Q,R,D; default 50000,1000000,256 on accelerators,
          2000,100000,256 on CPU).

--compare torch adds the same model and step in PyTorch (asl_jax/torch_reference.py)
eager and under torch.compile, timed by the same harness (train and embed), and
the table's ratio column is asl_jax / torch. torch is an optional extra
(`pip install -e '.[bench]'`). Data for input/e2e: the config's dataset
(the demo builds ndec/synthetic; for ndec/full*, --fake_train N writes and
prepares a fake download of N photo-like training images first).
"""

import importlib.util
import json
import os
import platform
import sys
import time

from absl import app, flags

from asl_jax import cli, flops

WORKLOADS = ("train", "input", "e2e", "embed", "embed_files", "search")
PEAK_TFLOPS = flops.PEAK_TFLOPS  # Dense peak TFLOP/s per chip, (bf16, fp32).


def _define_flags():
  """The command line's flags (defined when it runs, so that scripts can import
  this module with flags of their own)."""
  global _CONFIG, _ONLY, _COMPARE, _JSON, _STEPS, _WARMUP, _CLASSES, _WORKERS, _BATCHES
  global _SEARCH, _K, _PEAK, _FAKE, _FAKE_ROOT, _TORCH_COMPILE, _MULTIHOST, _EF_N, _EF_W
  global _TORCH_MAX
  _CONFIG = cli.define_config_flag()
  _ONLY = flags.DEFINE_list("only", list(WORKLOADS), f"Workloads, from {', '.join(WORKLOADS)}.")
  _COMPARE = flags.DEFINE_list("compare", [], "Frameworks to compare with: torch.")
  _JSON = flags.DEFINE_string("json", "", "Write the results here as JSON.")
  _STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per train/embed/e2e row.")
  _WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps first (compilation included).")
  _CLASSES = flags.DEFINE_integer("num_classes", 100_000,
                                  "Classifier width, when the config classifies.")
  _WORKERS = flags.DEFINE_list("input_workers", [], "Worker processes for the input rows "
                               "(default: 0, half the cores, all cores).")
  _BATCHES = flags.DEFINE_integer("input_batches", 20, "Timed batches per input row.")
  _SEARCH = flags.DEFINE_string("search", "", "Q,R,D of the search workload.")
  _K = flags.DEFINE_integer("k", 10, "Neighbours per query in the search workload.")
  _PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s per device for the MFU "
                             "(default: the table in asl_jax/benchmark.py for the dtype).")
  _FAKE = flags.DEFINE_integer("fake_train", 0, "For ndec/full* configs: write and prepare a "
                               "fake download of this many training images first.")
  _FAKE_ROOT = flags.DEFINE_string("fake_root", "/tmp/asl_bench_data", "Where --fake_train goes.")
  _TORCH_COMPILE = flags.DEFINE_bool("torch_compile", True, "With --compare torch, also time "
                                     "torch.compile (minutes of compilation on a CPU).")
  _TORCH_MAX = flags.DEFINE_bool("torch_max_autotune", False, "With --compare torch, also "
                                 "time torch.compile(mode='max-autotune') (many minutes).")
  _MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")
  _EF_N = flags.DEFINE_integer("embed_files_images", 0, "JPEGs of the embed_files workload "
                               "(default 16,384 on accelerators, 512 on CPU).")
  _EF_W = flags.DEFINE_list("embed_workers", [], "Worker processes of the embed_files rows "
                            "(default: 0 and all cores; -1 = all cores).")


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


def percentiles(seconds):
  import numpy as np
  p10, p50, p90 = np.percentile(np.asarray(seconds) * 1e3, [10, 50, 90])
  return {"p10_ms": float(p10), "p50_ms": float(p50), "p90_ms": float(p90)}


peak_tflops = flops.peak_tflops


def mfu(flops_per_step: float, step_seconds: float, peak: float | None):
  """(achieved TFLOP/s, model FLOPs utilisation) of one device."""
  achieved = flops_per_step / step_seconds / 1e12
  return achieved, (achieved / peak if peak else None)


def time_each(step, n: int, sync):
  """Seconds of each of `n` calls of `step()` (synchronised after each)."""
  out = []
  for _ in range(n):
    t0 = time.perf_counter()
    sync(step())
    out.append(time.perf_counter() - t0)
  return out


# ----------------------------------------------------------------- the jax --
def build_step(config, num_classes: int):
  """The config's jitted update on the local devices, a fresh state and one
  random device-resident batch: (update, state, batch, rng)."""
  import jax
  import numpy as np
  from asl_jax import sharding, train
  ids, k, size = config.data.ids_per_batch, config.data.views_per_id, config.data.image_size
  mesh = sharding.make_mesh()
  model, classifier = train.build_modules(config, num_classes)
  tx, schedule = train.make_optimizer(config.optim, 1000)
  state = train.init_state(model, classifier, tx, config, jax.random.key(0), mesh)
  update = train.make_update_fn(model, classifier, tx, schedule, config, mesh, state)
  rs = np.random.default_rng(0)
  amounts = np.concatenate([np.ones((ids, 1)), rs.uniform(0.2, 1, (ids, k - 1))], 1)
  batch = sharding.global_batch({
      "views": rs.integers(0, 256, (ids, k, size, size, 3), dtype=np.uint8),
      "information_amount": amounts.astype(np.float32),
      "label": rs.permutation(max(num_classes, ids))[:ids].astype(np.int32)}, mesh)
  return update, state, batch, jax.random.key(1)


def compiled_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def bench_train(config, num_classes, steps, warmup, peak):
  import jax
  update, state, batch, rng = build_step(config, num_classes)
  t0 = time.perf_counter()
  compiled = update.lower(state, batch, rng).compile()
  compile_s = time.perf_counter() - t0
  counted = flops.step_report(config, num_classes, update, state, batch, rng, compiled)
  holder = {"state": state}

  def step():
    holder["state"], metrics = compiled(holder["state"], batch, rng)
    return metrics
  for _ in range(warmup):
    jax.block_until_ready(step())
  seconds = time_each(step, steps, jax.block_until_ready)
  images = config.data.ids_per_batch * config.data.views_per_id
  row = {"workload": "train", "framework": "asl_jax", "batch": images,
         "compile_s": compile_s, **counted,
         "flops_per_step_per_device": counted["model_flops_per_step_per_device"],
         **_rates(images, seconds, counted["model_flops_per_step_per_device"], peak)}
  return row, (compiled, holder["state"], rng)


def _rates(images, seconds, flop=None, peak=None):
  import numpy as np
  t = percentiles(seconds)
  row = {"images_per_s": images / float(np.median(seconds)), **t}
  if flop and np.isfinite(flop):
    row["tflops_per_s"], row["mfu"] = mfu(flop, float(np.median(seconds)), peak)
  return row


def bench_embed(config, steps, warmup):
  import jax
  import numpy as np
  from asl_jax import sharding, train
  from asl_jax.evaluation import embedding
  size = embedding.embedding_size(config)
  mesh = sharding.make_mesh()
  model, _ = train.build_modules(config, 1)
  config_state = train.init_state(model, None, train.make_optimizer(config.optim, 10)[0],
                                  config, jax.random.key(0), mesh)
  embed = embedding.make_embed_fn(model, mesh, config.eval.flip_average)
  n = max(config.eval.batch_size // jax.device_count(), 1) * jax.device_count()
  images = sharding.global_batch(
      np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8), mesh)
  params, stats = config_state.params["model"], config_state.batch_stats
  t0 = time.perf_counter()
  compiled = embed.lower(params, stats, images).compile()
  compile_s = time.perf_counter() - t0
  counted = flops.count_fn(embed, params, stats, images).total / jax.device_count()
  call = lambda: compiled(params, stats, images)
  for _ in range(warmup):
    jax.block_until_ready(call())
  seconds = time_each(call, steps, jax.block_until_ready)
  return {"workload": "embed", "framework": "asl_jax", "batch": n, "image_size": size,
          "compile_s": compile_s, "flops_per_step_per_device": counted,
          "xla_cost_analysis_flops_per_step_per_device": compiled_flops(compiled),
          **_rates(n, seconds, counted, None)}


def prepare_data(config, fake_train: int, root: str):
  from asl_jax import data
  if fake_train and config.data.name.startswith("ndec/full"):
    import shutil
    from tfds_ndec import fake_layout
    layout = fake_layout.FakeLayout(
        num_train=fake_train, num_references=20, num_queries=10, num_copies=5,
        num_pairs=max(4, fake_train // 20), num_dev_queries=4, num_dev_copies=2,
        width=640, height=480)
    if fake_layout.write_once(os.path.join(root, "manual"), layout, workers=os.cpu_count()):
      shutil.rmtree(os.path.join(root, "data"), ignore_errors=True)
    config.data.update(data_dir=os.path.join(root, "data"),
                       manual_dir=os.path.join(root, "manual"), train_every=1)
  return data.prepare(config.data, log=lambda _: None)


def _sources(config, builder):
  from asl_jax import data
  train_src = data.train_source(builder, config.data)
  pairs = (data.source(builder, "train_negative_pairs")
           if config.data.pair_ids_per_batch > 0
           and "train_negative_pairs" in builder.info.splits else None)
  return train_src, pairs


def bench_input(config, builder, workers_list, batches):
  import jax
  from asl_jax import input_pipeline
  train_src, pairs = _sources(config, builder)
  rows = []
  views = config.data.ids_per_batch * config.data.views_per_id
  for w in workers_list:
    c = config.copy_and_resolve_references()
    c.data.num_workers = w
    it = iter(input_pipeline.train_dataset(
        train_src, pairs, c.data, seed=0, process_index=jax.process_index(),
        process_count=jax.process_count()))
    warm = max(4, c.data.num_threads) + 2 * input_pipeline.worker_processes(c.data) + 2
    for _ in range(warm):
      next(it)
    seconds = time_each(lambda it=it: next(it), batches, lambda _: None)
    if hasattr(it, "close"):
      it.close()
    rows.append({"workload": "input", "framework": "grain",
                 "source": "pre-generated views" if c.data.get("views_dir") else "online edits",
                 "workers": input_pipeline.worker_processes(c.data),
                 "threads": c.data.num_threads, "batch": views // jax.process_count(),
                 "images_per_s": views // jax.process_count() * batches / sum(seconds),
                 **percentiles(seconds)})
  return rows


def bench_e2e(config, builder, trained, steps, warmup, in_memory_rate):
  import jax
  from asl_jax import input_pipeline, sharding
  update, state, rng = trained
  train_src, pairs = _sources(config, builder)
  it = iter(input_pipeline.train_dataset(
      train_src, pairs, config.data, seed=0, process_index=jax.process_index(),
      process_count=jax.process_count()))
  mesh = sharding.make_mesh()
  holder = {"state": state}

  def step():
    holder["state"], metrics = update(holder["state"], sharding.global_batch(next(it), mesh),
                                      rng)
    return metrics
  for _ in range(warmup + max(4, config.data.num_threads)):
    jax.block_until_ready(step())
  seconds = time_each(step, steps, jax.block_until_ready)
  if hasattr(it, "close"):
    it.close()
  images = config.data.ids_per_batch * config.data.views_per_id
  row = {"workload": "e2e", "framework": "asl_jax", "batch": images,
         "workers": input_pipeline.worker_processes(config.data),
         **_rates(images, seconds)}
  if in_memory_rate:
    row["share_of_in_memory"] = row["images_per_s"] / in_memory_rate
  return row


# --------------------------------------------------------------- the torch --
def _torch_train(config, num_classes, device, compiled, steps, warmup, sync, flop, peak):
  import numpy as np
  import torch
  from asl_jax import torch_reference
  ids, k, size = config.data.ids_per_batch, config.data.views_per_id, config.data.image_size
  rs = np.random.default_rng(0)
  step = torch_reference.Step(config, num_classes, device, compile=compiled)
  views = torch.from_numpy(rs.integers(0, 256, (ids, k, size, size, 3), dtype=np.uint8)
                           ).to(device)
  amounts = torch.from_numpy(np.concatenate(
      [np.ones((ids, 1)), rs.uniform(0.2, 1, (ids, k - 1))], 1).astype(np.float32)).to(device)
  labels = torch.from_numpy(rs.permutation(max(num_classes, ids))[:ids]).to(device)
  call = lambda: step(views, amounts, labels)
  t0 = time.perf_counter()
  for _ in range(warmup):
    sync(call())
  warm_s = time.perf_counter() - t0
  seconds = time_each(call, steps, sync)
  return {"batch": ids * k, "warmup_s": warm_s, **_rates(ids * k, seconds, flop, peak)}


def _torch_embed(config, device, compiled, steps, warmup, sync, flop):
  import numpy as np
  import torch
  from asl_jax import torch_reference
  from asl_jax.evaluation import embedding
  size = embedding.embedding_size(config)
  n = config.eval.batch_size
  embed = torch_reference.embedder(config, device, compile=compiled)
  images = torch.from_numpy(np.random.default_rng(0).integers(
      0, 256, (n, size, size, 3), dtype=np.uint8)).to(device)
  if config.eval.flip_average:  # The same work as the JAX side: the image and its mirror.
    call = lambda: (embed(images), embed(torch.flip(images, (2,))))
  else:
    call = lambda: embed(images)
  for _ in range(warmup):
    sync(call())
  seconds = time_each(call, steps, sync)
  return {"batch": n, "image_size": size, **_rates(n, seconds, flop, None)}


def torch_rows(config, workloads, num_classes, steps, warmup, flops_train, flops_embed, peak,
               with_compile=True, max_autotune=False):
  """The train and embed rows of PyTorch, eager, (with_compile) under
  torch.compile's default mode and (max_autotune) its max-autotune mode; a
  failure is a row with its error, not the end of the run."""
  import torch
  device = "cuda" if torch.cuda.is_available() else "cpu"
  sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)
  rows = []
  modes = [False] + (["default"] if with_compile else []) + (
      ["max-autotune"] if max_autotune else [])
  for compiled in modes:
    name = {False: "torch eager", "default": "torch.compile",
            "max-autotune": "torch.compile max-autotune"}[compiled]
    jobs = []
    if "train" in workloads:
      jobs.append(("train", lambda c=compiled: _torch_train(
          config, num_classes, device, c, steps, warmup, sync, flops_train, peak)))
    if "embed" in workloads:
      jobs.append(("embed", lambda c=compiled: _torch_embed(
          config, device, c, steps, warmup, sync, flops_embed)))
    for workload, job in jobs:
      try:
        rows.append({"workload": workload, "framework": name, **job()})
      except Exception as e:  # noqa: BLE001 - reported in the table, not fatal.
        first = str(e).splitlines()[0] if str(e) else ""
        rows.append({"workload": workload, "framework": name,
                     "error": f"{type(e).__name__}: {first}"})
  return rows


# -------------------------------------------------------------------- run --
def run(config, request: Request, *, steps=20, warmup=3, num_classes=100_000,
        input_workers=None, input_batches=20, peak_override=0.0, fake_train=0,
        fake_root="/tmp/asl_bench_data", config_name="", overrides=(), k=10,
        torch_compile=True, embed_files_images=0, embed_workers=(), torch_max_autotune=False,
        log=print) -> dict:
  """Measures the requested workloads; returns the JSON-able results."""
  import flax
  import jax
  import jaxlib
  from asl_jax import config_check
  config_check.validate(config, num_devices=jax.device_count())
  workloads = request.workloads
  device_kind = jax.devices()[0].device_kind
  peak = peak_tflops(device_kind, config.model.dtype, peak_override)
  on_cpu = jax.devices()[0].platform == "cpu"
  classes = num_classes if config.loss.classification > 0 else 0
  result = {
      "device_kind": device_kind, "device_count": jax.device_count(),
      "platform": jax.devices()[0].platform, "process_count": jax.process_count(),
      "host_cores": os.cpu_count(), "host": platform.node(),
      "versions": {"python": platform.python_version(), "jax": jax.__version__,
                   "jaxlib": jaxlib.__version__, "flax": flax.__version__},
      "config": config_name, "overrides": list(overrides),
      "batch": config.data.ids_per_batch * config.data.views_per_id,
      "ids_per_batch": config.data.ids_per_batch, "views_per_id": config.data.views_per_id,
      "image_size": config.data.image_size, "dtype": config.model.dtype,
      "model": config.model.variant, "num_classes": classes,
      "num_chunks": config.train.get("num_chunks", 1),
      "peak_tflops_per_device": peak, "steps": steps, "warmup": warmup,
      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": []}
  rows = result["rows"]
  trained, in_memory, flops_train, flops_embed = None, None, None, None
  if "train" in workloads or "e2e" in workloads:
    log("train: compiling and timing the update on device-resident data")
    row, trained = bench_train(config, classes, steps, warmup, peak)
    in_memory, flops_train = row["images_per_s"], row["model_flops_per_step_per_device"]
    if "train" in workloads:
      rows.append(row)
  if "embed" in workloads:
    log("embed: descriptor extraction")
    row = bench_embed(config, steps, warmup)
    flops_embed = row["flops_per_step_per_device"]
    rows.append(row)
  if "embed_files" in workloads:
    from asl_jax.bench_embed_files import bench_embed_files
    n = embed_files_images or (512 if on_cpu else 16384)
    workers = [int(w) for w in embed_workers] or [0, os.cpu_count() or 1]
    log(f"embed_files: evaluation embedding of {n} JPEG files at {workers} workers")
    rows.extend(bench_embed_files(config, n, workers, log=log))
  if "input" in workloads or "e2e" in workloads:
    builder = prepare_data(config, fake_train, fake_root)
    if "input" in workloads:
      cores = os.cpu_count() or 1
      workers = ([int(w) for w in input_workers] if input_workers
                 else sorted({0, max(1, cores // 2), cores}))
      log(f"input: the Grain pipeline at {workers} worker processes")
      rows.extend(bench_input(config, builder, workers, input_batches))
    if "e2e" in workloads:
      log("e2e: the update fed by the pipeline")
      rows.append(bench_e2e(config, builder, trained, steps, warmup, in_memory))
  if "search" in workloads:
    qrd = request.search or ((2000, 100_000, 256) if on_cpu else (50_000, 1_000_000, 256))
    log(f"search: exact {qrd[0]} x {qrd[1]} x {qrd[2]}, top-{k}")
    from asl_jax.bench_search import bench_search
    rows.extend(bench_search(qrd, k, log=log))
  if request.compare:
    import torch
    from asl_jax import torch_reference
    result["versions"]["torch"] = torch.__version__
    result["computes"] = torch_reference.COMPUTES
    result["differences"] = torch_reference.DIFFERENCES
    result["tf32"] = ("allowed on both sides: JAX's default matmul precision lets XLA use TF32 "
                      "for float32 dots and convolutions on GPUs; torch sets "
                      "backends.cuda.matmul.allow_tf32 and cudnn.allow_tf32 (most work is "
                      "bf16 either way)")
    result["grad_norm_computed"] = {"asl_jax": True, "torch": True}
    log("torch: the same model and step, eager and torch.compile")
    flops_per_device = (flops_train * jax.device_count()) if flops_train else None
    rows.extend(torch_rows(config, workloads, classes, steps, warmup, flops_per_device,
                           flops_embed, peak, torch_compile, torch_max_autotune))
    for row in rows:
      if row.get("framework", "").startswith("torch") and "images_per_s" in row:
        mine = next((r for r in rows if r["workload"] == row["workload"]
                     and r["framework"] == "asl_jax"), None)
        if mine:
          row["asl_jax_over_this"] = mine["images_per_s"] / row["images_per_s"]
  return result


def format_table(result: dict) -> str:
  head = (f"{result['device_count']} x {result['device_kind']} ({result['host_cores']} host "
          f"cores); {result['config']} {' '.join(result['overrides'])}; batch "
          f"{result['batch']} at {result['image_size']} px, {result['dtype']}, "
          f"{result['model']}; {result['date']}")
  lines = [head, f"{'workload':<8} {'what':<34} {'batch':>6} {'rate':>12} {'p10 ms':>8} "
           f"{'p50 ms':>8} {'p90 ms':>8} {'TFLOP/s':>8} {'MFU':>6} {'ratio':>7}"]
  f = lambda v, fmt: (fmt % v) if isinstance(v, (int, float)) else "-"
  for r in result["rows"]:
    what = r["framework"]
    if r["workload"] == "input":
      what = f"{r['source']}, {r['workers']} workers"
    if r["workload"] == "e2e":
      what = f"fed by Grain, {r['workers']} workers"
    if r["workload"] == "embed_files":
      what = f"JPEG files, {r['workers']} workers"
    if "error" in r:
      lines.append(f"{r['workload']:<8} {what:<34} failed: {r['error']}")
      continue
    if r["workload"] == "search":
      rate = f"{r['queries_per_s']:.0f} q/s"
      lines.append(f"{r['workload']:<8} {what[:34]:<34} {'':>6} {rate:>12} "
                   f"{r['seconds'] * 1e3:>8.0f} {'':>8} {'':>8} {'':>8} {'':>6} "
                   f"agree {r['top_k_agreement']:.4f}")
      continue
    ratio = r.get("asl_jax_over_this", r.get("share_of_in_memory"))
    lines.append(f"{r['workload']:<8} {what[:34]:<34} {r['batch']:>6} "
                 f"{r['images_per_s']:>8.1f} im/s {f(r.get('p10_ms'), '%.1f'):>8} "
                 f"{f(r.get('p50_ms'), '%.1f'):>8} {f(r.get('p90_ms'), '%.1f'):>8} "
                 f"{f(r.get('tflops_per_s'), '%.3f'):>8} {f(r.get('mfu'), '%.3f'):>6} "
                 f"{f(ratio, '%.2f'):>7}")
  lines.append("ratio: asl_jax / torch on torch rows; e2e: share of the in-memory train rate. "
               "search rows: p10 column = seconds x 1000 for all queries.")
  return "\n".join(lines)


def main(argv):
  del argv
  from asl_jax.errors import UserError
  try:
    request = Request(_ONLY.value, _COMPARE.value, _SEARCH.value)
    _check_counts_and_output(_STEPS.value, _WARMUP.value, _BATCHES.value, _JSON.value)
    import jax
    if _MULTIHOST.value:
      cli.initialize_multihost()
    overrides = [a for a in sys.argv[1:] if a.startswith("--config.")]
    result = run(_CONFIG.value, request, steps=_STEPS.value, warmup=_WARMUP.value,
                 num_classes=_CLASSES.value, input_workers=_WORKERS.value,
                 input_batches=_BATCHES.value, peak_override=_PEAK.value,
                 fake_train=_FAKE.value, fake_root=_FAKE_ROOT.value,
                 config_name=flags.FLAGS["config"].config_filename, overrides=overrides,
                 k=_K.value, torch_compile=_TORCH_COMPILE.value,
                 embed_files_images=_EF_N.value, embed_workers=_EF_W.value,
                 torch_max_autotune=_TORCH_MAX.value,
                 log=lambda m: print(m, file=sys.stderr, flush=True)
                 if jax.process_index() == 0 else None)
  except UserError as e:
    cli.fail(str(e))
  if jax.process_index() == 0:
    print(format_table(result), flush=True)
    if _JSON.value:
      with open(_JSON.value, "w") as f:
        json.dump(result, f, indent=1)


def _check_counts_and_output(steps: int, warmup: int, batches: int, json_path: str):
  """Before compiling anything: timed counts that can be timed, a --json that can be written."""
  from asl_jax import paths
  from asl_jax.errors import UserError
  for flag, value, low in (("--steps", steps, 1), ("--warmup", warmup, 0),
                           ("--input_batches", batches, 1)):
    if value < low:
      raise UserError(f"{flag}={value}: give at least {low} (a rate needs timed steps).")
  if json_path:
    paths.output_file(json_path, "--json", "the results")


def run_cli():
  _define_flags()
  cli.help_exits_zero(sys.argv[1:])
  cli.check_overrides(sys.argv[1:])
  flags.mark_flags_as_required(["config"])
  app.run(main)


if __name__ == "__main__":
  run_cli()
