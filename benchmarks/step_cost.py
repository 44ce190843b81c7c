"""What XLA's compiler says one update step costs, per model setting.

  python benchmarks/step_cost.py --config configs/asl.py:ndec \
      --settings baseline,wave_block,ghost_bn,now --timed_steps 0

For each setting it compiles the config's update step on the local devices
and prints the compiled program's floating-point operations and bytes
accessed (`Compiled.cost_analysis()`), and, with --timed_steps, images per
second over that many steps on device-resident data. The settings switch the
paper recipe's training-only parts on one by one, so that their cost can be
read without an accelerator (the byte counts are the backend's own: compare
them on one backend, not across backends).
"""

import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from asl_jax import sharding, train

_CONFIG = config_flags.DEFINE_config_file("config", "configs/asl.py:ndec", "Config.")
_IDS = flags.DEFINE_integer("batch_ids", 32, "Identities per batch.")
_CLASSES = flags.DEFINE_integer("num_classes", 100_000, "Classifier width.")
_TIMED = flags.DEFINE_integer("timed_steps", 0, "Steps to time per setting (0: compile only).")
_SETTINGS = flags.DEFINE_list(
    "settings", ["baseline", "wave_block", "ghost_bn", "now"],
    "Model settings to compare, each on top of the one before it.")

# Each setting's model fields; "now" is the config as given.
SETTINGS = {
    "baseline": dict(wave_block=False, bn_groups=1, shard_classifier=False),
    "wave_block": dict(wave_block=True, bn_groups=1, shard_classifier=False),
    "ghost_bn": dict(wave_block=True, bn_groups=4, shard_classifier=False),
    "now": {},
}


def step_cost(config, num_classes: int, timed_steps: int) -> dict[str, float]:
  """Compiles the update step; returns its GFLOP, GB accessed, compile
  seconds and (when timed) images/s."""
  ids, k, size = config.data.ids_per_batch, config.data.views_per_id, config.data.image_size
  mesh = sharding.make_mesh()
  model, classifier = train.build_modules(config, num_classes)
  tx, schedule = train.make_optimizer(config.optim, 1000)
  state = train.init_state(model, classifier, tx, config, jax.random.key(0), mesh)
  update = train.make_update_fn(model, classifier, tx, schedule, config, mesh, state)
  rs = np.random.default_rng(0)
  batch = sharding.global_batch({
      "views": rs.integers(0, 256, (ids, k, size, size, 3), dtype=np.uint8),
      "information_amount": rs.uniform(0.2, 1, (ids, k)).astype(np.float32),
      "label": rs.integers(0, num_classes, ids).astype(np.int32)}, mesh)
  rng = jax.random.key(1)
  t0 = time.perf_counter()
  compiled = update.lower(state, batch, rng).compile()
  result = {"compile_s": time.perf_counter() - t0}
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  result["gflop"] = cost.get("flops", float("nan")) / 1e9
  result["gb_accessed"] = cost.get("bytes accessed", float("nan")) / 1e9
  if timed_steps:
    for _ in range(2):  # Warm up.
      state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(timed_steps):
      state, metrics = compiled(state, batch, rng)
    jax.block_until_ready(metrics)
    result["images_per_s"] = ids * k * timed_steps / (time.perf_counter() - t0)
  return result


def main(argv):
  del argv
  unknown = sorted(set(_SETTINGS.value) - set(SETTINGS))
  if unknown:
    raise app.UsageError(f"--settings: unknown {unknown}; expected names from "
                         f"{list(SETTINGS)}.")
  base = _CONFIG.value
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  model: "
        f"{base.model.variant} {base.data.image_size}px {base.model.dtype}  batch: "
        f"{_IDS.value} x {base.data.views_per_id}  classes: {_CLASSES.value}")
  print(f"{'setting':>12s} {'GFLOP':>9s} {'GB accessed':>12s} {'compile s':>10s} "
        f"{'images/s':>9s}")
  for name in _SETTINGS.value:
    config = base.copy_and_resolve_references()
    config.model.update(**SETTINGS[name])
    config.data.ids_per_batch = _IDS.value
    r = step_cost(config, _CLASSES.value, _TIMED.value)
    rate = f"{r['images_per_s']:9.2f}" if "images_per_s" in r else f"{'-':>9s}"
    print(f"{name:>12s} {r['gflop']:9.1f} {r['gb_accessed']:12.2f} {r['compile_s']:10.0f} "
          f"{rate}", flush=True)


if __name__ == "__main__":
  app.run(main)
