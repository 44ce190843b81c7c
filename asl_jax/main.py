"""Entry point: `python -m asl_jax.main --config configs/asl.py --workdir DIR`.

Parses the config (ml_collections, locked, overridable with
`--config.a.b=value`), initialises multi-host JAX when asked, and runs
`train.train_and_evaluate`. Bad input ends with one clear paragraph on
stderr and exit status 2, never a library traceback.
"""

import re
import sys

from absl import flags, logging

from asl_jax import cli
from asl_jax.errors import UserError

INTERRUPTED = ("asl_jax: interrupted (Ctrl-C). The checkpoints already written are kept: "
               "rerunning the same command resumes training from the latest, or evaluates "
               "again where training had ended (or there was none to do).")

_CONFIG = cli.define_config_flag()
flags.declare_key_flag("config")  # Listed by --help with this module's flags.
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo",
                               "Checkpoints, metrics and predictions go here.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() (SLURM, TPU pods, "
    "or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID).")


def main(argv):
  del argv
  import jax
  from asl_jax import train
  logging.set_verbosity(logging.WARNING)
  if _MULTIHOST.value:
    cli.initialize_multihost()
  if jax.process_index() == 0:
    print(f"JAX {jax.__version__}: {jax.process_count()} process(es), "
          f"{jax.device_count()} device(s): {jax.devices()[0].device_kind}",
          flush=True)
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except jax.errors.JaxRuntimeError as e:
    if "out of memory" not in str(e).lower() and "RESOURCE_EXHAUSTED" not in str(e):
      raise
    size = re.search(r"allocating (\d+) bytes", str(e))
    amount = f" allocating {int(size.group(1)) / 1e9:.1f} GB" if size else ""
    raise UserError(
        f"The device ran out of memory{amount} ({jax.devices()[0].device_kind}). Lower the "
        "batch (--config.data.ids_per_batch, data.views_per_id), the input size "
        "(--config.data.image_size) or the model (--config.model.variant), use "
        "--config.model.dtype=bfloat16 on accelerators, or spread the batch over more "
        "devices. Checkpoints already written are kept.") from None
  except train.Preempted as e:
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(128 + e.signum)  # As if the signal had ended the process (143, 130).


def run():
  """Bad input, the device's memory and Ctrl-C end as `cli.status` says."""
  cli.run_config_command(main, interrupted=INTERRUPTED)


if __name__ == "__main__":
  run()
