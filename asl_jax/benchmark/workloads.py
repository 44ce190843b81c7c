"""The JAX workloads of `python -m asl_jax.benchmark`: the config's update on
device-resident data (train), descriptor extraction (embed), the Grain training
pipeline alone (input) and the update fed by it (e2e). Each returns the rows of
the results table (see `asl_jax.benchmark`'s docstring for what they measure)."""

import os
import time

from asl_jax import flops
from asl_jax.benchmark.harness import compiled_flops, percentiles, rates, time_each


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


def bench_train(config, num_classes, steps, warmup, peak):
  """The train row, and (compiled update, state after the timed steps, rng) for e2e."""
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
         **rates(images, seconds, counted["model_flops_per_step_per_device"], peak)}
  return row, (compiled, holder["state"], rng)


def bench_embed(config, steps, warmup):
  """The embed row: the jitted embedding of one evaluation batch at the evaluation size."""
  import jax
  import numpy as np
  from asl_jax import sharding, train
  from asl_jax.evaluation import embedding
  size = embedding.embedding_size(config)
  mesh = sharding.make_mesh()
  model, _ = train.build_modules(config, 1)
  config_state = train.init_state(model, None, train.make_optimizer(config.optim, 10)[0],
                                  config, jax.random.key(0), mesh)
  embed = embedding.make_embed_fn(model, mesh, config.eval)
  n = max(config.eval.batch_size // jax.device_count(), 1) * jax.device_count()
  host = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
  # With eval.gate_sizes the embedding also takes the images at each gate side.
  images = sharding.global_batch(
      (host, *embedding.gate_inputs(host, embedding.gate_sizes(config.eval))), mesh)
  params, stats = config_state.params["model"], config_state.batch_stats
  t0 = time.perf_counter()
  compiled = embed.lower(params, stats, *images).compile()
  compile_s = time.perf_counter() - t0
  counted = flops.count_fn(embed, params, stats, *images).total / jax.device_count()
  call = lambda: compiled(params, stats, *images)
  for _ in range(warmup):
    jax.block_until_ready(call())
  seconds = time_each(call, steps, jax.block_until_ready)
  return {"workload": "embed", "framework": "asl_jax", "batch": n, "image_size": size,
          "compile_s": compile_s, "flops_per_step_per_device": counted,
          "xla_cost_analysis_flops_per_step_per_device": compiled_flops(compiled),
          **rates(n, seconds, counted, None)}


def prepare_data(config, fake_train: int, root: str, log=lambda _: None):
  """The config's prepared dataset builder; for ndec/full* configs with
  `fake_train`, a fake download of that many photo-like training images written
  under `root` once and prepared there (the config's data paths are set to it)."""
  from asl_jax import data
  if fake_train and config.data.name.startswith("ndec/full"):
    import shutil
    from tfds_ndec import fake_layout
    layout = fake_layout.FakeLayout(
        num_train=fake_train, num_references=20, num_queries=10, num_copies=5,
        num_pairs=max(4, fake_train // 20), num_dev_queries=4, num_dev_copies=2,
        width=640, height=480)
    if fake_layout.write_once(os.path.join(root, "manual"), layout, workers=os.cpu_count()):
      shutil.rmtree(os.path.join(root, "data"), ignore_errors=True)  # Prepared from the old one.
    config.data.update(data_dir=os.path.join(root, "data"),
                       manual_dir=os.path.join(root, "manual"), train_every=1)
  return data.prepare(config.data, log=log)


def sources(config, builder):
  """(training source, negative-pairs source or None) of a prepared builder."""
  from asl_jax import data
  train_src = data.train_source(builder, config.data)
  pairs = (data.source(builder, "train_negative_pairs")
           if config.data.pair_ids_per_batch > 0
           and "train_negative_pairs" in builder.info.splits else None)
  return train_src, pairs


def input_iterator(config, train_src, pairs):
  """The training pipeline's batch iterator for this process."""
  import jax
  from asl_jax import input_pipeline
  return iter(input_pipeline.train_dataset(
      train_src, pairs, config.data, seed=0, process_index=jax.process_index(),
      process_count=jax.process_count()))


def time_input(config, train_src, pairs, batches: int):
  """Seconds of each of `batches` batches of the pipeline, once its buffers are
  full (the reader's prefetch, one batch per thread, and the workers')."""
  from asl_jax import input_pipeline
  it = input_iterator(config, train_src, pairs)
  workers = input_pipeline.worker_processes(config.data.num_workers)
  warm = max(4, config.data.num_threads) + 2 * workers + 2
  for _ in range(warm):
    next(it)
  seconds = time_each(lambda: next(it), batches, lambda _: None)
  if hasattr(it, "close"):
    it.close()
  return seconds


def bench_input(config, builder, workers_list, batches):
  """One input row per worker count: the pipeline's views/s on this process."""
  import jax
  from asl_jax import input_pipeline
  train_src, pairs = sources(config, builder)
  rows = []
  views = config.data.ids_per_batch * config.data.views_per_id
  for w in workers_list:
    c = config.copy_and_resolve_references()
    c.data.num_workers = w
    seconds = time_input(c, train_src, pairs, batches)
    rows.append({"workload": "input", "framework": "grain",
                 "source": "pre-generated views" if c.data.views_dir else "online edits",
                 "workers": input_pipeline.worker_processes(c.data.num_workers),
                 "threads": c.data.num_threads, "batch": views // jax.process_count(),
                 "images_per_s": views // jax.process_count() * batches / sum(seconds),
                 **percentiles(seconds)})
  return rows


def bench_e2e(config, builder, trained, steps, warmup, in_memory_rate):
  """The e2e row: the compiled update fed by the pipeline, and its share of the
  in-memory rate."""
  import jax
  from asl_jax import input_pipeline, sharding
  update, state, rng = trained
  it = input_iterator(config, *sources(config, builder))
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
         "workers": input_pipeline.worker_processes(config.data.num_workers),
         **rates(images, seconds)}
  if in_memory_rate:
    row["share_of_in_memory"] = row["images_per_s"] / in_memory_rate
  return row
