"""Shared fixtures: a tiny synthetic NDEC set and a tiny config."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One persistent XLA compilation cache for the whole test session, its
# subprocesses included (they inherit the variable): many tests compile the
# same tiny train step, and a resumed run compiles its killed run's programs.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile
  _OWN_CACHE = tempfile.mkdtemp(prefix="asl_jax_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_sessionfinish(session, exitstatus):
  if _OWN_CACHE:
    import shutil
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def load_module(*path: str):
  """The Python file at ROOT/<path...> as a module (configs and benchmarks are
  scripts, not packages)."""
  spec = importlib.util.spec_from_file_location(
      os.path.splitext(path[-1])[0], os.path.join(ROOT, *path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(arg=None, file="asl.py"):
  """configs/<file>'s get_config(arg), loaded by path as --config does."""
  return load_module("configs", file).get_config(arg)

TINY_SIZES = dict(seed=0, image_size=48, num_train=48, num_train_negative_pairs=8,
                  num_references=40, num_copy_queries=12,
                  num_hard_negative_queries=12, num_distractor_queries=6,
                  num_workers=1)


def tiny_config(data_dir: str):
  """The demo config shrunk so that a run takes seconds on a CPU."""
  c = load_config()
  c.data.data_dir = data_dir
  c.data.synthetic.update(TINY_SIZES)
  c.data.update(ids_per_batch=8, views_per_id=4, pair_ids_per_batch=2, image_size=32,
                num_threads=1)
  c.model.update(width=8, projector_dims=(32, 64), descriptor_dim=16)
  c.train.update(total_steps=4, log_every=2, checkpoint_every=2)
  c.eval.update(k=5, batch_size=32, image_size=40)  # Embedded larger than trained.
  return c


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def tiny_builder(data_dir):
  from asl_jax import data
  return data.prepare(tiny_config(data_dir).data, log=lambda _: None)


@pytest.fixture(scope="session")
def tiny_run(tiny_builder, data_dir, tmp_path_factory):
  """A tiny trained and evaluated run (4 steps, flip-averaged descriptors):
  (workdir, its config) for the embed / export / find tools."""
  from asl_jax import train
  c = tiny_config(data_dir)
  c.eval.update(decision="norm", rescore=0.0, flip_average=True)
  c.eval.calibration.num_images = 8
  workdir = str(tmp_path_factory.mktemp("tiny_run"))
  train.train_and_evaluate(c, workdir)
  return workdir, c


def copy_run_with_eval(workdir: str, target, **eval_fields) -> str:
  """A copy of the run `workdir` at `target` whose config.json has
  `eval_fields` changed (the same weights, another test-time setting)."""
  import json
  import shutil
  shutil.copytree(workdir, target)
  path = os.path.join(target, "config.json")
  with open(path) as f:
    cfg = json.load(f)
  cfg["eval"].update(eval_fields)
  with open(path, "w") as f:
    json.dump(cfg, f)
  return str(target)
