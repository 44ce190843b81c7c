"""Throughput of a config's Grain training pipeline on the CPU.

  python benchmarks/input_throughput.py --config configs/asl.py --workers 0
  python benchmarks/input_throughput.py --config configs/asl.py:ndec \
      --fake_train 1000 --workers 0,2

Prints two tables: the cost of decoding a training image and of each copy
edit of `data.train_edits` at the view size (ms, one process), and the views
per second of the whole pipeline (`input_pipeline.train_dataset`: decode,
crops, edit chain, batching; or, with --config.data.views_dir, reading
pre-generated views) with 0 (threads in this process) or n Grain worker
processes. Views/s per process tells how many CPU cores keep an
accelerator fed: compare with `benchmarks/train_throughput.py`.

For `ndec/full*` configs, --fake_train writes a fake download of that many
photo-like 640x480 training images (tfds_ndec.fake_layout) under --root and
prepares it there once; otherwise the config's prepared data is used (the
demo builds `ndec/synthetic` on first use).
"""

import os
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from asl_jax import benchmark, copy_edits, data, input_pipeline
from asl_jax.benchmark import workloads

_CONFIG = config_flags.DEFINE_config_file("config", "configs/asl.py", "Config.")
_WORKERS = flags.DEFINE_list("workers", ["0"], "Grain worker processes to time (0 = threads, "
                             "-1 = one per core).")
_BATCHES = flags.DEFINE_integer("batches", 40, "Timed batches per setting, after the buffers fill.")
_FAKE_TRAIN = flags.DEFINE_integer("fake_train", 0, "Fake 640x480 training images for "
                                   "ndec/full* configs (0: use the config's data).")
_ROOT = flags.DEFINE_string("root", "/tmp/asl_input_bench", "Where the fake download goes.")


def prepare(config):
  """The config's prepared data; with --fake_train, a fake download prepared under
  --root (asl_jax.benchmark.prepare_data, shared with `python -m asl_jax.benchmark`)."""
  if _FAKE_TRAIN.value and not config.data.name.startswith("ndec/full"):
    raise app.UsageError(f"--fake_train is for ndec/full* configs, not {config.data.name}.")
  return benchmark.prepare_data(config, _FAKE_TRAIN.value, _ROOT.value, log=print)


def time_ms(fn, n: int) -> float:
  t0 = time.perf_counter()
  for _ in range(n):
    fn()
  return 1e3 * (time.perf_counter() - t0) / n


def edit_table(config, train_src):
  """ms per decode and per edit, on view-sized crops of the training images."""
  d = config.data
  spec = input_pipeline.view_spec(d)
  params = {name: dict(kw) for name, kw in spec.edit_params}
  size = (d.image_size, d.image_size)
  rng = np.random.default_rng(0)
  records = [train_src[i] for i in range(min(32, len(train_src)))]
  images = [data.decode_image(r["image"], r) for r in records]
  h, w = images[0].shape[:2]
  views = [copy_edits.resize(copy_edits.crop(im, rng, tuple(d.crop_area))[0], size)
           for im in images]
  background_fn = input_pipeline.background_fn(input_pipeline.Backgrounds(train_src), -1)
  def chain(probabilities):
    return copy_edits.copy_edit_chain(
        views[rng.integers(len(views))], rng, probabilities, params=params,
        background_fn=background_fn, work_size=d.image_size)

  n = 64
  rows = [(f"decode ({w}x{h} source)",
           time_ms(lambda: data.decode_image(records[rng.integers(len(records))]["image"],
                                             {}), n), 1.0)]
  for name, p in sorted(d.train_edits.items()):
    rows.append((name, time_ms(lambda name=name: chain({name: 1.0}), n), p))
  probabilities = dict(d.train_edits)
  whole = time_ms(lambda: copy_edits.resize(np.asarray(chain(probabilities).image), size), n)
  print(f"\nCost per image at {size[0]} px (one process)")
  print(f"{'step':>26s} {'ms':>7s} {'probability':>11s} {'ms per view':>11s}")
  for name, ms, p in rows:
    print(f"{name:>26s} {ms:>7.2f} {p:>11.2f} {ms * p:>11.2f}")
  print(f"{'whole chain, as configured':>26s} {whole:>7.2f} {'':>11s} {whole:>11.2f}")


def pipeline_rate(config, train_src, pairs_src, workers: int) -> float:
  """Views/s of the pipeline at `workers` processes, past its start-up
  (asl_jax.benchmark.workloads.time_input, as the benchmark's input rows)."""
  config.data.num_workers = workers
  seconds = workloads.time_input(config, train_src, pairs_src, _BATCHES.value)
  return _BATCHES.value * config.data.ids_per_batch * config.data.views_per_id / sum(seconds)


def main(argv):
  del argv
  config = _CONFIG.value
  builder = prepare(config)
  train_src = data.train_source(builder, config.data)
  pairs_src = (data.source(builder, "train_negative_pairs")
               if config.data.pair_ids_per_batch > 0 else None)
  d = config.data
  print(f"{config.data.name}: {len(train_src)} training images; batch {d.ids_per_batch} ids x "
        f"{d.views_per_id} views of {d.image_size} px; {os.cpu_count()} CPU cores")
  if d.views_dir:
    print(f"Views read from {d.views_dir} (python -m asl_jax.pregenerate); the edit table is "
          "the cost of making them, the views/s table that of reading them.")
  edit_table(config, train_src)
  print(f"\n{'workers':>7s} {'threads':>7s} {'views/s':>8s} {'per process':>11s}")
  for w in (int(x) for x in _WORKERS.value):
    rate = pipeline_rate(config, train_src, pairs_src, w)
    w = input_pipeline.worker_processes(config.data.num_workers)
    print(f"{w:>7d} {d.num_threads:>7d} {rate:>8.0f} {rate / max(1, w):>11.0f}", flush=True)


if __name__ == "__main__":
  app.run(main)
