"""What every command line shares: how its flags are defined and how it ends.

Flags: the commands that take a `--config` (main, benchmark, pregenerate) use
absl with ml_collections' config flag, which `--config.a.b=value` overrides
need (`define_config_flag`, `run_config_command`); every other command
(evaluate, gate, embed, export, find, tfds_ndec.photos) defines argparse flags
on `parser(prog, doc)` and runs through `run_command` or `run_json_command`.

Ending (`status`, the one place): a `UserError` is one paragraph,
`asl_jax: error: ...`, on stderr and status 2; Ctrl-C one line and status 130;
`--help` status 0; a flag the command does not know, or a bad value, status 2
(argparse's usage line, or one paragraph for absl's). Nothing else prints an
error or picks an exit status; `main` adds its out-of-memory and preemption
messages on top. A process ends through `exit_process`, which skips the
interpreter's shutdown after Ctrl-C (JAX may still be compiling on a thread
of its own). `main`, `pregenerate` and `benchmark` import this module (not
each other).
"""

import _thread
import argparse
import difflib
import importlib.util
import os
import re
import sys
import threading

from ml_collections import config_flags

from asl_jax.errors import UserError

INTERRUPTED = "asl_jax: interrupted; no output was replaced."


def status(work, interrupted: str = INTERRUPTED) -> int:
  """Runs `work()` and returns the command's exit status: 0 when it ends,
  the code of a `SystemExit` it raises (argparse: 0 for --help, 2 for a usage
  error), 2 with the one-paragraph message for a `UserError`, 130 with the
  line `interrupted` for Ctrl-C."""
  previous_hook = sys.unraisablehook
  sys.unraisablehook = lambda unraisable: _deliver_swallowed_interrupt(unraisable, previous_hook)
  try:
    work()
  except UserError as e:
    print(f"asl_jax: error: {e}", file=sys.stderr, flush=True)
    return 2
  except KeyboardInterrupt:
    print(interrupted, file=sys.stderr, flush=True)
    return 130
  except SystemExit as e:
    if e.code is None or isinstance(e.code, int):
      return e.code or 0
    print(e.code, file=sys.stderr, flush=True)
    return 1
  finally:
    sys.unraisablehook = previous_hook
  return 0


def _deliver_swallowed_interrupt(unraisable, previous_hook):
  """sys.unraisablehook while a command runs. Python runs a signal's handler
  wherever the main thread is, and when that is a callback whose exceptions
  cannot propagate (JAX's garbage-collection callback, a __del__), the
  KeyboardInterrupt of a Ctrl-C is printed as "Exception ignored" and lost:
  the command would go on to the end. This delivers the Ctrl-C again, from
  another thread a moment later, so that its handler runs once the callback
  has returned; anything else goes to the hook that was in place."""
  if isinstance(unraisable.exc_value, KeyboardInterrupt):
    threading.Timer(0.01, _thread.interrupt_main).start()
  else:
    previous_hook(unraisable)


def exit_process(code: int):
  """Ends the process with `code` (`status`'s). After Ctrl-C or a termination
  signal (130, 143) it skips the interpreter's shutdown: a compilation that JAX
  runs on a thread of its own may still be going, and tearing the runtime down
  under it crashes the process (SIGSEGV) instead of ending it with the status.
  Nothing more is lost by skipping it: by then the work has unwound and its
  `finally` blocks have finished the checkpoints in flight and closed the
  logs."""
  if code in (130, 143):
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except (OSError, ValueError):
        pass
    os._exit(code)
  sys.exit(code)


# ------------------------------------------------------------- argparse --
def parser(prog: str, doc: str) -> argparse.ArgumentParser:
  """The flags of a command without `--config`: `prog` as the user types it
  (python -m asl_jax.find), the first paragraph of the module's `doc` as the
  description."""
  return argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])


def comma_list(text: str) -> list[str]:
  """An argparse `type` for a comma-separated list (a.h5,b.h5), as absl's
  list flags read it."""
  return [item.strip() for item in text.split(",") if item.strip()]


def run_command(run, parse, argv=None) -> int:
  """The entry of an argparse command: `run(parse(argv))`; returns the exit
  status (see `status`)."""
  return status(lambda: run(parse(argv)))


def run_json_command(run, parse, argv=None) -> int:
  """The entry of a command that prints a JSON summary (embed, export, find):
  `run(args, log)` with progress on stderr and its summary as JSON on stdout;
  returns the exit status (Ctrl-C: the commands replace an output only once
  it is complete, so none was)."""
  import json

  def work():
    summary = run(parse(argv), log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(summary, indent=2))
  return status(work)


# ----------------------------------------------------------- absl + config --
def define_config_flag():
  """--config (locked, overridable with --config.a.b=value)."""
  return config_flags.DEFINE_config_file(
      "config", None, "Config file, e.g. configs/asl.py or configs/asl.py:ndec.",
      lock_config=True)


def run_config_command(main, interrupted: str = INTERRUPTED, required=("config",)):
  """The entry of a `--config` command (main, benchmark, pregenerate): --help
  exits 0, a misspelled override or a bad flag is one paragraph and status 2,
  the `required` flags must be given, then absl runs `main(argv)`. Exits with
  `status`'s code."""
  from absl import app, flags
  argv = sys.argv[1:]

  def work():
    help_exits_zero(argv)
    check_overrides(argv)
    flags.mark_flags_as_required(list(required))
    app.run(main, flags_parser=_parse_absl_flags)
  exit_process(status(work, interrupted))


def _parse_absl_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with a bad flag as a UserError (absl's own ends with
  status 1 and a `FATAL` line)."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    raise UserError(f"{str(e).rstrip('.')}. --help lists the flags.") from None


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
  """Names a misspelled `--config.x.y` field (a UserError) before absl's
  traceback can."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if spec is None and "--config" in argv[:-1]:
    spec = argv[argv.index("--config") + 1]
  if spec is None:
    return
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise UserError(f"the config file {path!r} does not exist; use --config "
                    "configs/asl.py (or configs/asl.py:ndec).")
  module_spec = importlib.util.spec_from_file_location("_asl_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    config = module.get_config(arg or None)
  except ValueError as e:
    raise UserError(str(e)) from None
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
        raise UserError(f"unknown config field --config.{m.group(1)}: {here} has no "
                        f"field {part!r}.{hint} Known fields there: {', '.join(keys)}.")
      node = node[part]
