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
from absl import app, flags

# Its flags --config, --batch_ids (here 32 by default) and --num_classes, its
# step and its timing loop are shared.
import train_throughput

flags.FLAGS.set_default("batch_ids", ["32"])
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
  update, state, batch, rng = train_throughput.build_step(config, num_classes)
  ids, k = config.data.ids_per_batch, config.data.views_per_id
  t0 = time.perf_counter()
  compiled = update.lower(state, batch, rng).compile()
  result = {"compile_s": time.perf_counter() - t0}
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  result["gflop"] = cost.get("flops", float("nan")) / 1e9
  result["gb_accessed"] = cost.get("bytes accessed", float("nan")) / 1e9
  if timed_steps:
    seconds, _ = train_throughput.time_steps(compiled, state, batch, rng, warmup=2,
                                             steps=timed_steps)
    result["images_per_s"] = ids * k * timed_steps / seconds
  return result


def main(argv):
  del argv
  unknown = sorted(set(_SETTINGS.value) - set(SETTINGS))
  if unknown:
    raise app.UsageError(f"--settings: unknown {unknown}; expected names from "
                         f"{list(SETTINGS)}.")
  base = train_throughput._CONFIG.value
  classes = train_throughput._CLASSES.value
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  model: "
        f"{base.model.variant} {base.data.image_size}px {base.model.dtype}  "
        f"views per id: {base.data.views_per_id}  classes: {classes}")
  print(f"{'batch ids':>9s} {'setting':>12s} {'GFLOP':>9s} {'GB accessed':>12s} "
        f"{'compile s':>10s} {'images/s':>9s}")
  for ids in map(int, train_throughput._IDS.value):
    for name in _SETTINGS.value:
      config = base.copy_and_resolve_references()
      config.model.update(**SETTINGS[name])
      config.data.ids_per_batch = ids
      r = step_cost(config, classes, _TIMED.value)
      rate = f"{r['images_per_s']:9.2f}" if "images_per_s" in r else f"{'-':>9s}"
      print(f"{ids:>9d} {name:>12s} {r['gflop']:9.1f} {r['gb_accessed']:12.2f} "
            f"{r['compile_s']:10.0f} {rate}", flush=True)


if __name__ == "__main__":
  app.run(main)
