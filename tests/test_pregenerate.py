"""Views generated offline (BoT's way) and read back by the training pipeline."""

import io
import os

import grain
import numpy as np
import pytest
from PIL import Image

from asl_jax import data, input_pipeline, pregenerate, train, views
from asl_jax.errors import UserError
from conftest import tiny_config

VIEWS = 5


def _config(data_dir, views_dir=""):
  c = tiny_config(data_dir)
  c.data.update(pair_ids_per_batch=0, views_dir=views_dir)
  return c


def _records(out_dir):
  files = sorted(f for f in os.listdir(out_dir) if f.startswith("views.array_record"))
  src = grain.sources.ArrayRecordDataSource([os.path.join(out_dir, f) for f in files])
  return [src[i] for i in range(len(src))]


@pytest.fixture(scope="module")
def views_dir(tiny_builder, data_dir, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("views"))
  pregenerate.generate(_config(data_dir), out, views=VIEWS, shards=3, workers=0,
                       log=lambda *a: None)
  return out


def test_every_identity_gets_its_views_and_amounts(views_dir, tiny_builder):
  n = len(data.source(tiny_builder, "train"))
  records = _records(views_dir)
  assert len(records) == n and len(os.listdir(views_dir)) == 4  # 3 shards + views.json
  for i, blob in enumerate(records):
    label, amounts, jpegs = pregenerate.unpack(blob)
    assert label == i and len(jpegs) == VIEWS and amounts.shape == (VIEWS,)
    assert amounts[0] == 1.0 and np.all((amounts[1:] > 0.18) & (amounts[1:] <= 1))  # Pixel areas.
    assert Image.open(io.BytesIO(jpegs[1])).size == (32, 32)
  # View 0 is the original resized (up to JPEG loss).
  rec = data.source(tiny_builder, "train")[3]
  want = np.asarray(data.decode_pil(rec["image"], rec).resize((32, 32), Image.BILINEAR), float)
  got = np.asarray(Image.open(io.BytesIO(pregenerate.unpack(records[3])[2][0])), float)
  assert np.abs(got - want).mean() < 4


def test_workers_and_resuming_give_the_same_files(views_dir, data_dir, tmp_path):
  out = str(tmp_path / "v")
  pregenerate.generate(_config(data_dir), out, views=VIEWS, shards=3, workers=2,
                       part=(1, 2), log=lambda *a: None)  # One of two hosts: shard 1 only.
  assert sorted(os.listdir(out)) == ["views.array_record-00001-of-00003", "views.json"]
  before = os.stat(os.path.join(out, "views.array_record-00001-of-00003")).st_mtime_ns
  pregenerate.generate(_config(data_dir), out, views=VIEWS, shards=3, workers=2,
                       log=lambda *a: None)  # Continues: writes 0 and 2, keeps 1.
  assert os.stat(os.path.join(out, "views.array_record-00001-of-00003")).st_mtime_ns == before
  assert _records(out) == _records(views_dir)  # Views depend only on (seed, identity),
  other = str(tmp_path / "two_shards")        # not on the shards either.
  pregenerate.generate(_config(data_dir), other, views=VIEWS, shards=2, workers=0,
                       log=lambda *a: None)
  assert _records(other) == _records(views_dir)


def test_other_settings_in_the_directory_are_refused_and_kept(views_dir, data_dir):
  listing = {f: os.stat(os.path.join(views_dir, f)).st_mtime_ns for f in os.listdir(views_dir)}
  with pytest.raises(UserError, match=r"other settings \(views: 5 there, 6 now\)"):
    pregenerate.generate(_config(data_dir), views_dir, views=6, shards=3, workers=0)
  assert {f: os.stat(os.path.join(views_dir, f)).st_mtime_ns
          for f in os.listdir(views_dir)} == listing


def test_training_reads_k_of_the_views_per_identity(views_dir, tiny_builder, data_dir):
  cfg = _config(data_dir, views_dir).data
  train_src = data.source(tiny_builder, "train")
  stored = {i: pregenerate.unpack(b)[1] for i, b in enumerate(_records(views_dir))}
  it = iter(input_pipeline.train_dataset(train_src, None, cfg, seed=0))
  batch = next(it)
  assert batch["views"].shape == (8, 4, 32, 32, 3) and batch["views"].dtype == np.uint8
  assert len(set(batch["label"].tolist())) == 8
  for label, amounts in zip(batch["label"], batch["information_amount"], strict=True):
    assert set(np.round(amounts, 6)) <= set(np.round(stored[int(label)], 6))
  again = next(iter(input_pipeline.train_dataset(train_src, None, cfg, seed=0)))
  np.testing.assert_array_equal(batch["views"], again["views"])


def test_views_that_do_not_fit_the_config_are_named(views_dir, tiny_builder, data_dir, tmp_path):
  train_src = data.source(tiny_builder, "train")
  cfg = _config(data_dir, views_dir).data
  cfg.image_size = 40
  with pytest.raises(UserError, match="image_size: 32 there, 40 in the config"):
    input_pipeline.train_dataset(train_src, None, cfg, seed=0)
  cfg.image_size = 32
  cfg.edit_params = {"pad": {"max_fraction": 0.05}}
  with pytest.raises(UserError, match=r"edit_params: \{\} there, \{'pad': \{'max_fraction'"):
    input_pipeline.train_dataset(train_src, None, cfg, seed=0)
  cfg.edit_params = {}
  # Their information amounts are stored: other factors or sources are refused too.
  cfg.edit_information = {"blur": 0.8}
  with pytest.raises(UserError, match=r"edit_information: None there, \{'blur': 0.8\}"):
    input_pipeline.train_dataset(train_src, None, cfg, seed=0)
  cfg.edit_information, cfg.source_crop_area = {}, (0.5, 1.0)
  with pytest.raises(UserError, match=r"source_crop_area: None there, \[0.5, 1.0\]"):
    input_pipeline.train_dataset(train_src, None, cfg, seed=0)
  cfg.source_crop_area, cfg.views_per_id = (1.0, 1.0), 6
  with pytest.raises(UserError, match="5 views per identity, fewer than data.views_per_id=6"):
    input_pipeline.train_dataset(train_src, None, cfg, seed=0)
  cfg.views_per_id = 4
  partial = tmp_path / "partial"
  pregenerate.generate(_config(data_dir), str(partial), views=VIEWS, shards=3, workers=0,
                       part=(0, 3), log=lambda *a: None)
  cfg.views_dir = str(partial)
  with pytest.raises(UserError, match="lacks 2 of its 3 shards.*Rerun the same"):
    input_pipeline.train_dataset(train_src, None, cfg, seed=0)
  cfg.views_dir = str(tmp_path / "nothing")
  with pytest.raises(UserError, match="has no views.json: make the views first"):
    input_pipeline.train_dataset(train_src, None, cfg, seed=0)
  c = _config(data_dir, views_dir)
  c.data.pair_ids_per_batch = 2
  with pytest.raises(UserError, match="data.pair_ids_per_batch=0"):
    train.train(c, str(tmp_path / "run"))


def test_a_damaged_view_is_named():
  with pytest.raises(UserError, match="pre-generated view could not be decoded.*Make the views"):
    views.PregeneratedViews(2, 32).view(b"not a jpeg", np.random.default_rng(0))


def test_each_read_view_keeps_its_own_amount():
  # View j is a flat grey of level 40 j with amount j / 10: after the flip,
  # pad and crop, a view's centre must still show the level of its amount.
  jpegs = [pregenerate._jpeg(np.full((32, 32, 3), 40 * j, np.uint8), 95) for j in range(6)]
  blob = pregenerate.pack(7, np.arange(6, dtype=np.float32) / 10, jpegs)
  reader = views.PregeneratedViews(4, 32)
  for seed in range(5):
    out = reader.random_map(blob, np.random.default_rng(seed))
    assert out["label"] == 7 and out["views"].shape == (4, 32, 32, 3)
    assert len(set(out["information_amount"].tolist())) == 4  # Without replacement.
    centre = out["views"][:, 12:20, 12:20].mean((1, 2, 3))
    np.testing.assert_allclose(centre, 400 * out["information_amount"], atol=3)
