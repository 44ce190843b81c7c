"""ndec/full and ndec/disc21_dev from fake manual directories in every layout
the builder accepts, and every bad input it must catch (no TensorFlow, no
network)."""

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import tfds_ndec
from tfds_ndec import fake_layout, manual, shards

SMALL = fake_layout.FakeLayout(num_train=7, num_references=9, num_queries=6, num_copies=3,
                               num_pairs=3, num_dev_queries=5, num_dev_copies=2,
                               width=40, height=30)


def prepare(manual_dir, data_dir, source="full", **kwargs):
  config = tfds_ndec.real_config(source, kwargs.pop("max_side", 0))
  builder = tfds_ndec.Builder(config=config, data_dir=str(data_dir),
                              file_format="array_record", **kwargs)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def column(source, field):
  return [source[i][field].decode() if isinstance(source[i][field], bytes) else source[i][field]
          for i in range(len(source))]


@pytest.mark.parametrize("layout", [
    SMALL,
    fake_layout.FakeLayout(**{**SMALL.__dict__, "sharded": True, "crlf": True, "bom": True,
                              "header": False, "trailing_blank_lines": 3,
                              "query_ext": ".png"}),
    fake_layout.FakeLayout(**{**SMALL.__dict__, "sharded": True, "query_ext": ".jpeg"}),
], ids=["flat", "sharded-crlf-bom-noheader-png", "sharded-jpeg"])
def test_full_reads_back_exactly(tmp_path, layout):
  gt = fake_layout.write(str(tmp_path / "manual"), layout)
  b = prepare(tmp_path / "manual", tmp_path / "data")
  counts = {k: v.num_examples for k, v in b.info.splits.items()}
  assert counts == {"train": 7, "train_negative_pairs": 3, "references": 9, "queries": 6}
  src = {s: b.as_data_source(split=s) for s in counts}
  assert column(src["train"], "id") == [f"T{i:06d}" for i in range(7)]
  assert column(src["references"], "id") == [f"R{i:06d}" for i in range(9)]
  q = src["queries"]
  assert list(zip(column(q, "id"), column(q, "reference_id"))) == gt["ndec"]
  assert column(q, "kind") == ["copy"] * 3 + ["negative"] * 3
  assert column(q, "filename")[0] == f"query_images_h5/Q00000{layout.query_ext}"
  assert q[0]["image"].shape == (30 - 2 * (30 // 8), 40 - 2 * (40 // 8), 3)
  pairs = src["train_negative_pairs"]
  assert column(pairs, "pair_id") == ["00001", "00002", "00003"]
  assert column(pairs, "id") == ["T900000", "T900001", "T900002"]
  assert [p["id"].decode() for p in (pairs[i]["partner"] for i in range(3))] == [
      "00001/00001_neg", "00002/00002_neg", "00003/00003_neg"]
  first = src["train"][0]["filename"].decode()
  assert first == ("train_0/T000000.jpg" if layout.sharded else "train/T000000.jpg")
  assert b.info.metadata["num_skipped_images"] == 0


def test_disc21_dev_and_reencoding(tmp_path):
  gt = fake_layout.write(str(tmp_path / "manual"), SMALL)
  b = prepare(tmp_path / "manual", tmp_path / "data", "disc21_dev")
  assert {k: v.num_examples for k, v in b.info.splits.items()} == {"references": 9, "queries": 5}
  q = b.as_data_source(split="queries")
  assert list(zip(column(q, "id"), column(q, "reference_id"))) == gt["dev"]
  # Originals are stored byte for byte...
  raw = tfds.builder_from_directory(b.data_dir).as_data_source(
      split="references", decoders={"image": tfds.decode.SkipDecoding()})
  with open(tmp_path / "manual/references/R000000.jpg", "rb") as f:
    assert raw[0]["image"] == f.read()
  # ...and re-encoded at a maximum side when asked, in their own directory.
  small = prepare(tmp_path / "manual", tmp_path / "data", "disc21_dev", max_side=20)
  assert small.info.config_name == "disc21_dev_20_q90"
  assert small.as_data_source(split="references")[0]["image"].shape == (15, 20, 3)


def test_pngs_with_alpha_and_grayscale_jpegs_decode_to_rgb(tmp_path):
  path = tmp_path / "a.png"
  Image.fromarray(np.full((5, 6, 4), 200, np.uint8)).save(path)
  data = manual.load_image(str(path), manual.Encoding())
  assert Image.open(io.BytesIO(data)).mode == "RGB"
  path = tmp_path / "g.jpg"
  Image.fromarray(np.full((5, 6), 100, np.uint8)).save(path)
  data = manual.load_image(str(path), manual.Encoding())
  im = Image.open(io.BytesIO(data))
  assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (6, 5))


def test_parallel_prepare_matches_sequential(tmp_path, monkeypatch):
  fake_layout.write(str(tmp_path / "manual"), SMALL)
  monkeypatch.setattr(shards, "MAX_SHARD_EXAMPLES", 2)
  one = prepare(tmp_path / "manual", tmp_path / "a", num_workers=1)
  # Spawned workers re-read the constant, so they plan in the parent only:
  # the plan (and hence the shards) comes from this process.
  two = prepare(tmp_path / "manual", tmp_path / "b", num_workers=2)
  assert one.info.splits["train"].num_shards == 4
  for split in one.info.splits:
    a = one.as_data_source(split=split)
    b = two.as_data_source(split=split)
    assert column(a, "id") == column(b, "id")
    assert all(np.array_equal(a[i]["image"], b[i]["image"]) for i in range(len(a)))


# ---------------------------------------------------------------- bad input --
def test_missing_manual_dir_and_missing_parts(tmp_path):
  with pytest.raises(manual.ManualDirError, match="does not exist"):
    prepare(tmp_path / "nowhere", tmp_path / "data")
  fake_layout.write(str(tmp_path / "manual"), SMALL)
  shutil.rmtree(tmp_path / "manual/references")
  shutil.rmtree(tmp_path / "manual/negative_pair")
  os.remove(tmp_path / "manual/public_ground_truth_h5.csv")
  with pytest.raises(manual.ManualDirError) as e:
    prepare(tmp_path / "manual", tmp_path / "data")
  message = str(e.value)
  for needed in ("references_[0-9]*", "negative_pair", "public_ground_truth_h5.csv",
                 "query_images_h5/Q00000.jpg"):  # The last from the instructions.
    assert needed in message
  assert "train_[0-9]*" not in message.split("(looked for)")[1].split("\n\n")[0]
  assert not (tmp_path / "data/ndec/full/1.1.0").exists()  # Nothing half-prepared.


def write_gt(manual_dir, text):
  with open(os.path.join(manual_dir, "public_ground_truth_h5.csv"), "w") as f:
    f.write(text)


@pytest.mark.parametrize("rows, expected", [
    ("Q00000,R000001\nQ00000,R000002\n", r"line 3: duplicate row for Q00000 \(first on line 2\)"),
    ("Q00000,R000001,extra\n", r"line 2: 'Q00000,R000001,extra' \(3 fields, expected 2\)"),
    ("Q00000 R000001\n", r"line 2: 'Q00000 R000001' \(1 fields"),
    ("Q00042,\n", r"1 rows name a query with no image .*line 2: Q00042"),
    ("Q00000,R123456\n", r"1 rows name a reference with no image .*line 2: Q00000,R123456"),
])
def test_bad_ground_truth_names_file_and_line(tmp_path, rows, expected):
  fake_layout.write(str(tmp_path / "manual"), SMALL)
  good = "".join(f"{q},{r}\n" for q, r in
                 [(f"Q{i:05d}", "") for i in range(1, 6)])
  write_gt(tmp_path / "manual", "query_id,reference_id\n" + rows + good)
  with pytest.raises(manual.GroundTruthError, match=expected) as e:
    prepare(tmp_path / "manual", tmp_path / "data")
  assert "public_ground_truth_h5.csv" in str(e.value)


def test_a_header_with_other_column_names_is_pointed_at(tmp_path):
  fake_layout.write(str(tmp_path / "manual"), SMALL)
  rows = "".join(f"Q{i:05d},\n" for i in range(6))
  write_gt(tmp_path / "manual", "qid,rid\n" + rows)
  with pytest.raises(manual.GroundTruthError, match=r"first row \(qid,rid\) names no image "
                     r"while the next does: if it is a header, name its columns "
                     r"query_id,reference_id"):
    prepare(tmp_path / "manual", tmp_path / "data")
  # A first row that is an unknown id after a proper header gets no such hint.
  write_gt(tmp_path / "manual", "query_id,reference_id\nQ00042,\n" + rows)
  with pytest.raises(manual.GroundTruthError) as e:
    prepare(tmp_path / "manual", tmp_path / "data")
  assert "if it is a header" not in str(e.value)


def test_query_image_without_a_row_is_an_error(tmp_path):
  fake_layout.write(str(tmp_path / "manual"), SMALL)
  write_gt(tmp_path / "manual", "query_id,reference_id\n" + "".join(
      f"Q{i:05d},\n" for i in range(5)))
  with pytest.raises(manual.GroundTruthError, match=r"1 query images have no row \(Q00005\)"):
    prepare(tmp_path / "manual", tmp_path / "data")


def truncate(path):
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 2])


def test_unreadable_image_stops_or_is_skipped_and_listed(tmp_path, capsys):
  fake_layout.write(str(tmp_path / "manual"), SMALL)
  truncate(tmp_path / "manual/train/T000003.jpg")
  with open(tmp_path / "manual/references/R000004.jpg", "wb") as f:
    f.write(b"not an image")
  with pytest.raises(manual.BadImageError, match=r"train/T000003.jpg.*Replace the file.*"
                     r"--config.data.skip_bad_images=True for asl_jax.main"):
    prepare(tmp_path / "manual", tmp_path / "data")
  text = str(tmp_path / "manual/references/R000004.jpg")
  with pytest.raises(manual.BadImageError) as e:
    manual.load_image(text, manual.Encoding(0, 90))
  assert str(e.value) == (f"{text}: not an image PIL can identify (empty, cut off, or "
                          "another kind of file with an image's name)")
  b = prepare(tmp_path / "manual", tmp_path / "data", skip_bad_images=True)
  assert b.info.splits["train"].num_examples == 6
  assert b.info.splits["references"].num_examples == 8
  assert "T000003" not in column(b.as_data_source(split="train"), "id")
  assert "Skipped 2 unreadable images" in capsys.readouterr().out
  reloaded = tfds.builder_from_directory(b.data_dir).info.metadata
  assert reloaded["num_skipped_images"] == 2
  assert [s.split(":")[0] for s in reloaded["skipped_images"]["train"]] == [
      str(tmp_path / "manual/train/T000003.jpg")]
  assert list(reloaded["skipped_images"]) == ["train", "references"]


def test_interrupted_prepare_resumes_without_duplicates(tmp_path, monkeypatch, capsys):
  fake_layout.write(str(tmp_path / "manual"), SMALL)
  monkeypatch.setattr(shards, "MAX_SHARD_EXAMPLES", 2)
  good = (tmp_path / "manual/references/R000005.jpg").read_bytes()
  truncate(tmp_path / "manual/references/R000005.jpg")  # Shard 3 of references fails.
  with pytest.raises(manual.BadImageError):
    prepare(tmp_path / "manual", tmp_path / "data")
  work = tmp_path / "data/downloads/ndec_prepare/full-1.1.0"
  finished = sorted(p.name for p in work.iterdir() if p.name.endswith(".json"))
  assert len(finished) == 4 + 2 + 2  # train (4 shards), pairs (2), references 0-1.
  assert not [p for p in work.iterdir() if "incomplete" in p.name]
  (tmp_path / "manual/references/R000005.jpg").write_bytes(good)
  capsys.readouterr()
  b = prepare(tmp_path / "manual", tmp_path / "data")
  assert "resuming: 8 of " in capsys.readouterr().out
  for split, n in {"train": 7, "train_negative_pairs": 3, "references": 9, "queries": 6}.items():
    ids = column(b.as_data_source(split=split), "pair_id" if "pairs" in split else "id")
    assert len(ids) == len(set(ids)) == n
  assert not work.exists()  # Cleaned up once the dataset is in place.


def test_tfrecord_without_tensorflow_fails_before_reading(tmp_path):
  if importlib.util.find_spec("tensorflow") is not None:
    pytest.skip("TensorFlow is installed here, so tfrecord is allowed.")
  with pytest.raises(tfds_ndec.NdecInputError, match="needs TensorFlow"):
    tfds_ndec.Builder(config="full", data_dir=str(tmp_path), file_format="tfrecord")


def test_prepare_cli_reports_bad_input_with_status_2(tmp_path):
  r = subprocess.run([sys.executable, "-m", "tfds_ndec.prepare", "full", "--manual_dir",
                      str(tmp_path / "nowhere"), "--data_dir", str(tmp_path)],
                     capture_output=True, text=True)
  assert r.returncode == 2
  assert "nowhere does not exist" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------- optional engines and TF --
def test_tfds_load_gives_tf_data_from_a_tfrecord_build(tmp_path):
  tf = pytest.importorskip("tensorflow", reason="TensorFlow is not installed: the "
                           "tfds.load / tf.data route (tfrecord) is tested only where it is.")
  fake_layout.write(str(tmp_path / "manual"), SMALL)
  ds = tfds.load("ndec/disc21_dev", split="queries", data_dir=str(tmp_path / "data"),
                 download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(
                     manual_dir=str(tmp_path / "manual"))})
  assert isinstance(ds, tf.data.Dataset)
  ids = [ex["id"].numpy().decode() for ex in ds]
  assert ids == [f"Q{i:05d}" for i in range(5)]


def test_beam_direct_runner_prepares_the_same_data(tmp_path):
  beam = pytest.importorskip("apache_beam", reason="Apache Beam is not installed: the "
                             "Beam route is tested only where it is (pip install apache-beam).")
  fake_layout.write(str(tmp_path / "manual"), SMALL)
  truncate(tmp_path / "manual/train/T000002.jpg")
  local = prepare(tmp_path / "manual", tmp_path / "local", skip_bad_images=True)
  builder = tfds_ndec.Builder(config="full", data_dir=str(tmp_path / "beam"),
                              file_format="array_record", skip_bad_images=True)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(tmp_path / "manual"), beam_runner=beam.runners.DirectRunner()))
  for split in local.info.splits:
    assert column(local.as_data_source(split=split), "filename") == column(
        builder.as_data_source(split=split), "filename")
  assert builder.info.metadata["num_skipped_images"] == 1
  assert json.dumps(builder.info.metadata["skipped_images"]) == json.dumps(
      local.info.metadata["skipped_images"])


def test_killed_prepare_resumes_and_reads_back_exactly(tmp_path):
  """SIGKILL in the middle of preparing (no chance to clean up), then the
  same command again: it reuses the finished shards, writes the rest, and
  the dataset holds every image exactly once."""
  import signal
  import time
  layout = fake_layout.FakeLayout(**{**SMALL.__dict__, "num_train": 80, "width": 480,
                                     "height": 360})
  fake_layout.write(str(tmp_path / "manual"), layout)
  cmd = [sys.executable, "-m", "tfds_ndec.prepare", "full", "--manual_dir",
         str(tmp_path / "manual"), "--data_dir", str(tmp_path / "data"), "--workers", "1",
         "--max_shard_examples", "2"]
  work = tmp_path / "data/downloads/ndec_prepare/full-1.1.0"
  p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  while time.time() < deadline and not (
      work.exists() and len([f for f in work.iterdir() if f.name.endswith(".json")]) >= 3):
    time.sleep(0.01)
  p.send_signal(signal.SIGKILL)
  p.wait()
  finished = len([f for f in work.iterdir() if f.name.endswith(".json")])
  assert 3 <= finished < 40 + 2 + 5 + 3  # Killed part-way through the 50 shards.
  assert not (tmp_path / "data/ndec/full/1.1.0/dataset_info.json").exists()
  r = subprocess.run(cmd, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"resuming: {finished} of 50 shards" in r.stdout
  b = tfds.builder("ndec/full", data_dir=str(tmp_path / "data"))
  ids = column(b.as_data_source(split="train"), "id")
  assert ids == [f"T{i:06d}" for i in range(80)]
  assert not work.exists()


def test_fake_layout_is_written_once_per_layout(tmp_path):
  root = str(tmp_path / "manual")
  assert fake_layout.write_once(root, SMALL)
  marker = tmp_path / "manual" / "kept.txt"
  marker.write_text("x")
  assert not fake_layout.write_once(root, SMALL)  # Same layout: reused as it is.
  assert marker.exists()
  other = fake_layout.FakeLayout(**{**SMALL.__dict__, "num_train": SMALL.num_train + 1})
  assert fake_layout.write_once(root, other)  # Another layout: written afresh.
  assert not marker.exists()
  assert len(os.listdir(tmp_path / "manual" / "train")) == SMALL.num_train + 1
