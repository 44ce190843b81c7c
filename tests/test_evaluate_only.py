"""Evaluation without training (train.total_steps=0): another run's workdir
or checkpoint directory is read, never written, and evaluated into a new
workdir with the weights it holds."""

import hashlib
import json
import os

import jax
import numpy as np
import pytest

from asl_jax import checkpointing, config_check, data, sharding, train
from asl_jax.errors import UserError
from asl_jax.evaluation import embedding, io
from conftest import tiny_config


def _snapshot(directory):
  """Relative path -> SHA-256 of every file under `directory`."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return out


def test_evaluate_another_runs_workdir_into_a_new_one(tiny_builder, data_dir, tmp_path):
  c = tiny_config(data_dir)
  c.train.total_steps = 2
  source = str(tmp_path / "trained")
  model, state, _ = train.train(c, source, builder=tiny_builder)
  before = _snapshot(source)
  assert any(p.startswith("checkpoints/2/") for p in before)

  e = tiny_config(data_dir)
  e.train.total_steps = 0
  e.model.init_from = source
  # No verification, calibration or score normalisation: faster, not what is tested.
  e.eval.update(decision="norm", rescore=0.0)
  e.eval.calibration.num_images = 0
  e.eval.score_norm.method = "none"
  target = str(tmp_path / "evaluated")
  metrics = train.train_and_evaluate(e, target)
  assert _snapshot(source) == before  # Byte-identical, nothing added.
  assert os.path.isfile(os.path.join(target, "metrics.json"))
  assert not os.path.exists(os.path.join(target, "checkpoints"))
  with open(os.path.join(target, "pretrained_load.json")) as f:
    assert json.load(f)["file"] == source
  # The descriptors are those of the trained weights (not of a fresh init).
  mesh = sharding.make_mesh()
  embed = embedding.make_embed_fn(model, mesh)
  queries = data.source(tiny_builder, "queries")
  expected, _ = embedding.embed_split(embed, state, queries, e.eval.image_size, 32, mesh,
                                      log=lambda _: None)
  _, written = io.read_descriptors(os.path.join(target, "queries.h5"))
  np.testing.assert_allclose(written, expected, atol=1e-5)
  assert 0.0 <= metrics["without_gate"]["micro_ap"] <= 1.0

  # One step's directory names the same weights; a model of other shapes is
  # refused with the run's settings named; the run's own workdir is refused.
  params = jax.tree.map(np.asarray, state.params["model"])
  stats = jax.tree.map(np.asarray, state.batch_stats)
  step_dir = os.path.join(source, "checkpoints", "2")
  got, _, report = checkpointing.load_model_from(step_dir, params, stats, e)
  assert report.loaded
  jax.tree.map(np.testing.assert_array_equal, got, params)
  e.model.width = 4
  with pytest.raises(UserError, match=r"--config.model.width=8"):
    train.train_and_evaluate(e, str(tmp_path / "other"))
  e.model.width = 8
  with pytest.raises(UserError, match="another directory than --workdir"):
    train.train_and_evaluate(e, source)
  assert _snapshot(source) == before
  # Another model evaluated into the trained run's workdir replaced its reports, silently.
  e.model.init_from = os.path.join(str(tmp_path), "elsewhere.onnx")
  with pytest.raises(UserError, match=r"total_steps=0 is not allowed: it must be at least 1 "
                     r"in --workdir=.*trained run \(the checkpoint of step 2\).*Give a new"):
    config_check.validate(e, source)
  assert _snapshot(source) == before
  e.model.init_from = source
  with pytest.raises(UserError, match="without asl_jax checkpoints") as no_run:
    checkpointing.load_model_from(str(tmp_path), params, stats, e)
  assert "train.total_steps=0" not in str(no_run.value)
  # An evaluation-only run's workdir (config.json, no checkpoint) is told apart.
  (tmp_path / "eval_only").mkdir()
  (tmp_path / "eval_only" / "config.json").write_text("{}")
  with pytest.raises(UserError, match=r"without asl_jax checkpoints \(a run that trained no "
                     r"step, such as an evaluation with train.total_steps=0"):
    checkpointing.load_model_from(str(tmp_path / "eval_only"), params, stats, e)
