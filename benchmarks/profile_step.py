"""Where a config's train step spends its time: `jax.profiler` traces a few
steps of the compiled update and this prints the ops' time by kind and the
costliest ops, each with its shape and the model code it comes from.

  python benchmarks/profile_step.py --config configs/asl.py --steps 3

Each op's time is summed over the threads or streams that ran it, per step.
On the CPU the convolutions that XLA hands to Eigen's thread pool leave no
event of their own; their time is in the "not traced" row (the wall time in
which no traced op ran). On a GPU the kernels are on the device planes.
"""

import collections
import glob
import re
import tempfile
import time

import jax
from absl import app, flags
from jax.profiler import ProfileData
from ml_collections import config_flags

from asl_jax import benchmark

_CONFIG = config_flags.DEFINE_config_file("config", "configs/asl.py", "Config.")
_STEPS = flags.DEFINE_integer("steps", 3, "Traced steps (after 3 untraced).")
_CLASSES = flags.DEFINE_integer("num_classes", 2800, "Classifier width (classifying configs).")
_TOP = flags.DEFINE_integer("top", 20, "Costliest ops to list.")

_SKIP = ("ThunkExecutor", "Threadpool", "Slinky", "end: ")


def op_origins(hlo_text: str) -> dict:
  """HLO instruction name -> (shape, op_name metadata)."""
  out = {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) (.*)", line)
    if m:
      op = re.search(r'op_name="([^"]*)"', m.group(3))
      out.setdefault(m.group(1), (m.group(2), op.group(1) if op else ""))
  return out


def main(argv):
  del argv
  config = _CONFIG.value
  update, state, batch, rng = benchmark.build_step(config, _CLASSES.value)
  compiled = update.lower(state, batch, rng).compile()
  origins = op_origins(compiled.as_text())
  for _ in range(3):
    state, metrics = compiled(state, batch, rng)
  jax.block_until_ready(metrics)
  n = _STEPS.value
  with tempfile.TemporaryDirectory() as trace_dir:
    t0 = time.perf_counter()
    with jax.profiler.trace(trace_dir):
      for _ in range(n):
        state, metrics = compiled(state, batch, rng)
        jax.block_until_ready(metrics)
    wall = (time.perf_counter() - t0) / n
    profile = ProfileData.from_file(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0])
  per_op, spans = collections.Counter(), []
  for plane in profile.planes:
    for line in plane.lines:
      if line.name == "python":
        continue
      for ev in line.events:
        if ev.name.startswith(_SKIP) or ev.name not in origins:
          continue
        per_op[ev.name] += ev.duration_ns / n / 1e6
        spans.append((ev.start_ns, ev.start_ns + ev.duration_ns))
  spans.sort()
  busy, (start, end) = 0, spans[0]
  for s, e in spans[1:]:
    if s > end:
      busy, start = busy + end - start, s
    end = max(end, e)
  busy = (busy + end - start) / n / 1e6
  kinds = collections.Counter()
  for name, ms in per_op.items():
    kinds[name.rsplit(".", 1)[0] if name[-1].isdigit() else name] += ms
  print(f"{jax.devices()[0].device_kind} x{jax.device_count()}; {config.model.variant}, batch "
        f"{config.data.ids_per_batch * config.data.views_per_id} at {config.data.image_size} px; "
        f"{n} traced steps: {wall * 1e3:.1f} ms per step (with tracing), {len(per_op)} ops")
  print(f"{'ms/step':>8}  kind")
  for kind, ms in kinds.most_common(12):
    print(f"{ms:8.2f}  {kind}")
  if jax.default_backend() == "cpu":
    print(f"{max(wall * 1e3 - busy, 0):8.2f}  not traced (no traced op running: Eigen's "
          "convolutions, dispatch)")
  print(f"\n{'ms/step':>8}  {'op':32s} {'shape':30s} from")
  for name, ms in per_op.most_common(_TOP.value):
    shape, op = origins[name]
    print(f"{ms:8.2f}  {name:32s} {shape[:30]:30s} {op.removeprefix('jit(update)/')[:70]}")


if __name__ == "__main__":
  app.run(main)
