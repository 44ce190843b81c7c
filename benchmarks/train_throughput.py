"""Training throughput of a config's update step on device-resident data.

  python benchmarks/train_throughput.py --config configs/asl.py:ndec \
      --batch_ids 32,64 --steps 30 --num_classes 100000

Prints images/second per global batch (ids x views), after compilation. The
input pipeline is left out (data already on the device), as in the PyTorch
numbers the issue compares with.
"""

import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from asl_jax import benchmark

_CONFIG = config_flags.DEFINE_config_file("config", "configs/asl.py:ndec", "Config.")
_IDS = flags.DEFINE_list("batch_ids", ["32", "64"], "Identities per batch to time.")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed steps per batch size.")
_CLASSES = flags.DEFINE_integer("num_classes", 100_000, "Classifier width.")


def build_step(config, num_classes: int):
  """The config's jitted update, a fresh state and a device-resident batch
  (asl_jax.benchmark.build_step, shared with `python -m asl_jax.benchmark`)."""
  return benchmark.build_step(config, num_classes)


def time_steps(step, state, batch, rng, *, warmup: int, steps: int):
  """Runs `warmup` untimed steps (compiling if needed), then times `steps`
  steps; returns (seconds, the last step's metrics)."""
  for _ in range(warmup):
    state, metrics = step(state, batch, rng)
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch, rng)
  jax.block_until_ready(metrics)
  return time.perf_counter() - t0, metrics


def time_batch(config, ids: int, steps: int, num_classes: int) -> float:
  config.data.ids_per_batch = ids
  update, state, batch, rng = build_step(config, num_classes)
  seconds, metrics = time_steps(update, state, batch, rng, warmup=3, steps=steps)
  assert np.isfinite(float(metrics["loss/total"]))
  return ids * config.data.views_per_id * steps / seconds


def main(argv):
  del argv
  config = _CONFIG.value
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  "
        f"model: {config.model.variant} {config.data.image_size}px "
        f"{config.model.dtype}  classes: {_CLASSES.value}  "
        f"losses: " + ", ".join(f"{n}={config.loss[n]}" for n in
                                ("classification", "triplet", "info_nce", "norm_ratio")
                                if config.loss[n]))
  print(f"{'batch (ids x views)':>22s} {'images/s':>10s}")
  for ids in map(int, _IDS.value):
    rate = time_batch(config, ids, _STEPS.value, _CLASSES.value)
    print(f"{ids:>14d} x {config.data.views_per_id:<5d} {rate:10.0f}", flush=True)


if __name__ == "__main__":
  app.run(main)
