"""Entry point: `python -m asl_jax.main --config configs/asl.py --workdir DIR`.

Parses the config (ml_collections, locked, overridable with
`--config.a.b=value`), initialises multi-host JAX when asked, and runs
`train.train_and_evaluate`. Bad input ends with one clear paragraph on
stderr and exit status 2, never a library traceback.
"""

import difflib
import importlib.util
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/asl.py or configs/asl.py:ndec.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo",
                               "Checkpoints, metrics and predictions go here.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() (SLURM, TPU pods, "
    "or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID).")


def _fail(message: str):
  print(f"asl_jax: error: {message}", file=sys.stderr)
  sys.exit(2)


def check_overrides(argv: list[str]):
  """Names a misspelled `--config.x.y` field before absl's traceback can."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None and "--config" in argv[:-1]:
    spec = argv[argv.index("--config") + 1]
  if spec is None:
    return
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    _fail(f"the config file {path!r} does not exist; use --config "
          "configs/asl.py (or configs/asl.py:ndec).")
  module_spec = importlib.util.spec_from_file_location("_asl_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    config = module.get_config(arg or None)
  except ValueError as e:
    _fail(str(e))
  for a in argv:
    m = re.match(r"--config\.([\w.]+)", a)
    if not m:
      continue
    node, parts = config, m.group(1).split(".")
    for i, part in enumerate(parts):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if part not in keys:
        here = ".".join(parts[:i]) or "the config"
        close = difflib.get_close_matches(part, keys, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        _fail(f"unknown config field --config.{m.group(1)}: {here} has no "
              f"field {part!r}.{hint} Known fields there: {', '.join(keys)}.")
      node = node[part]


def main(argv):
  del argv
  import jax
  from asl_jax import train
  from asl_jax.errors import UserError
  logging.set_verbosity(logging.WARNING)
  if _MULTIHOST.value:
    # SLURM, Open MPI, Kubernetes and TPU pods are detected by JAX itself;
    # elsewhere (and to override) JAX reads JAX_COORDINATOR_ADDRESS, and we
    # pass JAX_NUM_PROCESSES / JAX_PROCESS_ID, which JAX does not read.
    env = {k: int(os.environ[v]) for k, v in (("num_processes", "JAX_NUM_PROCESSES"),
                                              ("process_id", "JAX_PROCESS_ID"))
           if os.environ.get(v)}
    jax.distributed.initialize(**env)
  if jax.process_index() == 0:
    print(f"JAX {jax.__version__}: {jax.process_count()} process(es), "
          f"{jax.device_count()} device(s): {jax.devices()[0].device_kind}",
          flush=True)
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except UserError as e:
    _fail(str(e))
  except jax.errors.JaxRuntimeError as e:
    if "out of memory" not in str(e).lower() and "RESOURCE_EXHAUSTED" not in str(e):
      raise
    size = re.search(r"allocating (\d+) bytes", str(e))
    amount = f" allocating {int(size.group(1)) / 1e9:.1f} GB" if size else ""
    _fail(f"The device ran out of memory{amount} ({jax.devices()[0].device_kind}). "
          "Lower the batch "
          "(--config.data.ids_per_batch, data.views_per_id), the input size "
          "(--config.data.image_size) or the model (--config.model.variant), use "
          "--config.model.dtype=bfloat16 on accelerators, or spread the batch over more "
          "devices. Checkpoints already written are kept.")
  except train.Preempted as e:
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(143)  # 128 + SIGTERM, as if the signal had ended the process.


def run():
  check_overrides(sys.argv[1:])
  flags.mark_flags_as_required(["config"])
  app.run(main)


if __name__ == "__main__":
  run()
