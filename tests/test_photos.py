"""A benchmark made from a folder of photos (tfds_ndec/photos.py): its roles,
determinism, loading as a folder set, and its bad inputs."""

import csv
import os
import subprocess
import sys

import pytest
from PIL import Image

from asl_jax import data
from tfds_ndec import manual, photos

from conftest import ROOT, load_config
from test_verification import photo


def make_photos(folder, n=26):
  os.makedirs(folder, exist_ok=True)
  for i in range(n):
    w, h = 300 + 40 * (i % 5), 220 + 30 * (i % 3)
    ext = ".png" if i % 7 == 0 else ".jpg"
    Image.fromarray(photo(100 + i, w, h)).save(os.path.join(folder, f"p{i:02d}{ext}"))
  Image.fromarray(photo(999, 90, 60)).save(os.path.join(folder, "tiny.jpg"))  # Too small.


def rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_benchmark_roles_determinism_and_loading(tmp_path):
  make_photos(tmp_path / "photos")
  a = photos.generate(str(tmp_path / "photos"), str(tmp_path / "a"), seed=3, log=lambda _: None)
  photos.generate(str(tmp_path / "photos"), str(tmp_path / "b"), seed=3, log=lambda _: None)
  assert a["too_small"] == [str(tmp_path / "photos" / "tiny.jpg")]
  assert sum(a["counts"].values()) == 26
  for name in ("queries.csv", "ground_truth.csv"):
    assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
  kinds = rows(tmp_path / "a" / "queries.csv")
  by_kind = {}
  for r in kinds:
    by_kind.setdefault(r["kind"], []).append(r)
  assert set(by_kind) == {"copy", "hard_negative/reverse_crop", "hard_negative/shifted_view",
                          "distractor"}
  refs = {os.path.splitext(f)[0]: Image.open(tmp_path / "a" / "references" / f).size
          for f in os.listdir(tmp_path / "a" / "references")}
  for r in by_kind["hard_negative/reverse_crop"]:
    q = Image.open(tmp_path / "a" / "queries" / (r["query_id"] + ".jpg")).size
    ref = refs[r["reference_id"]]
    assert q[0] * q[1] > 1.1 * ref[0] * ref[1]  # The query holds more than its reference.
  for r in by_kind["copy"]:
    assert r["detail"] and 0 < float(r["information_amount"]) <= 1
  gt = {r["query_id"]: r["reference_id"] for r in rows(tmp_path / "a" / "ground_truth.csv")}
  assert {q for q, ref in gt.items() if ref} == {r["query_id"] for r in by_kind["copy"]}
  c = load_config().data
  c.update(name="folder/bench", manual_dir=str(tmp_path / "a"), data_dir=str(tmp_path / "d"),
           prepare_workers=1)
  b = data.prepare(c, log=lambda _: None)
  meta = data.query_metadata(b)
  assert {m["hard_negative_kind"] for m in meta.values()} == {"", "reverse_crop",
                                                              "shifted_view"}
  one = by_kind["copy"][0]
  assert meta[one["query_id"]]["edits"] == one["detail"].split("+")
  assert b.info.splits["train"].num_examples == a["counts"]["train"]
  src = data.source(b, "queries")
  amounts = {data.text(src[i]["id"]): float(src[i]["information_amount"]) for i in range(len(src))}
  assert amounts[one["query_id"]] == pytest.approx(float(one["information_amount"]), abs=1e-4)
  other = photos.generate(str(tmp_path / "photos"), str(tmp_path / "c"), seed=4,
                          log=lambda _: None)
  assert other["counts"] == a["counts"]
  csvs = [(tmp_path / x / "queries.csv").read_text() for x in ("a", "c")]
  assert csvs[0] != csvs[1]


def test_bad_photo_folders_are_named(tmp_path):
  make_photos(tmp_path / "few", n=5)
  with pytest.raises(manual.NdecInputError, match="has 5 usable photos .* at least 20"):
    photos.generate(str(tmp_path / "few"), str(tmp_path / "out"), log=lambda _: None)
  make_photos(tmp_path / "p")
  (tmp_path / "p" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
  with pytest.raises(manual.BadImageError, match="broken.jpg"):
    photos.generate(str(tmp_path / "p"), str(tmp_path / "out"), log=lambda _: None)
  assert not os.path.exists(tmp_path / "out")  # Nothing written.
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("x")
  with pytest.raises(manual.NdecInputError, match="not empty"):
    photos.generate(str(tmp_path / "p"), str(tmp_path / "full"), skip_bad_images=True,
                    log=lambda _: None)
  r = subprocess.run([sys.executable, "-m", "tfds_ndec.photos", "--photos", str(tmp_path / "p"),
                      "--out", str(tmp_path / "out2"), "--skip_bad_images"],
                     cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  assert "skipped (unreadable):" in r.stderr and "broken.jpg" in r.stderr
  r = subprocess.run([sys.executable, "-m", "tfds_ndec.photos", "--photos", str(tmp_path / "nope"),
                      "--out", str(tmp_path / "out3")], cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 2 and "is not a folder" in r.stderr
