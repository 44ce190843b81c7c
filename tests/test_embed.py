"""`python -m asl_jax.embed`: folders and prepared splits embedded as the
run's evaluation embeds them, in the layout `evaluate` and `gate` read."""

import io as io_lib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from asl_jax import data, embed, image_folder
from asl_jax.evaluation import gate_apply, io
from conftest import ROOT, copy_run_with_eval


def _embed(capsys, *argv):
  assert embed.main(list(argv)) == 0
  return json.loads(capsys.readouterr().out)


def _exif_rotated_jpeg(path, upright: np.ndarray):
  """A JPEG whose pixels are stored turned a quarter (as phones write them)
  with the EXIF orientation 6 that turns them back upright."""
  stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
  exif = Image.Exif()
  exif[0x0112] = 6
  stored.save(path, quality=95, exif=exif)


def _folder_of_references(builder, root):
  """The references' own JPEG bytes as files, plus an EXIF-rotated photo, its
  upright twin, a corrupt JPEG and a text file."""
  src = data.source(builder, "references")
  os.makedirs(os.path.join(root, "more"))
  for i in range(len(src)):
    with open(os.path.join(root, data.text(src[i]["id"]) + ".jpg"), "wb") as f:
      f.write(src[i]["image"])
  rng = np.random.default_rng(0)
  photo = np.kron(rng.integers(0, 255, (12, 8, 3)), np.ones((5, 5, 1))).astype(np.uint8)
  _exif_rotated_jpeg(os.path.join(root, "more", "phone.jpg"), photo)
  Image.fromarray(image_folder.load(os.path.join(root, "more", "phone.jpg"))).save(
      os.path.join(root, "more", "phone_upright.png"))
  with open(os.path.join(root, "more", "broken.jpg"), "wb") as f:
    f.write(src[0]["image"][:300])  # Truncated.
  with open(os.path.join(root, "notes.txt"), "w") as f:
    f.write("not an image")
  return photo


def test_folder_matches_the_evaluation_and_skips_bad_files(tiny_run, tiny_builder, tmp_path,
                                                            capsys):
  workdir, _ = tiny_run
  root = str(tmp_path / "photos")
  photo = _folder_of_references(tiny_builder, root)
  out = str(tmp_path / "refs.h5")
  summary = _embed(capsys, "--workdir", workdir, "--images", root, "--out", out)
  assert {(s["path"], s["reason"].split(":")[0]) for s in summary["skipped_files"]} == {
      ("more/broken.jpg", "unreadable"), ("notes.txt", "unsupported")}
  ids, vectors = io.read_descriptors(out)
  norms = io.read_gate_norms(out)
  ref_ids, ref_vectors = io.read_descriptors(os.path.join(workdir, "references.h5"))
  ref_norms = io.read_gate_norms(os.path.join(workdir, "references.h5"))
  assert ids == sorted(ref_ids) + ["phone", "phone_upright"]
  assert vectors.shape == (len(ref_ids) + 2, 16) and summary["images"] == len(ids)
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
  pos = {r: i for i, r in enumerate(ref_ids)}
  order = [pos[i] for i in ids[:-2]]
  np.testing.assert_allclose(vectors[:-2], ref_vectors[order], atol=1e-5)
  np.testing.assert_allclose([norms[i] for i in ids[:-2]], [ref_norms[r] for r in ids[:-2]],
                             rtol=1e-5)
  # The phone's photo is read upright (EXIF), so it embeds as its upright twin.
  assert image_folder.load(os.path.join(root, "more", "phone.jpg")).shape == photo.shape
  np.testing.assert_allclose(vectors[-2], vectors[-1], atol=1e-6)
  assert norms["phone"] == pytest.approx(norms["phone_upright"], rel=1e-6)


def test_splits_reproduce_the_run_and_feed_evaluate_and_gate(tiny_run, tiny_builder, tmp_path,
                                                             capsys):
  """queries/references/train embedded by the tool give evaluate the run's
  own μAP (score-normalised by the train split), and gate the run's norms."""
  workdir, config = tiny_run
  paths = {s: str(tmp_path / f"{s}.h5") for s in ("queries", "references", "train")}
  for split, path in paths.items():
    assert _embed(capsys, "--workdir", workdir, "--split", split, "--out", path)["images"] > 0
  q_ids, q = io.read_descriptors(paths["queries"])
  run_ids, run_q = io.read_descriptors(os.path.join(workdir, "queries.h5"))
  assert q_ids == run_ids
  np.testing.assert_array_equal(q, run_q)
  assert io.read_gate_norms(paths["queries"]) == io.read_gate_norms(
      os.path.join(workdir, "queries.h5"))
  assert len(io.read_descriptors(paths["train"])[0]) == config.data.synthetic.num_train
  gt = str(tmp_path / "gt.csv")
  io.write_ground_truth(gt, [(k, m["reference_id"])
                             for k, m in data.query_metadata(tiny_builder).items()])
  r = subprocess.run(
      [sys.executable, "-m", "asl_jax.evaluate", "--ground_truth", gt, "--k", "5",
       "--query_descriptors", paths["queries"], "--reference_descriptors", paths["references"],
       "--train_descriptors", paths["train"], "--score_norm", "sscd"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "PYTHONPATH": ROOT})
  assert r.returncode == 0, r.stderr[-2000:]
  with open(os.path.join(workdir, "metrics.json")) as f:
    expected = json.load(f)["without_gate"]["micro_ap"]
  assert json.loads(r.stdout)["micro_ap"] == pytest.approx(expected, abs=1e-6)
  # gate reads the norms from a workdir's queries.h5/references.h5: the
  # tool's files there give the run's own decisions.
  other = tmp_path / "other"
  other.mkdir()
  shutil.copy(os.path.join(workdir, "gate.json"), other)
  for split in ("queries", "references"):
    shutil.copy(paths[split], other / f"{split}.h5")
  pred = io.read_predictions(os.path.join(workdir, "predictions_without_gate.csv"))
  triple = (pred.query_ids, pred.reference_ids, pred.scores)
  mine = gate_apply.apply(triple, str(other), None, None, decision="norm", log=lambda _: None)
  theirs = gate_apply.apply(triple, workdir, None, None, decision="norm", log=lambda _: None)
  assert 0 < mine["kept"] < len(pred.query_ids)
  assert mine["query_ids"] == theirs["query_ids"]
  assert mine["reference_ids"] == theirs["reference_ids"]


def test_bad_arguments_fail_before_any_work(tiny_run, tmp_path, capsys):
  workdir, _ = tiny_run
  existing = tmp_path / "D.h5"
  existing.write_bytes(b"keep me")
  cases = [
      (["--images", str(tmp_path), "--out", str(existing)], "exists; give another path"),
      (["--images", str(tmp_path), "--out", str(tmp_path / "no" / "D.h5")], "does not exist"),
      (["--images", str(tmp_path), "--split", "train", "--out", str(tmp_path / "a.h5")],
       "either --images"),
      (["--split", "validation", "--out", str(tmp_path / "a.h5")], "use one of queries"),
      (["--images", str(tmp_path / "none"), "--out", str(tmp_path / "a.h5")], "not a folder"),
      # Only bad files: they are named (only their count was given).
      (["--images", str(tmp_path / "bad"), "--out", str(tmp_path / "a.h5")],
       "holds no readable image (2 files skipped: "),
  ]
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "notes.txt").write_text("x")
  (tmp_path / "bad" / "broken.jpg").write_text("not a JPEG")
  for argv, message in cases:
    assert embed.main(["--workdir", workdir, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, (argv, err)
  assert "broken.jpg (unreadable" in err and "notes.txt (unsupported)" in err, err
  assert existing.read_bytes() == b"keep me"
  assert embed.main(["--workdir", str(tmp_path), "--images", str(tmp_path),
                     "--out", str(tmp_path / "a.h5")]) == 2
  assert "config.json does not exist" in capsys.readouterr().err
  assert not (tmp_path / "a.h5").exists()


def test_gate_sizes_average_the_gate_norm_over_sides(tiny_run, tiny_builder, tmp_path, capsys):
  """eval.gate_sizes: the gate norm is the geometric mean of the image's
  gate norms at each side (each image resized to it from its decoded
  original; mirror-averaged with gate_flip_average), in the run's embedding of
  records (what evaluate, embed and find use) and of arrays; the descriptor is
  the one at the embedding side."""
  from asl_jax import copy_edits, inference
  workdir = copy_run_with_eval(tiny_run[0], tmp_path / "run", gate_sizes=[32, 56],
                               gate_flip_average=True)
  src = data.source(tiny_builder, "references")
  n = 8
  originals = [np.asarray(data.decode_pil(src[i]["image"], src[i], min_size=56))
               for i in range(n)]
  at = lambda s: np.stack([copy_edits.resize(x, (s, s)) for x in originals])
  plain = inference.load_run(tiny_run[0])  # No gate sizes, no mirror.

  def flipped_gate(images):
    return np.sqrt(plain.embed_batch(images)[1]
                   * plain.embed_batch(np.ascontiguousarray(images[:, :, ::-1]))[1])
  expected = np.sqrt(flipped_gate(at(32)) * flipped_gate(at(56)))
  assert np.abs(expected / flipped_gate(at(40)) - 1).max() > 1e-3  # The sides matter.
  sized = inference.load_run(workdir)
  d, g = sized.embed(src, log=lambda *_: None)
  np.testing.assert_allclose(g[:n], expected, rtol=1e-4)
  np.testing.assert_allclose(d[:n], plain.embed_batch(at(40))[0], atol=1e-5)
  _, g_arr = sized.embed_batch(at(40), [at(32), at(56)])
  np.testing.assert_allclose(g_arr, expected, rtol=1e-4)
  out = str(tmp_path / "refs.h5")
  assert embed.main(["--workdir", workdir, "--split", "references", "--out", out]) == 0
  printed = capsys.readouterr()
  summary = json.loads(printed.out)
  assert summary["gate_sizes"] == [32, 56]
  line = "at 40 px, flip-averaged; gate norm at 32/56 px, mirror-averaged"
  assert line in printed.err, printed.err
  np.testing.assert_allclose(io.read_gate_norms(out)[data.text(src[0]["id"])], expected[0],
                             rtol=1e-4)


def test_16_bit_and_float_greyscale_images_read_as_their_8_bit_selves(tmp_path):
  """PIL's convert("RGB") clips 16-bit greyscale at 255: a 16-bit PNG was read
  as a white image (embedded far from its 8-bit twin, never found as a copy)."""
  from asl_jax import pil_image
  from tfds_ndec import manual
  grey = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1))  # A ramp, 48 x 64.
  Image.fromarray(grey, "L").save(tmp_path / "g8.png")
  Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")
  assert Image.open(tmp_path / "g16.png").mode.startswith("I")
  want = np.repeat(grey[..., None], 3, axis=2)
  for path in ("g8.png", "g16.png"):
    got = np.asarray(image_folder.load_pil(str(tmp_path / path)))
    assert np.array_equal(got, want), path
    stored = manual.load_image(str(tmp_path / path), manual.Encoding(0, 90))
    assert np.array_equal(np.asarray(Image.open(io_lib.BytesIO(stored))), want), path
  as_float = Image.fromarray(grey.astype(np.float32) / 255.0, "F")
  assert np.abs(np.asarray(pil_image.to_rgb(as_float)).astype(int) - want).max() <= 1
  small = Image.fromarray(grey.astype(np.int32), "I")  # 32-bit holding 8-bit values.
  assert np.array_equal(np.asarray(pil_image.to_rgb(small)), want)
