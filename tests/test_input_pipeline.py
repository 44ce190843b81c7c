"""The training pipeline yields N x K views with their information amounts."""

import os

import numpy as np
import pytest

from asl_jax import copy_edits, data, input_pipeline, train
from asl_jax.errors import UserError
from tfds_ndec.features import encode_jpeg
from conftest import tiny_config


def test_batch_shapes_and_information_amounts(tiny_builder, data_dir):
  cfg = tiny_config(data_dir).data
  it = iter(input_pipeline.train_dataset(
      data.source(tiny_builder, "train"), data.source(tiny_builder, "train_negative_pairs"),
      cfg, seed=0))
  batch = next(it)
  assert batch["views"].shape == (8, 4, 32, 32, 3) and batch["views"].dtype == np.uint8
  assert batch["information_amount"].shape == (8, 4)
  assert batch["label"].shape == (8,)
  amounts = batch["information_amount"]
  np.testing.assert_array_equal(amounts[:, 0], 1.0)          # View 0 is whole.
  assert np.all((amounts[:, 1:] >= 0.19) & (amounts[:, 1:] <= 1.0))
  assert np.unique(amounts[:, 1:]).size > 10                   # Continuous crops.
  labels = batch["label"]
  assert np.all(labels[:6] < 48)                               # Training images.
  # The last 2 identities are one pair, side by side: labels 48 + 2i, 49 + 2i.
  assert labels[6] >= 48 and labels[7] == labels[6] + 1 and labels[6] % 2 == 0
  assert len(set(labels.tolist())) == 8


def test_same_seed_same_batch(tiny_builder, data_dir):
  cfg = tiny_config(data_dir).data
  srcs = data.source(tiny_builder, "train"), data.source(tiny_builder, "train_negative_pairs")
  a = next(iter(input_pipeline.train_dataset(*srcs, cfg, seed=1)))
  b = next(iter(input_pipeline.train_dataset(*srcs, cfg, seed=1)))
  c = next(iter(input_pipeline.train_dataset(*srcs, cfg, seed=2)))
  np.testing.assert_array_equal(a["views"], b["views"])
  assert not np.array_equal(a["views"], c["views"])


def test_process_shards_are_disjoint(tiny_builder, data_dir):
  cfg = tiny_config(data_dir).data
  cfg.pair_ids_per_batch = 0
  src = data.source(tiny_builder, "train")
  seen = []
  for p in range(2):
    it = iter(input_pipeline.train_dataset(src, None, cfg, seed=0, process_index=p,
                                           process_count=2))
    labels = np.concatenate([next(it)["label"] for _ in range(6)])
    assert np.all(labels % 2 == p)
    seen.append(set(labels.tolist()))
  assert not seen[0] & seen[1]


def test_make_views_view_zero_is_the_resized_original():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
  spec = input_pipeline.ViewSpec(3, 24, (0.5, 0.5), (("hflip", 0.0),))
  views, amounts = input_pipeline.make_views(image, rng, spec)
  np.testing.assert_array_equal(views[0], copy_edits.resize(image, (24, 24)))
  assert views.shape == (3, 24, 24, 3)
  np.testing.assert_allclose(amounts[1:], 0.5, atol=0.03)  # Exact pixel areas.


def test_a_source_crop_stands_for_the_source_at_each_visit():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
  spec = input_pipeline.ViewSpec(3, 24, (0.5, 0.5), (("hflip", 0.0),),
                                 source_crop_area=(0.25, 0.25))
  firsts = []
  for seed in range(3):
    views, amounts = input_pipeline.make_views(image, np.random.default_rng(seed), spec)
    firsts.append(views[0])
    assert np.abs(views[0].astype(int) - copy_edits.resize(image, (24, 24))).mean() > 20
    np.testing.assert_allclose(amounts, [1.0, 0.5, 0.5], atol=0.05)  # Relative to the crop.
  assert not np.array_equal(firsts[0], firsts[1])
  # The crop's pixels are the image's: view 0 is found in it at a quarter of its area.
  src_rng = np.random.default_rng(0)
  box, area = copy_edits.crop_box(60, 80, src_rng, (0.25, 0.25))
  assert area == pytest.approx(0.25, abs=0.02)
  np.testing.assert_array_equal(
      firsts[0], copy_edits.resize(image[box[1]:box[3], box[0]:box[2]], (24, 24)))


def test_bad_pair_slots_are_rejected(tiny_builder, data_dir):
  cfg = tiny_config(data_dir).data
  cfg.pair_ids_per_batch = 3
  with pytest.raises(ValueError, match="even"):
    input_pipeline.train_dataset(data.source(tiny_builder, "train"),
                                 data.source(tiny_builder, "train_negative_pairs"), cfg, seed=0)


def test_paste_onto_pastes_onto_the_given_background_without_raising_the_amount():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
  background = np.full((40, 40, 3), 7, np.uint8)
  spec = input_pipeline.ViewSpec(4, 24, (1.0, 1.0), (("paste_onto", 1.0),))
  views, amounts = input_pipeline.make_views(image, rng, spec, lambda r, min_size: background)
  # The image covers at most 0.8^2 of the background: the rest stays exactly 7.
  uncovered = (views[1:] == 7).all(-1).mean((1, 2))
  assert np.all(uncovered > 0.25), uncovered
  assert not (views[0] == 7).all(-1).any()
  np.testing.assert_array_equal(amounts, 1.0)  # Pasting never raises the amount.


def test_backgrounds_are_other_training_images():
  colours = [10, 120, 240]
  records = [{"id": f"T{i}", "filename": f"T{i}.png",
              "image": encode_jpeg(np.full((16, 16, 3), c, np.uint8))}
             for i, c in enumerate(colours)]
  backgrounds = input_pipeline.Backgrounds(records)
  rng = np.random.default_rng(0)
  seen = {int(np.round(np.asarray(backgrounds(rng, exclude=1)).mean() / 10)) * 10
          for _ in range(60)}
  assert seen == {10, 240}  # Both others, never the image itself (120).
  with pytest.raises(UserError, match="at least 2"):
    input_pipeline.Backgrounds(records[:1])


def test_bad_paste_backgrounds_or_eval_size_is_a_user_error_before_any_data(tmp_path):
  c = tiny_config(str(tmp_path / "never_built"))
  c.data.paste_backgrounds = "imagenet"
  with pytest.raises(UserError, match="paste_backgrounds='imagenet' is not allowed"):
    train.train(c, str(tmp_path / "run"))
  c.data.paste_backgrounds = "train"
  c.eval.image_size = -1
  with pytest.raises(UserError, match="eval.image_size=-1"):
    train.train(c, str(tmp_path / "run"))
  c.eval.image_size = 0
  c.data.num_workers = -2
  with pytest.raises(UserError, match="data.num_workers=-2"):
    train.train(c, str(tmp_path / "run"))
  assert not (tmp_path / "never_built").exists()  # Checked before preparing data.


def test_worker_processes_give_the_same_batches_and_restore(tiny_builder, data_dir):
  """The paper recipe runs the edit chain in Grain worker processes: the
  batches must be those of the in-process pipeline, and a saved position must
  restore into a new pipeline (a resumed run)."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # Grain's workers read their flags.
  cfg = tiny_config(data_dir).data
  srcs = data.source(tiny_builder, "train"), data.source(tiny_builder, "train_negative_pairs")
  threads = iter(input_pipeline.train_dataset(*srcs, cfg, seed=0))
  expected = [next(threads) for _ in range(4)]
  cfg.num_workers = 2
  workers = iter(input_pipeline.train_dataset(*srcs, cfg, seed=0))
  got = [next(workers) for _ in range(2)]
  state = workers.get_state()
  assert set(state) != set(threads.get_state())  # Worker processes ran, with their own state.
  resumed = iter(input_pipeline.train_dataset(*srcs, cfg, seed=0))
  resumed.set_state(state)
  got += [next(resumed), next(resumed)]
  for a, b in zip(expected, got, strict=True):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  cfg.num_workers = -1
  assert input_pipeline.worker_processes(cfg.num_workers) == len(os.sched_getaffinity(0))


def _records(n: int) -> list[dict]:
  return [{"id": f"T{i}", "filename": f"T{i}.png",
           "image": encode_jpeg(np.full((8, 8, 3), 3 * i, np.uint8))} for i in range(n)]


def test_batches_hold_distinct_identities_across_epoch_boundaries(data_dir):
  """RS@k's fixed positive slots drop a second copy of an identity, so no
  batch may hold one twice; 11 images in batches of 4 make most epochs end
  mid-batch (shuffle().repeat().batch() repeated identities there). Each
  epoch's 2 whole batches are 8 distinct images, and a saved position
  resumes exactly."""
  cfg = tiny_config(data_dir).data
  cfg.update(pair_ids_per_batch=0, ids_per_batch=4, views_per_id=2, image_size=8)
  cfg.train_edits = {}
  src = _records(11)
  it = iter(input_pipeline.train_dataset(src, None, cfg, seed=0))
  batches = [next(it) for _ in range(12)]  # 6 epochs.
  labels = [b["label"].tolist() for b in batches]
  for b in batches:  # The label is the image's index in every epoch (image i is grey 3i).
    np.testing.assert_allclose(b["views"][:, 0].mean((1, 2, 3)), 3 * b["label"], atol=1.5)
  for batch in labels:
    assert len(set(batch)) == 4, labels
  for e in range(6):
    epoch = labels[2 * e] + labels[2 * e + 1]
    assert len(set(epoch)) == 8, (e, labels)  # No image twice within an epoch either.
  assert len({tuple(sorted(b)) for b in labels}) > 6  # Reshuffled every epoch.
  it = iter(input_pipeline.train_dataset(src, None, cfg, seed=0))
  for _ in range(5):
    next(it)
  resumed = iter(input_pipeline.train_dataset(src, None, cfg, seed=0))
  resumed.set_state(it.get_state())
  assert [next(resumed)["label"].tolist() for _ in range(7)] == labels[5:]


def test_pair_slots_are_distinct_too_and_a_too_small_source_is_refused(data_dir):
  cfg = tiny_config(data_dir).data
  cfg.update(pair_ids_per_batch=4, ids_per_batch=6, views_per_id=2, image_size=8)
  cfg.train_edits = {}
  src = _records(5)
  pairs = [{**r, "partner": s} for r, s in zip(_records(3), _records(6)[3:])]
  it = iter(input_pipeline.train_dataset(src, pairs, cfg, seed=0))
  for _ in range(8):
    labels = next(it)["label"].tolist()
    assert len(set(labels)) == 6, labels
    assert max(labels[:2]) < 5 and 5 <= min(labels[2:]) and max(labels[2:]) < 11, labels
  cfg.ids_per_batch = 10
  with pytest.raises(UserError, match="6 distinct training images per process but .* only 5"):
    input_pipeline.train_dataset(src, pairs, cfg, seed=0)
