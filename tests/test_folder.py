"""Your own copy-detection set in the DISC21 layout (`folder/<name>`), its
query kinds carried into the data, every bad layout named before any image
is read; `ndec/full` without NDEC's pairs; and `python -m asl_jax.gate` on
another system's predictions."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import tfds_ndec
from asl_jax import data
from asl_jax.errors import UserError
from asl_jax.evaluation import io as eval_io
from tfds_ndec import fake_layout, folder, manual

from conftest import load_config
from test_verification import crop, photo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(image).save(path, quality=92)


def make_set(root, kinds=True, train=True) -> dict:
  """A tiny set: 4 whole photos and one crop as references; a crop copy, a
  pasted copy, a reverse crop, a similar photo and a distractor as queries.
  Ids are free-form names, as any set's are."""
  photos = {f"ref_{i}": photo(10 + i) for i in range(4)}
  photos["ref_crop"] = crop(photo(20), 0.25, 0.2, 0.75, 0.8)
  for rid, im in photos.items():
    save(os.path.join(root, "references", rid + ".jpg"), im)
  background = photo(30, 480, 360).copy()
  background[90:270, 120:360] = np.asarray(Image.fromarray(photos["ref_1"]).resize((240, 180)))
  queries = {"q_crop": (crop(photos["ref_0"], 0.1, 0.1, 0.8, 0.8), "copy", "ref_0",
                        "crop(area=0.49)"),
             "q_paste": (background, "copy", "ref_1", "overlay_onto_photo(0.5)+jpeg(q=50)"),
             "q_reverse": (photo(20), "hard_negative/reverse_crop", "ref_crop", "whole photo"),
             "q_similar": (photo(61, 300, 250), "hard_negative/similar", "ref_2", "group"),
             "q_other": (photo(40), "distractor", "", "")}
  for qid, (im, *_rest) in queries.items():
    save(os.path.join(root, "queries", qid + ".jpg"), im)
  with open(os.path.join(root, "ground_truth.csv"), "w") as f:
    f.write("query_id,reference_id\n")
    for qid, (_, kind, ref, _) in queries.items():
      f.write(f"{qid},{ref if kind == 'copy' else ''}\n")
  if kinds:
    with open(os.path.join(root, "queries.csv"), "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["query_id", "kind", "reference_id", "detail"])
      for qid, (_, kind, ref, detail) in queries.items():
        w.writerow([qid, kind, ref, detail])
  if train:
    for i in range(3):
      save(os.path.join(root, "train", f"train_{i}.jpg"), photo(50 + i, 200, 150))
  return queries


def cfg_for(root, data_dir, name="folder/mine"):
  c = load_config().data
  c.update(name=name, manual_dir=str(root), data_dir=str(data_dir), prepare_workers=1)
  return c


def test_a_folder_set_loads_with_its_kinds_and_edits(tmp_path):
  make_set(tmp_path / "mine")
  b = data.prepare(cfg_for(tmp_path / "mine", tmp_path / "data"), log=lambda _: None)
  assert b.info.full_name == "ndec/folder_mine/1.1.0"
  assert {k: v.num_examples for k, v in b.info.splits.items()} == {
      "train": 3, "references": 5, "queries": 5}
  meta = data.query_metadata(b)
  assert meta["q_crop"] == {"kind": "copy", "hard_negative_kind": "", "resembles_id": "",
                            "reference_id": "ref_0", "edits": ["crop"]}
  assert meta["q_paste"]["edits"] == ["overlay_onto_photo", "jpeg"]
  assert meta["q_reverse"]["kind"] == "hard_negative"
  assert meta["q_reverse"]["hard_negative_kind"] == "reverse_crop"
  assert meta["q_reverse"]["resembles_id"] == "ref_crop"
  assert meta["q_other"]["kind"] == "distractor"
  assert b.info.metadata["folder"] == str(tmp_path / "mine")
  # Another folder under the same name is refused; under another name it is its own set.
  make_set(tmp_path / "other", kinds=False, train=False)
  with pytest.raises(UserError, match="was prepared from"):
    data.prepare(cfg_for(tmp_path / "other", tmp_path / "data"), log=lambda _: None)
  # A folder that does not exist is named as such, though a set of that name is prepared.
  with pytest.raises(UserError, match="manual_dir=.*absent', is not a directory"):
    data.prepare(cfg_for(tmp_path / "absent", tmp_path / "data"), log=lambda _: None)
  b2 = data.prepare(cfg_for(tmp_path / "other", tmp_path / "data", "folder/other"),
                    log=lambda _: None)
  assert "train" not in b2.info.splits
  assert data.query_metadata(b2)["q_reverse"]["kind"] == "negative"  # No queries.csv.


def test_a_prepared_folder_set_whose_folder_changed_is_refused(tmp_path):
  """The prepared copy was used without a word after the folder changed."""
  import shutil
  make_set(tmp_path / "mine", train=False)
  cfg = cfg_for(tmp_path / "mine", tmp_path / "data")
  logs = []
  data.prepare(cfg, log=logs.append)
  data.prepare(cfg, log=logs.append)  # Unchanged: reused.
  assert logs[-1].startswith("Using ndec/folder_mine/1.1.0")
  refs = tmp_path / "mine" / "references"
  shutil.copy(refs / "ref_1.jpg", refs / "ref_9.jpg")
  for attempt in (cfg, cfg_for("", tmp_path / "data")):  # Also without manual_dir.
    with pytest.raises(UserError, match=r"mine has changed since ndec/folder_mine/1.1.0 was "
                       r"prepared from it.*images were added, removed.*delete .*folder_mine"):
      data.prepare(attempt, log=lambda _: None)
  os.remove(refs / "ref_9.jpg")
  data.prepare(cfg, log=lambda _: None)  # As it was: reused.
  gt = tmp_path / "mine" / "ground_truth.csv"
  gt.write_text(gt.read_text() + "\n")  # Any edit to a CSV counts.
  with pytest.raises(UserError, match="has changed since"):
    data.prepare(cfg, log=lambda _: None)
  shutil.rmtree(tmp_path / "mine" / "queries")
  with pytest.raises(UserError,
                     match=r"(?s)has changed and is no longer a valid set: .*query images"):
    data.prepare(cfg, log=lambda _: None)


def test_an_unprepared_set_without_a_folder_says_how(tmp_path):
  c = cfg_for("", tmp_path / "data")
  with pytest.raises(UserError, match="manual_dir=<folder>"):
    data.prepare(c, log=lambda _: None)


def _expect_error(root, match):
  with pytest.raises(manual.NdecInputError, match=match):
    folder.scan(str(root), log=lambda _: None)


def _broken(root, name, old, new, match):
  """Replaces `old` by `new` in the file `name`, expects the error, restores it."""
  text = (root / name).read_text()
  assert old in text
  (root / name).write_text(text.replace(old, new))
  _expect_error(root, match)
  (root / name).write_text(text)


def test_bad_layouts_are_named_before_any_image_is_read(tmp_path):
  root = tmp_path / "s"
  make_set(root)
  os.rename(root / "references", root / "refs")
  _expect_error(root, "reference images: none of")
  os.rename(root / "refs", root / "references")
  # An id in two subfolders.
  save(str(root / "train" / "ref_0.jpg"), photo(1, 64, 48))
  _expect_error(root, "ref_0 \\(references/ and train/\\)")
  os.remove(root / "train" / "ref_0.jpg")
  # The ground truth names a reference with no image.
  _broken(root, "ground_truth.csv", "q_crop,ref_0", "q_crop,ref_9",
          "name a reference with no image")
  # A query image with no ground-truth row.
  save(str(root / "queries" / "q_extra.jpg"), photo(2, 64, 48))
  _expect_error(root, "q_extra")
  os.remove(root / "queries" / "q_extra.jpg")
  # queries.csv disagreeing with the ground truth, or with unknown kinds.
  _broken(root, "queries.csv", "q_other,distractor", "q_other,copy",
          "q_other is 'copy' but the ground truth says it copies nothing")
  _broken(root, "queries.csv", "distractor", "noise", "kind 'noise'")
  _broken(root, "queries.csv", "ref_crop,whole", "ref_7,whole",
          "resembles ref_7, which has no reference image")
  kinds = (root / "queries.csv").read_text()
  (root / "queries.csv").write_text("\n".join(kinds.splitlines()[:-1]) + "\n")
  _expect_error(root, "have no row \\(q_other\\)")
  (root / "queries.csv").write_text(kinds)
  folder.scan(str(root), log=lambda _: None)  # Repaired: passes.


def test_unreadable_image_in_a_folder_set_stops_with_its_path(tmp_path):
  root = tmp_path / "s"
  make_set(root)
  (root / "queries" / "q_other.jpg").write_bytes(b"not a jpeg")
  with pytest.raises(UserError, match="q_other.jpg"):
    data.prepare(cfg_for(root, tmp_path / "data"), log=lambda _: None)


def test_full_without_negative_pairs_prepares_and_pairs_are_refused_by_name(tmp_path):
  layout = fake_layout.FakeLayout(num_train=6, num_references=5, num_queries=4, num_copies=2,
                                  num_pairs=2, width=40, height=30)
  fake_layout.write(str(tmp_path / "manual"), layout)
  import shutil
  shutil.rmtree(tmp_path / "manual" / "negative_pair")
  b = tfds_ndec.Builder(config=tfds_ndec.real_config("full"), data_dir=str(tmp_path / "data"),
                        file_format="array_record", num_workers=1)
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(tmp_path / "manual")))
  assert "train_negative_pairs" not in b.info.splits
  assert b.info.metadata["negative_pairs"] is False
  from asl_jax import train
  c = load_config()
  c.data.update(name="ndec/full", data_dir=str(tmp_path / "data"), pair_ids_per_batch=2)
  with pytest.raises(UserError, match="has none \\(its download had no negative_pair"):
    train.train(c, str(tmp_path / "run"), builder=b)


def test_gate_cli_applies_a_runs_decision_to_other_predictions(tmp_path):
  root = tmp_path / "s"
  queries = make_set(root)
  refs = sorted(os.path.splitext(f)[0] for f in os.listdir(root / "references"))
  # Another system's candidates: a trivial descriptor (a 16 x 16 grayscale
  # thumbnail), every query against every reference.
  def thumb(path):
    t = np.asarray(Image.open(path).convert("L").resize((16, 16)), np.float32).ravel()
    t -= t.mean()
    return t / np.linalg.norm(t)
  pred = tmp_path / "pred.csv"
  q = [qq for qq in queries for _ in refs]
  r = refs * len(queries)
  s = [float(thumb(root / "queries" / (a + ".jpg")) @ thumb(root / "references" / (b + ".jpg")))
       for a, b in zip(q, r, strict=True)]
  eval_io.write_predictions(str(pred), q, r, s)
  run = tmp_path / "run"
  run.mkdir()
  (run / "gate.json").write_text(json.dumps({"decision": "verify", "rescore": 1.0,
                                             "verify": {}}))
  cmd = [sys.executable, "-m", "asl_jax.gate", "--predictions", str(pred), "--workdir",
         str(run), "--queries", str(root / "queries"), "--references", str(root / "references"),
         "--output", str(tmp_path / "out.csv"), "--ground_truth", str(root / "ground_truth.csv"),
         "--workers", "1"]
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 0, out.stderr
  report = json.loads(out.stdout)
  kept = eval_io.read_predictions(str(tmp_path / "out.csv"))
  pairs = dict(zip(zip(kept.query_ids, kept.reference_ids), kept.scores))
  assert ("q_reverse", "ref_crop") not in pairs           # Dropped: a reverse crop.
  assert pairs[("q_crop", "ref_0")] > 1 and pairs[("q_paste", "ref_1")] > 1  # Verified copies.
  assert report["dropped"] >= 1 and report["decision"] == "verify"
  assert report["after"]["micro_ap"] == pytest.approx(1.0)
  assert report["after"]["micro_ap"] > report["before"]["micro_ap"]
  # The same from the set prepared as a dataset.
  data.prepare(cfg_for(root, tmp_path / "data"), log=lambda _: None)
  by_name = [a for a in cmd if a not in (str(root / "queries"), str(root / "references"),
                                         "--queries", "--references")]
  out = subprocess.run(by_name + ["--dataset", "folder/mine", "--data_dir", str(tmp_path / "data"),
                                  "--output", str(tmp_path / "out2.csv")],
                       capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 0, out.stderr
  assert (tmp_path / "out2.csv").read_text() == (tmp_path / "out.csv").read_text()
  out = subprocess.run(by_name + ["--dataset", "folder/absent", "--data_dir", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 2 and "is not prepared" in out.stderr
  # The norm gate needs the run's norms for these ids: named, with status 2.
  cmd2 = cmd[:-2] + ["--decision", "norm", "--overwrite"]
  out = subprocess.run(cmd2, capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 2 and "queries.h5" in out.stderr
  eval_io.write_descriptors(str(run / "queries.h5"), list(queries), np.zeros((5, 2)),
                            gate_norms=np.ones(5))
  eval_io.write_descriptors(str(run / "references.h5"), refs, np.zeros((5, 2)),
                            gate_norms=np.array([2, 2, 0.5, 2, 2]))
  out = subprocess.run(cmd2, capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 0, out.stderr
  assert json.loads(out.stdout)["dropped"] == 5  # Every pair with ref_2 (norm 0.5 < 1).
  nowhere = [str(tmp_path / "nowhere") if a == str(run) else a for a in cmd] + ["--overwrite"]
  out = subprocess.run(nowhere, capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 2 and "gate.json does not exist" in out.stderr


def test_prepare_cli_names_the_set_after_its_folder(tmp_path):
  make_set(tmp_path / "My Set", train=False)
  make_set(tmp_path / "other", kinds=False, train=False)
  base = [sys.executable, "-m", "tfds_ndec.prepare", "folder", "--data_dir",
          str(tmp_path / "data"), "--workers", "1"]
  r = subprocess.run(base + ["--manual_dir", str(tmp_path / "My Set")], cwd=ROOT,
                     capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  assert "Prepared ndec/folder_my_set/1.1.0" in r.stdout
  r = subprocess.run(base + ["--manual_dir", str(tmp_path / "other"), "--name", "my_set"],
                     cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 2 and "was prepared from" in r.stderr


PHOTO_DEV = os.path.join(os.path.dirname(ROOT), "shared", "data", "photo_dev")


@pytest.mark.skipif(not os.path.isdir(PHOTO_DEV),
                    reason=f"the development set is not here ({PHOTO_DEV}); it lives outside "
                           "the repository")
def test_the_development_set_loads_with_its_kinds(tmp_path):
  with open(os.path.join(PHOTO_DEV, "manifest.json")) as f:
    counts = json.load(f)["counts"]
  b = data.prepare(cfg_for(PHOTO_DEV, tmp_path / "data", "folder/photo_dev"), log=lambda _: None)
  assert {k: v.num_examples for k, v in b.info.splits.items()} == {
      "train": counts["train"], "references": counts["references"],
      "queries": counts["queries"]}
  meta = data.query_metadata(b)
  kinds = {}
  for m in meta.values():
    key = m["kind"] + ("/" + m["hard_negative_kind"] if m["hard_negative_kind"] else "")
    kinds[key] = kinds.get(key, 0) + 1
  assert kinds == counts["queries_by_kind"]
  assert all(m["edits"] for m in meta.values() if m["kind"] == "copy")


def test_webp_bmp_and_tiff_images_are_read_and_other_files_are_named(tmp_path, capsys):
  """Only .jpg/.jpeg/.png were read: a .webp reference was left out without a
  word (the set then had one reference fewer)."""
  make_set(tmp_path / "mine", train=False)
  refs, queries = tmp_path / "mine" / "references", tmp_path / "mine" / "queries"
  Image.open(refs / "ref_2.jpg").save(refs / "ref_2.webp")
  os.remove(refs / "ref_2.jpg")
  Image.open(refs / "ref_3.jpg").save(refs / "ref_3.tif")
  os.remove(refs / "ref_3.jpg")
  Image.open(queries / "q_crop.jpg").save(queries / "q_crop.bmp")
  os.remove(queries / "q_crop.jpg")
  (refs / "ref_7.heic").write_bytes(b"\0" * 64)
  (refs / "notes.txt").write_text("not an image")
  (refs / ".DS_Store").write_bytes(b"\0")
  b = data.prepare(cfg_for(tmp_path / "mine", tmp_path / "data"), log=lambda _: None)
  assert {k: v.num_examples for k, v in b.info.splits.items()} == {"references": 5,
                                                                   "queries": 5}
  logs = capsys.readouterr().out.splitlines()  # The scan prints its notes.
  notes = [m for m in logs if "not images of a format read here" in m]
  assert len(notes) == 1 and "2 files among the reference images" in notes[0], logs
  assert "notes.txt" in notes[0] and "ref_7.heic" in notes[0] and ".DS_Store" not in notes[0]
  found = eval_io.image_files(str(refs))
  assert sorted(found) == ["ref_0", "ref_1", "ref_2", "ref_3", "ref_crop"]
  assert found["ref_2"].endswith("ref_2.webp")
