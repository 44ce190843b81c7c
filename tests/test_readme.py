"""The README's commands as a newcomer runs them: every `python -m` module in
it exists and answers --help with status 0, every `--config` it names loads,
every `--config.x.y` override it gives names a real field, and nothing in it
or in the configs points outside the repository. (The demo and the tests
themselves run in CI as the README gives them.)"""

import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT

README = os.path.join(ROOT, "README.md")


def _commands() -> list[list[str]]:
  """The `python -m ...` commands of the README's bash blocks, continuation
  lines joined, comments and trailing `&& ...` dropped."""
  text = open(README).read()
  out = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      line = line.split(" #")[0].strip()
      if "python -m " not in line or line.startswith("#"):
        continue
      line = line[line.index("python -m "):].split(" && ")[0]
      out.append(shlex.split(re.sub(r"\[[^\]]*\]", "", line)))
  return out


def test_readme_is_a_short_guide_that_stays_inside_the_repository():
  lines = open(README).read().splitlines()
  assert len(lines) <= 300, f"README.md has {len(lines)} lines"
  for path in [README] + glob.glob(os.path.join(ROOT, "configs", "*.py")):
    text = open(path).read()
    assert "../shared" not in text and "/work/" not in text, path


def test_readme_modules_answer_help():
  modules = sorted({c[2] for c in _commands()})
  assert {"asl_jax.main", "asl_jax.evaluate", "asl_jax.embed", "asl_jax.find"} <= set(modules)
  for module in modules:
    r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, f"{module} --help: {r.stderr[-1500:]}"


@pytest.mark.parametrize("argv", [c for c in _commands() if c[2] == "asl_jax.main"],
                         ids=lambda c: " ".join(a for a in c if a.startswith("--config="))
                         or "main")
def test_readme_main_commands_name_real_configs_and_fields(argv):
  from asl_jax import cli
  args = argv[3:]
  assert any(a.startswith("--config") for a in args)
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    cli.check_overrides(args)  # A UserError on an unknown variant or field.
  finally:
    os.chdir(cwd)
