"""benchmarks/augly_gate_set.py without AugLy: the geometry of its crops and
reverse crops, its rule of at most one heavy edit per copy, and its message
when AugLy is missing. (The AugLy calls themselves need Pillow < 10, so they
are not run here.)"""

import importlib.util
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, load_module


def _module():
  return load_module("benchmarks", "augly_gate_set.py")


def test_crop_boxes_hold_the_asked_area_inside_the_photo():
  m, rng = _module(), random.Random(0)
  for area in np.linspace(0.3, 0.9, 25):
    x1, y1, x2, y2 = m._crop_box(rng, area)
    assert 0 <= x1 < x2 <= 1 + 1e-9 and 0 <= y1 < y2 <= 1 + 1e-9
    np.testing.assert_allclose((x2 - x1) * (y2 - y1), area, rtol=1e-9)


def test_reverse_crop_queries_hold_their_reference_and_more():
  m, rng = _module(), random.Random(1)
  whole = 0
  for _ in range(200):
    ref, query, area = m.reverse_crop_boxes(rng)
    assert 0.4 <= area <= 0.7
    np.testing.assert_allclose((ref[2] - ref[0]) * (ref[3] - ref[1]), area, rtol=1e-9)
    if query is None:
      whole += 1
      continue
    assert 0 <= query[0] <= ref[0] and 0 <= query[1] <= ref[1]
    assert ref[2] <= query[2] <= 1 + 1e-9 and ref[3] <= query[3] <= 1 + 1e-9
    assert (query[2] - query[0]) * (query[3] - query[1]) > area * 1.05
  assert 70 < whole < 130


def test_a_copy_has_one_to_three_distinct_edits_and_at_most_one_heavy(monkeypatch):
  m = _module()
  calls = []

  def fake_edit(rng, im, name, backgrounds, heavy):
    calls[-1].append((name, heavy))
    return im, name

  monkeypatch.setattr(m, "copy_edit", fake_edit)
  rng, im = random.Random(2), Image.new("RGB", (32, 24))
  counts = {1: 0, 2: 0, 3: 0}
  for _ in range(400):
    calls.append([])
    _, details = m.make_copy(rng, im, backgrounds=[])
    names = [n for n, _ in calls[-1]]
    assert details == names and len(set(names)) == len(names)
    counts[len(names)] += 1
    heavy = [n for n, h in calls[-1] if h]
    assert len(heavy) <= 1
    assert all(n in m._ALWAYS_HEAVY + m._CAN_BE_HEAVY for n in heavy)
    assert all(h for n, h in calls[-1] if n in m._ALWAYS_HEAVY)
  assert counts[2] > counts[1] > counts[3] > 50
  assert sum(bool([h for _, h in c if h]) for c in calls) > 100


def test_without_augly_it_says_how_to_install_it_and_writes_nothing(tmp_path):
  if importlib.util.find_spec("augly") is not None:
    pytest.skip("AugLy is installed here, so the message for its absence cannot be seen")
  (tmp_path / "photos").mkdir()
  for i in range(12):
    Image.new("RGB", (64, 48), (i * 20, 0, 0)).save(tmp_path / "photos" / f"p{i}.jpg")
  out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "augly_gate_set.py"),
                        "--photos", str(tmp_path / "photos"), "--out", str(tmp_path / "set")],
                       capture_output=True, text=True)
  assert out.returncode == 2, out.stderr
  assert "pip install augly==1.0.0" in out.stderr and "Traceback" not in out.stderr
  assert not (tmp_path / "set").exists()
