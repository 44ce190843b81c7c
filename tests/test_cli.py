"""Every command line ends through asl_jax.cli.status: bad input is one
paragraph `asl_jax: error: ...` and status 2, Ctrl-C one line and status 130,
--help 0, an unknown flag 2. Ctrl-C is simulated where the bad input is found
(UserError's constructor raises KeyboardInterrupt instead), so a command that
catches errors itself, or calls its work outside the helper, fails here."""

import ast
import importlib
import os
import pathlib
import subprocess
import sys
import time

import pytest

from asl_jax import cli
from asl_jax.errors import UserError
from conftest import ROOT


def _interrupt(self, *args):
  raise KeyboardInterrupt


# Commands with argparse flags, run in this process: argv (given a tmp dir) that
# is refused before any work, and a phrase of the message.
ARGPARSE = {
    "asl_jax.evaluate": (lambda t: ["--predictions", f"{t}/p.csv", "--ground_truth",
                                    f"{t}/g.csv", "--k", "0"], "--k=0: give the number"),
    "asl_jax.gate": (lambda t: ["--predictions", f"{t}/p.csv", "--workdir", t, "--output",
                                f"{t}/o.csv"], "Give --queries DIR"),
    "asl_jax.embed": (lambda t: ["--workdir", t, "--out", f"{t}/d.h5"], "Give either --images"),
    "asl_jax.export": (lambda t: ["--workdir", t, "--out", f"{t}/old.onnx"], "--overwrite"),
    "asl_jax.find": (lambda t: ["--workdir", t, "--images", f"{t}/absent", "--out", f"{t}/o"],
                     "is not a folder"),
    "tfds_ndec.photos": (lambda t: ["--photos", t, "--out", f"{t}/o", "--train_fraction", "2"],
                         "--train_fraction=2.0: give a share"),
    "tfds_ndec.prepare": (lambda t: ["folder", "--manual_dir", t, "--name", "!!"],
                          "Cannot make a dataset name from '!!'"),
}
# Commands with a --config (absl), run as processes.
CONFIG = {
    "asl_jax.main": (lambda t: ["--workdir", f"{t}/run", "--config.model.variant=r999"],
                     "--config.model.variant='r999' is not allowed"),
    "asl_jax.benchmark": (lambda t: ["--only", "train", "--steps", "0"],
                          "--steps=0: give at least 1"),
    "asl_jax.pregenerate": (lambda t: ["--out", f"{t}/views", "--part", "x"],
                            "--part='x': give i/n"),
}
# A developer's tool with no input of its own to refuse (only usage and Ctrl-C).
OTHER = {"tfds_ndec.fake_layout"}


def _command_lines() -> set[str]:
  """The modules of asl_jax and tfds_ndec with an `if __name__ == "__main__":` block."""
  out = set()
  for package in ("asl_jax", "tfds_ndec"):
    for path in sorted((pathlib.Path(ROOT) / package).rglob("*.py")):
      tree = ast.parse(path.read_text())
      if any(isinstance(n, ast.If) and isinstance(n.test, ast.Compare)
             and getattr(n.test.left, "id", "") == "__name__" for n in tree.body):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out.add(".".join(parts[:-1] if parts[-1] == "__main__" else parts))
  return out


def test_every_command_is_checked_here():
  assert _command_lines() == set(ARGPARSE) | set(CONFIG) | OTHER


@pytest.mark.parametrize("module", sorted(ARGPARSE))
def test_argparse_commands_end_through_the_helper(module, tmp_path, capsys, monkeypatch):
  main = importlib.import_module(module).main
  (tmp_path / "old.onnx").write_bytes(b"keep")
  argv, needle = ARGPARSE[module]
  argv = argv(str(tmp_path))
  assert main(argv) == 2
  out, err = capsys.readouterr()
  assert err.startswith("asl_jax: error: ") and err.count("\n") == 1 and needle in err, err
  assert out == ""
  assert main(["--help"]) == 0 and "usage: python -m " + module in capsys.readouterr().out
  assert main([*argv, "--no_such_flag"]) == 2
  assert "unrecognized arguments: --no_such_flag" in capsys.readouterr().err
  monkeypatch.setattr(UserError, "__init__", _interrupt)
  assert main(argv) == 130
  assert capsys.readouterr().err == cli.INTERRUPTED + "\n"
  assert (tmp_path / "old.onnx").read_bytes() == b"keep"


def test_fake_layout_ends_through_the_helper(tmp_path, capsys, monkeypatch):
  from tfds_ndec import fake_layout
  assert fake_layout.main(["--help"]) == 0
  assert fake_layout.main([str(tmp_path), "--num_train", "x"]) == 2
  monkeypatch.setattr(fake_layout, "write", lambda *a: _interrupt(None))
  capsys.readouterr()
  assert fake_layout.main([str(tmp_path / "m")]) == 130
  assert capsys.readouterr().err == cli.INTERRUPTED + "\n"


def _run_config_command(module, argv, interrupt=False):
  """`python -m module --config configs/asl.py *argv`; with `interrupt`, every
  UserError raises KeyboardInterrupt where it is made."""
  code = ("import runpy, sys\nfrom asl_jax.errors import UserError\n"
          + ("def stop(self, *a):\n  raise KeyboardInterrupt\nUserError.__init__ = stop\n"
             if interrupt else "")
          + f"sys.argv = {[module, '--config', 'configs/asl.py', *argv]!r}\n"
          + f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n")
  return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"))


@pytest.mark.parametrize("module", sorted(CONFIG))
def test_config_commands_end_through_the_helper(module, tmp_path):
  argv, needle = CONFIG[module]
  argv = argv(str(tmp_path))
  r = _run_config_command(module, argv)
  last = r.stderr.strip().splitlines()[-1]
  assert r.returncode == 2 and last.startswith("asl_jax: error: ") and needle in last, r.stderr
  assert "Traceback" not in r.stderr
  r = _run_config_command(module, argv, interrupt=True)
  assert r.returncode == 130 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert r.stderr.strip().splitlines()[-1].startswith("asl_jax: interrupted"), r.stderr
  assert not os.listdir(tmp_path)  # Nothing was written.


def test_an_unknown_absl_flag_is_one_paragraph_and_status_2():
  r = _run_config_command("asl_jax.main", ["--no_such_flag=1"])
  assert r.returncode == 2 and "Traceback" not in r.stderr and "FATAL" not in r.stderr
  assert r.stderr.strip() == ("asl_jax: error: Unknown command line flag 'no_such_flag'. "
                              "--help lists the flags."), r.stderr


def test_every_command_ends_its_process_through_exit_process():
  """A `__main__` block that ends with sys.exit(main()) would let Python's
  shutdown run after Ctrl-C, which crashes while JAX compiles on its own thread."""
  for module in sorted(_command_lines()):
    name = module.replace(".", "/")
    path = pathlib.Path(ROOT) / (name + ".py")
    path = path if path.exists() else pathlib.Path(ROOT) / name / "__main__.py"
    text = path.read_text()
    assert "sys.exit(main())" not in text, module
    assert "exit_process(" in text or "run_config_command(" in text, module


def test_ctrl_c_ends_the_process_without_waiting_for_other_threads():
  """After Ctrl-C the process ends at once with 130. Python's own shutdown
  would first wait for (and tear the runtime down under) threads still at work:
  here one that sleeps a minute, in the field a compilation on JAX's threads,
  where it ended in a segmentation fault instead of status 130."""
  code = ("import threading, time\nfrom asl_jax import cli\n"
          "threading.Thread(target=time.sleep, args=(60,)).start()\n"
          "def work():\n  raise KeyboardInterrupt\n"
          "cli.exit_process(cli.status(work))\n")
  start = time.monotonic()
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     timeout=50, env=dict(os.environ, PYTHONPATH=ROOT))
  assert r.returncode == 130 and r.stderr == cli.INTERRUPTED + "\n", r.stderr
  assert time.monotonic() - start < 40


def test_a_ctrl_c_swallowed_by_a_callback_still_stops_the_command():
  """Python runs the Ctrl-C handler wherever the main thread is. Inside a
  garbage-collection callback (JAX has one) the KeyboardInterrupt cannot
  propagate: Python prints "Exception ignored" and the command went on to
  its end. `status` raises it again once the callback has returned."""
  import gc
  fired, finished = [], []

  def callback(phase, info):
    if not fired:
      fired.append(phase)
      raise KeyboardInterrupt

  def work():
    gc.callbacks.append(callback)
    try:
      gc.collect()
      for _ in range(2000):
        time.sleep(0.001)
    finally:
      gc.callbacks.remove(callback)
    finished.append(True)

  import signal
  hook = sys.unraisablehook
  # Python's own SIGINT handler, which turns a Ctrl-C into KeyboardInterrupt (a process
  # started in the background by a shell ignores SIGINT, and there is nothing to deliver).
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    assert cli.status(work) == 130
  finally:
    signal.signal(signal.SIGINT, previous)
  assert fired and not finished
  assert sys.unraisablehook is hook
