"""What the command-line entry points share: the `--config` flag, the
check of `--config.x.y` overrides before absl parses them, and the one-
paragraph error with exit status 2. `main` and `pregenerate` import it (not
each other)."""

import difflib
import importlib.util
import os
import re
import sys

from ml_collections import config_flags


def define_config_flag():
  """--config (locked, overridable with --config.a.b=value)."""
  return config_flags.DEFINE_config_file(
      "config", None, "Config file, e.g. configs/asl.py or configs/asl.py:ndec.",
      lock_config=True)


def initialize_multihost():
  """jax.distributed.initialize(): SLURM, Open MPI, Kubernetes and TPU pods
  are detected by JAX itself; elsewhere (and to override) JAX reads
  JAX_COORDINATOR_ADDRESS, and we pass JAX_NUM_PROCESSES / JAX_PROCESS_ID,
  which JAX does not read."""
  import jax
  env = {k: int(os.environ[v]) for k, v in (("num_processes", "JAX_NUM_PROCESSES"),
                                            ("process_id", "JAX_PROCESS_ID"))
         if os.environ.get(v)}
  jax.distributed.initialize(**env)


def fail(message: str):
  print(f"asl_jax: error: {message}", file=sys.stderr)
  sys.exit(2)


def run_config_command(main):
  """The entry of a `--config` command (main, benchmark): --help exits 0, a
  misspelled override is one paragraph, --config is required, then absl runs
  `main`."""
  from absl import app, flags
  help_exits_zero(sys.argv[1:])
  check_overrides(sys.argv[1:])
  flags.mark_flags_as_required(["config"])
  app.run(main)


def run_json_command(run, args):
  """The entry of an argparse command (embed, export, find): `run(args, log)`
  with progress on stderr and its summary as JSON on stdout; a UserError is
  one paragraph and status 2, Ctrl-C one line and status 130 (the commands
  replace an output only once it is complete)."""
  import json
  from asl_jax.errors import UserError
  try:
    summary = run(args, log=lambda m: print(m, file=sys.stderr, flush=True))
  except UserError as e:
    fail(str(e))
  except KeyboardInterrupt:
    print("asl_jax: interrupted; no output was replaced.", file=sys.stderr)
    sys.exit(130)
  print(json.dumps(summary, indent=2))


def help_exits_zero(argv: list[str]):
  """`--help` / `-h` / `--helpfull`: the usage on stdout and status 0 (absl's
  own help flag exits with 1). The entry module's key flags are listed (its
  --config too when it declares it with `flags.declare_key_flag`)."""
  from absl import app
  asked = {"--help", "-h", "-help", "--helpshort", "--helpfull"} & set(argv)
  if asked:
    app.usage(shorthelp="--helpfull" not in asked, writeto_stdout=True)
    sys.exit(0)


def check_overrides(argv: list[str]):
  """Names a misspelled `--config.x.y` field before absl's traceback can."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None and "--config" in argv[:-1]:
    spec = argv[argv.index("--config") + 1]
  if spec is None:
    return
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    fail(f"the config file {path!r} does not exist; use --config "
          "configs/asl.py (or configs/asl.py:ndec).")
  module_spec = importlib.util.spec_from_file_location("_asl_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    config = module.get_config(arg or None)
  except ValueError as e:
    fail(str(e))
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
        fail(f"unknown config field --config.{m.group(1)}: {here} has no "
              f"field {part!r}.{hint} Known fields there: {', '.join(keys)}.")
      node = node[part]
