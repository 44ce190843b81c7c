"""Fine-tuning moves the gate norms the way the information amount points.

A tiny model from random init, only its separate gate head training
(model.gate_feature=gate_head, optim.trainable) on views that are NOT cropped
(data.crop_area=(1, 1)): their information amount comes from
data.edit_information alone, as for photo_dev's copies that crop nothing. A
few updates must raise |g(original)| / |g(edited view)| on views never
trained on; with the norm-ratio loss off, without the edit factors (all
amounts 1: no pair to order) or with the amounts reversed, it must not.
"""

import functools

import jax
import numpy as np
import pytest

from asl_jax import copy_edits, input_pipeline, optim, sharding, train
from asl_jax.errors import UserError
from asl_jax.models import resnet
from conftest import load_config

EDITS = {"blur": 1.0, "pixelize": 1.0, "text": 0.5, "jpeg": 1.0}
FACTORS = {"blur": 0.8, "pixelize": 0.7, "text": 0.85, "jpeg": 0.85}


def _config(norm_ratio=1.0, information=FACTORS):
  c = load_config()
  c.data.update(ids_per_batch=8, views_per_id=3, image_size=32, crop_area=(1.0, 1.0),
                train_edits=dict(EDITS), edit_information=dict(information))
  c.model.update(width=8, projector_dims=(32, 64), descriptor_dim=16, gate_feature="gate_head",
                 gate_head_dims=(32, 16))
  # With the norm-ratio loss off, InfoNCE stays so that there is a loss; the
  # gate head's stop-gradient keeps it from the gate.
  c.loss.update(info_nce=0.0 if norm_ratio else 1.0, norm_ratio=norm_ratio)
  c.optim.update(learning_rate=3e-2, warmup_steps=0, weight_decay=0.0,
                 trainable="model/gate_fc")
  c.train.batch_norm = "frozen"
  return c


def _batch(c, seed):
  return _views(tuple(sorted(c.data.edit_information.items())), seed)


@functools.cache  # Made once for every test (the PIL edits are the slow part).
def _views(information, seed):
  c = _config(information=dict(information))
  rng = np.random.default_rng(seed)
  spec = input_pipeline.view_spec(c.data)
  out = [input_pipeline.make_views(copy_edits.random_background(rng, (64, 64)), rng, spec)
         for _ in range(c.data.ids_per_batch)]
  return {"views": np.stack([v for v, _ in out]),
          "information_amount": np.stack([a for _, a in out]),
          "label": np.arange(len(out), dtype=np.int32)}


def _ratio(model, state, batch):
  """Mean |g(view 0)| / |g(view k)| over the edited views."""
  views = batch["views"]
  aux = model.apply({"params": state.params["model"], "batch_stats": state.batch_stats},
                    resnet.images_to_input(views.reshape((-1,) + views.shape[2:])))
  norms = np.linalg.norm(np.asarray(aux["gate_feature"]), axis=-1).reshape(views.shape[:2])
  return float(np.mean(norms[:, :1] / norms[:, 1:]))


def _train(c, steps=40, reverse=False):
  """(ratio before, ratio after on a held-out batch, {leaf path: unchanged})."""
  mesh = sharding.make_mesh()
  model = resnet.build(c.model)
  tx, schedule = train.make_optimizer(c.optim, steps)
  state = train.init_state(model, None, tx, c, jax.random.key(0), mesh)
  before_params = jax.device_get(state.params)
  update = train.make_update_fn(model, None, tx, schedule, c, mesh, state)
  held_out = _batch(c, 999)
  before = _ratio(model, state, held_out)
  for step in range(steps):
    batch = dict(_batch(c, step % 4))
    if reverse:
      batch["information_amount"] = 1.0 / batch["information_amount"]
    state, _ = update(state, sharding.global_batch(batch, mesh), jax.random.key(1))
  after_params = jax.device_get(state.params)
  same = {jax.tree_util.keystr(p): np.array_equal(a, b) for (p, a), b in zip(
      jax.tree_util.tree_leaves_with_path(before_params), jax.tree.leaves(after_params),
      strict=True)}
  return before, _ratio(model, state, held_out), same


def _frozen(same) -> bool:
  """Every leaf outside the gate (gate_fc*, gate_trunk_*) kept its value."""
  return all(v for k, v in same.items() if "gate_" not in k)


def test_edit_factors_set_the_amount_of_uncropped_views():
  batch = _batch(_config(), 0)
  amounts = batch["information_amount"]
  assert np.all(amounts[:, 0] == 1.0)
  assert np.all(amounts[:, 1:] < 1.0)  # Blur, pixelize, JPEG always fire.
  assert np.all(amounts[:, 1:] >= 0.8 * 0.7 * 0.85 * 0.85 - 1e-6)
  assert np.all(_batch(_config(information={}), 0)["information_amount"] == 1.0)


def test_fine_tuning_raises_the_norm_ratio_of_original_over_copy():
  before, after, same = _train(_config())
  assert after > before * 1.05, (before, after)
  assert _frozen(same)  # optim.trainable: only the gate head moved.


def test_the_gates_own_trunk_learns_the_ratio_and_the_descriptor_stays():
  """model.gate_feature=gate_trunk (sscd_photos' gate): the gate's copy of
  the trunk and its head train, at a tenth of the rate for the copy; the
  descriptor's trunk and head do not move."""
  c = _config()
  c.model.gate_feature = "gate_trunk"
  c.optim.update(trainable="model/gate_", lr_mults=(("model/gate_trunk_", 0.1),))
  before, after, same = _train(c)
  assert after > before * 1.05, (before, after)
  assert _frozen(same)
  assert not all(v for k, v in same.items() if "gate_trunk_" in k)  # The copy trained.


@pytest.mark.parametrize("case", ["loss_off", "no_edit_factors", "reversed"])
def test_without_the_loss_or_the_right_amounts_the_ratio_does_not_rise(case):
  c = _config(norm_ratio=0.0 if case == "loss_off" else 1.0,
              information={} if case == "no_edit_factors" else FACTORS)
  before, after, _ = _train(c, reverse=case == "reversed")
  if case == "reversed":
    assert after < before / 1.05, (before, after)
  else:
    assert after == pytest.approx(before, rel=1e-5)


def test_bad_information_factor_and_trainable_are_user_errors():
  with pytest.raises(ValueError, match="'blur' is 1.5; give one in \\(0, 1\\]"):
    copy_edits.check_information({"blur": 1.5})
  with pytest.raises(ValueError, match="area fraction"):
    copy_edits.check_information({"crop": 0.5})
  params = {"model": {"gate_fc1": {"kernel": np.zeros(2)}, "embed_fc": {"kernel": np.zeros(2)}}}
  mask = train.trainable_mask(params, "model/gate_fc")
  assert mask == {"model": {"gate_fc1": {"kernel": True}, "embed_fc": {"kernel": False}}}
  with pytest.raises(UserError, match="matches no parameter.*This model's parameter paths look "
                     "like 'model/embed_fc/kernel', 'model/gate_fc1/kernel';"):
    optim.check_trainable(params, "layer9")


@pytest.mark.parametrize("field,value,message", [
    ("trainable", "layer9", "optim.trainable='layer9' matches no parameter"),
    ("lr_mults", (("layer9", 0.1),), "'layer9' matches no parameter that trains")])
def test_bad_parameter_patterns_stop_before_data_is_prepared(tmp_path, field, value, message):
  from conftest import tiny_config
  c = tiny_config(str(tmp_path / "tfds"))
  c.optim[field] = value
  with pytest.raises(UserError, match=message):
    train.train(c, str(tmp_path / "run"))
  assert not (tmp_path / "tfds").exists() and not (tmp_path / "run").exists()


def test_sscd_recipes_name_their_missing_files_before_any_work():
  from asl_jax import config_check
  c = load_config("sscd_photos")
  with pytest.raises(UserError, match="needs --config.data.manual_dir"):
    config_check.validate(c)
  c.data.manual_dir = "photos"
  with pytest.raises(UserError, match="needs --config.model.init_from.*sscd_distilled.onnx"):
    config_check.validate(c)
  c.model.init_from = "sscd_distilled.onnx"
  config_check.validate(c)
  c = load_config("ndec_sscd_asl")  # NDEC's download has a default place.
  with pytest.raises(UserError, match="needs --config.model.init_from"):
    config_check.validate(c)


@pytest.mark.parametrize("variant,blocks", [
    ("mnv4s", ["blocks_3_3", "blocks_3_4", "blocks_3_5", "blocks_4_0"]),
    ("r50", ["layer3_3", "layer3_4", "layer3_5", "layer4_0", "layer4_1", "layer4_2"])])
def test_sscd_photos_trains_the_gate_layer_and_its_trunks_last_blocks(variant, blocks):
  from asl_jax.train_state import abstract_params
  c = load_config("sscd_photos")
  c.model.update(variant=variant, width=16)
  mask = optim.trainable_mask(abstract_params(c), c.optim.trainable)
  trains = {"/".join(str(getattr(k, "key", k)) for k in p[:2])
            for p, t in jax.tree_util.tree_leaves_with_path(mask) if t}
  assert trains == {"model/gate_fc1", "model/gate_trunk_gem",
                    *(f"model/gate_trunk_{b}" for b in blocks)}


def test_lr_mults_scale_each_parameters_learning_rate():
  from asl_jax import config_check
  c = load_config("sscd_photos")
  c.optim.update(warmup_steps=0, warmup_init_factor=1.0, weight_decay=0.0, trainable="",
                 lr_mults=(("model/blocks", 0.0), ("model/gate", 0.1)))
  tx, _ = optim.make_optimizer(c.optim, total_steps=10)
  params = {"model": {"blocks_0_0": {"kernel": np.ones(3)}, "gate_fc1": {"kernel": np.ones(3)},
                      "embed_fc": {"kernel": np.ones(3)}}}
  grads = jax.tree.map(np.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  lr = c.optim.learning_rate  # Adam's first step moves every leaf by the rate itself.
  np.testing.assert_allclose(updates["model"]["embed_fc"]["kernel"], -lr, rtol=1e-3)
  np.testing.assert_allclose(updates["model"]["gate_fc1"]["kernel"], -0.1 * lr, rtol=1e-3)
  np.testing.assert_allclose(updates["model"]["blocks_0_0"]["kernel"], 0.0)
  optim.check_lr_mults(params, c.optim.lr_mults, log=lambda m: None)
  with pytest.raises(UserError, match="'layer9' matches no parameter that trains") as e:
    optim.check_lr_mults(params, (("layer9", 0.1),))
  assert "layer4_2" not in str(e.value) and "'model/gate_fc1/kernel'" in str(e.value)
  with pytest.raises(UserError, match="'model/blocks' matches no parameter that trains"):
    optim.check_lr_mults(params, (("model/blocks", 0.1),), trainable="model/gate")
  with pytest.raises(UserError, match="only ones an earlier pattern takes"):
    optim.check_lr_mults(params, (("model", 0.1), ("gate", 0.5)))
  c.data.manual_dir, c.model.init_from = "photos", "sscd_distilled.onnx"
  config_check.validate(c)
  for bad in ((("model", -1.0),), (("(", 0.1),), ("model",)):
    c.optim.lr_mults = bad
    with pytest.raises(UserError, match="optim.lr_mults"):
      config_check.validate(c)
