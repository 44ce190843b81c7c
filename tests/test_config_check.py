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
    ("model.gate_head_dims", (64, 0), "model.gate_head_dims=\\(64, 0\\) is not allowed: it "
     "must be one or more positive integers"),
    ("model.gate_head_dims", (), "model.gate_head_dims=\\(\\) is not allowed"),
    ("eval.gate_sizes", (224, 16), "eval.gate_sizes=\\(224, 16\\) is not allowed: it must "
     "be a tuple of square sides in pixels, each 32-4096"),
    ("eval.gate_sizes", ("224",), "eval.gate_sizes=\\('224',\\) is not allowed"),
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
    c = load_config(arg)
    if arg == "photos":  # No default folder: the recipe names the flag it needs.
      with pytest.raises(UserError, match="--config.data.manual_dir"):
        config_check.validate(c, num_devices=1)
      c.data.manual_dir = "~/my_photos"
    config_check.validate(c, num_devices=1)
  for arg in (None, "sym", "sym_asl", "asym", "asym_asl", "ndec_sym", "ndec_asym_asl",
              "photos_sym_asl"):
    c = load_config(arg, "recall_surrogate.py")
    if arg and arg.startswith("photos"):
      c.data.manual_dir = "~/my_photos"
    config_check.validate(c, num_devices=1)
    assert c.loss.rs_at_k == 1.0 and c.loss.info_nce == 0.0
  c = load_config()
  c.model.gate_head_dims = (64,)  # One linear layer (sscd_photos' gate head).
  config_check.validate(c, num_devices=1)
  c = load_config("ndec_asym", "recall_surrogate.py")
  assert (c.data.ids_per_batch * c.data.views_per_id, c.train.num_chunks) == (4000, 20)
  assert c.model.variant == "r50" and c.loss.rs_design == "asymmetric"
  config_check.validate(c, num_devices=8)
  with pytest.raises(ValueError, match="Unknown config variant 'symm'.*asym_asl"):
    load_config("symm", "recall_surrogate.py")


@pytest.mark.parametrize("overrides,match", [
    (dict(train__num_chunks=3), "train.num_chunks=3 is not allowed: it must be a divisor of "
     "the batch of data.ids_per_batch x data.views_per_id = 128"),
    (dict(train__num_chunks=64), "each chunk of 128 / 64 = 2 images splits evenly over the 8"),
    (dict(loss__rs_k=(1, 2, 200)), r"loss.rs_k=\(1, 2, 200\) is not allowed: it must be k "
     "values of at most 127"),
    (dict(loss__rs_design="asymmetric", loss__rs_k=(1, 64), loss__rs_distractor_ids=4),
     "at most 44, the database items each query is ranked against in this asymmetric"),
    (dict(data__views_per_id=1), "at least 2 for the symmetric RS@k design"),
    (dict(loss__simix=True, data__views_per_id=5), "loss.simix=True is not allowed: it must be "
     "used with 3, 4, 6 mixed views per image"),
    (dict(loss__rs_tau2=0.0), "loss.rs_tau2=0.0 is not allowed: it must be a number > 0"),
    (dict(loss__rs_tau1=-1.0), "loss.rs_tau1=-1.0 is not allowed"),
    (dict(loss__rs_distractor_ids=5), "a divisor of data.ids_per_batch=32 below it"),
    (dict(loss__rs_at_k=0.0, loss__simix=True), "SiMix mixes the embeddings of the RS@k loss"),
])
def test_bad_recall_surrogate_settings_are_named(overrides, match):
  c = load_config(None, "recall_surrogate.py")
  c.loss.rs_design = "symmetric"
  c.loss.rs_distractor_ids = 0
  for key, value in overrides.items():
    section, name = key.split("__")
    c[section][name] = value
  with pytest.raises(UserError, match=match):
    config_check.validate(c, num_devices=8)


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


def test_training_data_settings_are_checked_before_any_data(tmp_path):
  """train_and_evaluate prepares the data before it trains: a bad data.train_edits
  or data.num_workers must stop it first (config_check.validate), with nothing built."""
  c = tiny_config(str(tmp_path / "never_built"))
  c.data.edit_params = {"blur": {"radius": 2.0}}
  with pytest.raises(UserError, match=r"data.edit_params: Copy edit 'blur' has no parameter"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  c.data.edit_params = {}
  c.data.num_workers = -2
  with pytest.raises(UserError, match="data.num_workers=-2"):
    config_check.validate(c, num_devices=1)
  assert not (tmp_path / "never_built").exists()


def test_main_prints_one_paragraph_and_exits_2(tmp_path):
  r = subprocess.run([sys.executable, "-m", "asl_jax.main", "--config", "configs/asl.py",
                      "--config.model.variant=r999", f"--workdir={tmp_path / 'run'}",
                      f"--config.data.data_dir={tmp_path / 'data'}"],
                     cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 2
  assert "Traceback" not in r.stderr
  assert "asl_jax: error: --config.model.variant='r999' is not allowed" in r.stderr


def test_recipe_files_load_by_absolute_path_from_another_directory(tmp_path):
  """configs/recall_surrogate.py imports configs.common (the package installed
  with asl_jax): ml_collections loads the file by path, from anywhere."""
  r = subprocess.run([sys.executable, "-m", "asl_jax.main", "--config",
                      os.path.join(ROOT, "configs", "recall_surrogate.py") + ":asym",
                      "--config.model.variant=r999", f"--workdir={tmp_path / 'run'}"],
                     cwd=tmp_path, capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=ROOT))
  assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert "asl_jax: error: --config.model.variant='r999' is not allowed" in r.stderr


def test_an_older_config_json_is_completed_from_the_recipes_defaults(tmp_path):
  """run_config.complete (what inference.read_config loads a run with): fields a
  saved config lacks come from configs/common.py; saved values, and the edit
  maps a recipe chose whole, stay as saved."""
  import json

  from asl_jax import inference, run_config
  saved = run_config.as_dict(load_config("ndec"))
  del saved["eval"]["resize"], saved["model"]["small_conv"], saved["eval"]["verify"]
  saved["model"]["width"] = 7
  (tmp_path / "config.json").write_text(json.dumps(saved))
  c = inference.read_config(str(tmp_path))
  assert c.eval.resize == "square" and c.model.small_conv == "auto"
  assert c.eval.verify.to_dict() == load_config().eval.verify.to_dict()
  assert c.model.width == 7 and c.data.image_size == 256
  assert dict(c.data.train_edits) == dict(load_config("ndec").data.train_edits)
  assert "resize" not in c.data.train_edits  # The demo's edit list is not mixed in.
