"""Bad config values and combinations are one-paragraph errors before any
data is prepared or any step runs (README, "Bad input")."""

import os
import subprocess
import sys

import pytest

from asl_jax import config_check, train
from asl_jax.errors import UserError

from conftest import ROOT, load_config, tiny_config


@pytest.mark.parametrize("field,value,match", [
    ("model.variant", "r999", "model.variant='r999' is not allowed: it must be one of 'tiny'"),
    ("data.image_size", -5, "data.image_size=-5 is not allowed: it must be an integer >= 16"),
    ("eval.k", 0, "eval.k=0 is not allowed: it must be an integer >= 1"),
    ("loss.temperature", 0.0, "loss.temperature=0.0 is not allowed: it must be a number > 0"),
    ("data.crop_area", (0.9, 0.2), "data.crop_area=\\(0.9, 0.2\\)"),
    ("data.pair_ids_per_batch", 3, "even \\(two identities per pair\\)"),
    ("eval.decision", "maybe", "eval.decision='maybe'"),
    ("eval.verify.cover", 1.5, "eval.verify.cover=1.5"),
    ("optim.b2", 1.0, "optim.b2=1.0"),
    ("model.bn_groups", 3, "does not divide the 128 images"),
])
def test_bad_fields_are_named_before_any_work(tmp_path, field, value, match):
  c = load_config()
  c.data.data_dir = str(tmp_path / "data")
  section, _, name = field.rpartition(".")
  node = c
  for part in section.split("."):
    node = node[part]
  node[name] = value
  with pytest.raises(UserError, match=match):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "data")  # Nothing was prepared.
  assert not os.path.exists(tmp_path / "run")


def test_the_default_configs_pass():
  for arg in (None, "ndec", "ndec_baseline", "ndec_sscd", "ndec_sscd_baseline", "photos"):
    config_check.validate(load_config(arg), num_devices=1)


def test_workdir_naming_a_file_and_k_above_the_references(tmp_path, tiny_builder, data_dir):
  c = tiny_config(data_dir)
  path = tmp_path / "notes.txt"
  path.write_text("keep me")
  with pytest.raises(UserError, match="is an existing file"):
    train.train_and_evaluate(c, str(path))
  assert path.read_text() == "keep me"
  c.eval.k = 41  # The tiny set has 40 references.
  with pytest.raises(UserError, match="eval.k=41 is not allowed: it must be at most the 40"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")
  c.eval.k = 5
  c.eval.data_name = "ndec/nothing"
  with pytest.raises(UserError, match="not a config of the ndec dataset"):
    train.train_and_evaluate(c, str(tmp_path / "run"))


def test_main_prints_one_paragraph_and_exits_2(tmp_path):
  r = subprocess.run([sys.executable, "-m", "asl_jax.main", "--config", "configs/asl.py",
                      "--config.model.variant=r999", f"--workdir={tmp_path / 'run'}",
                      f"--config.data.data_dir={tmp_path / 'data'}"],
                     cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 2
  assert "Traceback" not in r.stderr
  assert "asl_jax: error: --config.model.variant='r999' is not allowed" in r.stderr
