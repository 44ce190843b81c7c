"""Memory and step time of the RS@k update against the batch size B, with a
fixed chunk: the two-pass step (gradient caching) against the one-pass one.

  python benchmarks/two_pass_memory.py --config configs/recall_surrogate.py:sym \
      --batches 64,128,256,512 --chunk 32 --steps 3

For each B (ids x views) it compiles the config's update and prints XLA's own
account of the compiled program's memory (`Compiled.memory_analysis()`: the
temporary buffers, i.e. activations and the loss's tensors, besides the
arguments and outputs, which are the state and the batch) and the step time
over --steps steps on device-resident data. The two-pass step keeps one
chunk's activations, so its temporaries should stay flat in B apart from the
B x D outputs and the loss's [chunk x B x m] tensor; the one-pass step's grow
with B.
"""

import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from asl_jax import benchmark

_CONFIG = config_flags.DEFINE_config_file("config", "configs/recall_surrogate.py:sym", "Config.")
_BATCHES = flags.DEFINE_list("batches", ["64", "128", "256", "512"], "Images per batch.")
_CHUNK = flags.DEFINE_integer("chunk", 32, "Images per chunk (two-pass) and loss queries per step.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per row (0: compile only).")


def measure(config, batch: int, chunks: int):
  config.data.ids_per_batch = batch // config.data.views_per_id
  config.train.num_chunks = chunks
  config.loss.rs_chunk = _CHUNK.value
  update, state, data, rng = benchmark.build_step(config, 1)
  compiled = update.lower(state, data, rng).compile()
  mem = compiled.memory_analysis()
  seconds = float("nan")
  if _STEPS.value:
    state, metrics = compiled(state, data, rng)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(_STEPS.value):
      state, metrics = compiled(state, data, rng)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - t0) / _STEPS.value
  return mem.temp_size_in_bytes / 2**20, mem.argument_size_in_bytes / 2**20, seconds


def main(argv):
  del argv
  config = _CONFIG.value
  c = config.data
  print(f"{jax.devices()[0].device_kind} x{jax.device_count()}; {config.model.variant} "
        f"width {config.model.width} at {c.image_size} px, {c.views_per_id} views per image, "
        f"descriptor {config.model.descriptor_dim}; {_CHUNK.value} images per chunk")
  print(f"{'B':>6} {'step':>9} {'chunks':>6} {'temp MiB':>9} {'args MiB':>9} {'s/step':>7} "
        f"{'images/s':>9}")
  for b in map(int, _BATCHES.value):
    for name, chunks in (("one-pass", 1), ("two-pass", b // _CHUNK.value)):
      temp, args, s = measure(config, b, chunks)
      print(f"{b:>6} {name:>9} {chunks:>6} {temp:>9.1f} {args:>9.1f} {s:>7.2f} "
            f"{b / s if np.isfinite(s) else float('nan'):>9.0f}", flush=True)


if __name__ == "__main__":
  app.run(main)
