"""`python -m asl_jax.find`: copies within a generated folder with known
copies (a crop, a paste onto a border, a resize, an EXIF-rotated crop), each
found with its direction; bad files skipped and listed."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from asl_jax import copies, find, image_folder
from asl_jax.verification import Verdict


def _photo(rng, w=320, h=240) -> Image.Image:
  """Structure SIFT can match: a smooth colour field, random shapes and
  words, fine noise."""
  field = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize(
      (w, h), Image.BICUBIC)
  draw = ImageDraw.Draw(field)
  for _ in range(45):
    x, y = rng.integers(0, w), rng.integers(0, h)
    a, b = rng.integers(6, 40, 2)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    shape = rng.integers(0, 3)
    if shape == 0:
      draw.rectangle((x, y, x + a, y + b), fill=colour)
    elif shape == 1:
      draw.ellipse((x, y, x + a, y + b), fill=colour)
    else:
      draw.text((x, y), "".join(rng.choice(list("ASLJAXcopy0123"), 5)), fill=colour)
  noisy = np.asarray(field, np.float32) + rng.normal(0, 6, (h, w, 3))
  return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _library(root) -> dict:
  """The folder; returns the expected (source, copy, verdict) of each copy."""
  rng = np.random.default_rng(7)
  os.makedirs(os.path.join(root, "trip"))
  s = [_photo(rng) for _ in range(4)]
  for i, im in enumerate(s):
    im.save(os.path.join(root, f"s{i}.jpg"), quality=95)
  _photo(rng).save(os.path.join(root, "unrelated.jpg"), quality=95)
  s[0].crop((60, 40, 260, 190)).resize((240, 180), Image.BILINEAR).save(
      os.path.join(root, "trip", "crop0.jpg"), quality=95)
  board = Image.new("RGB", (400, 300), (205, 205, 215))
  board.paste(s[1].resize((220, 165), Image.BILINEAR), (90, 70))
  board.save(os.path.join(root, "paste1.jpg"), quality=95)
  s[2].resize((160, 120), Image.BILINEAR).save(os.path.join(root, "small2.png"))
  # A phone's photo: pixels stored turned, EXIF orientation 6 turns them upright.
  upright = s[3].crop((40, 30, 240, 150))
  exif = Image.Exif()
  exif[0x0112] = 6
  upright.transpose(Image.Transpose.ROTATE_90).save(
      os.path.join(root, "trip", "phone3.jpg"), quality=95, exif=exif)
  with open(os.path.join(root, "s0.jpg"), "rb") as f:
    head = f.read(600)
  with open(os.path.join(root, "trip", "broken.jpg"), "wb") as f:
    f.write(head)  # A truncated JPEG.
  with open(os.path.join(root, "notes.txt"), "w") as f:
    f.write("not a photo")
  return {"upright": np.asarray(upright),
          "directed": {("s0.jpg", "trip/crop0.jpg", "crop"), ("s1.jpg", "paste1.jpg", "pasted"),
                       ("s3.jpg", "trip/phone3.jpg", "crop")},
          "same_frame": {frozenset(("s2.jpg", "small2.png"))}}


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_finds_the_copies_and_their_directions(tiny_run, tmp_path, capsys):
  root, out = str(tmp_path / "library"), str(tmp_path / "found")
  expected = _library(root)
  os.makedirs(out)  # A second page left by an earlier, longer run; a file of the user's.
  Image.new("RGB", (4, 4)).save(os.path.join(out, "contact_sheet_2.png"))
  Image.new("RGB", (4, 4)).save(os.path.join(out, "contact_sheet_mine.png"))
  # The tiny run's descriptors are barely trained: every pair is a candidate
  # here, and the verification alone must pick the copies out.
  assert find.main(["--workdir", tiny_run[0], "--images", root, "--out", out, "--threshold",
                    "-1", "--k", "8", "--workers", "1"]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["images"] == 9 and summary["candidates"] == 36
  rows = _rows(os.path.join(out, "pairs.csv"))
  assert list(rows[0]) == list(copies.COLUMNS)
  directed = {(r["source"], r["copy"], r["verdict"]) for r in rows
              if r["verdict"] in ("crop", "pasted")}
  assert directed == expected["directed"]
  same = {frozenset((r["source"], r["copy"])) for r in rows if r["verdict"] == "same_frame"}
  assert same == expected["same_frame"] and len(rows) == 4 == summary["pairs"]
  by_copy = {r["copy"]: r for r in rows}
  assert by_copy["trip/phone3.jpg"]["copy_size"] == "200x120"  # Upright (EXIF).
  assert by_copy["trip/crop0.jpg"]["decided_by"] == "geometry"
  assert float(by_copy["trip/crop0.jpg"]["cover"]) > 0.9
  assert float(by_copy["paste1.jpg"]["cover"]) < 0.6  # The source covers part of it.
  phone = image_folder.load(os.path.join(root, "trip", "phone3.jpg"))
  assert phone.shape == expected["upright"].shape
  assert np.abs(phone.astype(int) - expected["upright"]).mean() < 10  # JPEG noise.
  skipped = {(r["path"], r["reason"].split(":")[0])
             for r in _rows(os.path.join(out, "skipped.csv"))}
  assert skipped == {("trip/broken.jpg", "unreadable"), ("notes.txt", "unsupported")}
  assert summary["skipped"] == 2
  with Image.open(os.path.join(out, "contact_sheet.png")) as sheet:
    assert sheet.height > 4 * 160 and sheet.width > 600
  # One page now: the stale second page is gone (it was left beside the new one).
  assert sorted(f for f in os.listdir(out) if f.startswith("contact")) == [
      "contact_sheet.png", "contact_sheet_mine.png"]


def _verdict(reason):
  decided = not reason.startswith("undecided")
  return Verdict(decided, reason != "reverse", 20 if decided else 3, 40, 0.9, float("nan"),
                 reason)


@pytest.mark.parametrize("ab,ba,norms,a_is_copy,verdict", [
    ("copy:inside", "reverse", (2.0, 1.0), True, "crop"),  # Geometry over the norms.
    ("reverse", "copy:inside", (1.0, 2.0), False, "crop"),
    ("copy:pasted", "copy:inside", (2.0, 1.0), True, "pasted"),
    ("copy:inside", "copy:pasted", (1.0, 2.0), False, "pasted"),
    ("copy:inside", "copy:inside", (1.0, 2.0), True, "same_frame"),  # Smaller norm: copy.
    ("copy:inside", "copy:inside", (2.0, 1.0), False, "same_frame"),
    ("copy:inside", "undecided:few_inliers", (2.0, 1.0), True, "inside"),
    ("undecided:few_inliers", "undecided:degenerate", (2.0, 1.0), False, "no_geometry"),
    ("reverse", "reverse", (1.0, 2.0), True, "conflicting"),
])
def test_direction_rules(ab, ba, norms, a_is_copy, verdict):
  got = copies.direction(_verdict(ab), _verdict(ba), *norms)
  assert got[:2] == (a_is_copy, verdict)
  assert got[2] == ("norm" if verdict in ("same_frame", "no_geometry", "conflicting")
                    else "geometry")


def test_candidates_exclude_self_and_respect_the_threshold():
  d = np.eye(4, dtype=np.float32)
  d[1] = d[0] * 0.8 + d[1] * 0.6  # Cosine 0.8 with image 0.
  d[3] = d[2] * 0.3 + d[3] * np.sqrt(1 - 0.09)  # 0.3 with image 2.
  assert copies.candidate_pairs(d, 3, 0.5) == [(0, 1, pytest.approx(0.8))]
  assert [p[:2] for p in copies.candidate_pairs(d, 3, 0.2)] == [(0, 1), (2, 3)]


def test_outputs_are_checked_before_any_work(tiny_run, tmp_path, capsys):
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "pairs.csv").write_text("earlier results")
  (tmp_path / "file").write_text("x")
  for out, message in ((tmp_path / "out", "already holds pairs.csv"),
                       (tmp_path / "file", "is a file")):
    assert find.main(["--workdir", tiny_run[0], "--images", str(tmp_path), "--out",
                      str(out)]) == 2
    assert message in capsys.readouterr().err
  assert (tmp_path / "out" / "pairs.csv").read_text() == "earlier results"
