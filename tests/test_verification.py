"""Asymmetric pairwise verification and the gate's decisions, on generated
photos with known geometry: crops are copies, a photo is not a copy of its
own crop, a photo pasted onto other content or padded is."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from asl_jax import verification
from asl_jax.errors import UserError
from asl_jax.evaluation import decisions


def photo(seed: int, width: int = 360, height: int = 270) -> np.ndarray:
  """A keypoint-rich 'photo': a smooth background with random shapes."""
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 256, (6, 8, 3), np.uint8)
  im = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
  draw = ImageDraw.Draw(im)
  for _ in range(90):
    x, y = rng.integers(0, width), rng.integers(0, height)
    w, h = rng.integers(4, 40, 2)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    # Triangles: unlike rectangles and ellipses, not mirror-symmetric, so
    # that a flipped copy's SIFT descriptors differ from the original's.
    corners = [(int(x), int(y)), (int(x + w), int(y + rng.integers(0, h))),
               (int(x + rng.integers(0, w)), int(y + h))]
    draw.polygon(corners, fill=colour)
  return np.asarray(im)


def crop(image, x0, y0, x1, y1):
  h, w = image.shape[:2]
  return np.ascontiguousarray(image[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)])


def judge(query, reference, **kw):
  cfg = verification.VerifyConfig(**kw)
  return verification.verify(verification.extract(query, cfg), verification.extract(reference, cfg),
                             cfg, verification.extract(verification.mirrored(query), cfg))


P = photo(1)


def test_a_crop_of_the_reference_is_a_copy():
  v = judge(crop(P, 0.2, 0.1, 0.8, 0.9), P)
  assert v.decided and v.keep and v.reason == "copy:inside"
  assert v.cover > 0.95 and v.inliers >= 20


def test_a_flipped_resized_copy_is_matched_through_the_mirror():
  flipped = np.asarray(Image.fromarray(P[:, ::-1]).resize((300, 200)))
  v = judge(flipped, P)
  assert v.decided and v.keep and v.reason == "copy:inside"
  # The better of the query and its mirror image is used.
  assert v.inliers >= judge(flipped, P, mirror=False).inliers


def test_the_photo_is_not_a_copy_of_its_own_crop():
  reference = crop(P, 0.25, 0.2, 0.75, 0.8)  # 30% of the area.
  v = judge(P, reference)
  assert v.decided and not v.keep and v.reason == "reverse"
  assert 0.2 < v.cover < 0.4
  assert v.contrast < 1.6  # The scene continues across the outline.


def test_the_reference_pasted_onto_another_photo_is_a_copy():
  background = photo(7, 480, 360).copy()
  small = np.asarray(Image.fromarray(P).resize((240, 180)))
  background[90:270, 120:360] = small
  v = judge(background, P)
  assert v.decided and v.keep and v.reason == "copy:pasted"
  assert v.cover < 0.5 and v.contrast > 3


def test_a_padded_reference_is_a_copy():
  padded = np.full((P.shape[0] + 120, P.shape[1] + 60, 3), (200, 30, 90), np.uint8)
  padded[60:60 + P.shape[0], 30:30 + P.shape[1]] = P
  v = judge(padded, P)
  assert v.keep and v.reason == "copy:pasted"


def test_unrelated_photos_are_undecided_and_kept():
  v = judge(photo(2), P)
  assert not v.decided and v.keep and v.reason.startswith("undecided")


def test_boundary_contrast_is_one_for_a_continuing_scene_and_large_for_a_step():
  image = photo(3).astype(np.float32) / 255
  box = np.array([[90, 60], [270, 60], [270, 210], [90, 210]], np.float32)
  assert verification.boundary_contrast(image, box) < 1.5
  stepped = image.copy()
  stepped[:, :, :] = 0.0
  stepped[60:210, 90:270] = image[60:210, 90:270]
  assert verification.boundary_contrast(stepped, box) > 5
  # An outline along the image's own border has no edge inside it to judge.
  whole = np.array([[0, 0], [360, 0], [360, 270], [0, 270]], np.float32)
  assert np.isnan(verification.boundary_contrast(image, whole))


def test_verify_pairs_gives_the_same_verdicts_with_threads():
  images = [P, crop(P, 0.1, 0.1, 0.7, 0.7), photo(5)]
  feats, mirrors = verification.extract_all(images, mirror=True)
  qi, ri = [1, 0, 2, 1], [0, 1, 0, 2]
  one = verification.verify_pairs(feats, feats, qi, ri, query_mirrors=mirrors, workers=1)
  two = verification.verify_pairs(feats, feats, qi, ri, query_mirrors=mirrors, workers=2)
  assert [v.reason for v in one] == [v.reason for v in two]
  assert [v.reason for v in one][:2] == ["copy:inside", "reverse"]


def test_calibrated_threshold_is_the_copy_ratio_quantile():
  ratios = np.linspace(0.5, 1.5, 101)  # Copy-direction ratios |g(view)| / |g(source)|.
  cal = decisions.calibrate_threshold(ratios, 0.1)
  assert cal["threshold"] == pytest.approx(1.4)
  assert cal["training_copies_dropped"] == pytest.approx(10 / 101)
  # Reverse ratios are 1 / ratios; above 1.4 only those of ratios < 1/1.4.
  assert cal["training_reverse_dropped"] == pytest.approx(np.mean(1 / ratios > 1.4))
  assert cal["paper_threshold_training_copies_dropped"] == pytest.approx(50 / 101)
  with pytest.raises(UserError, match="max_copy_drop"):
    decisions.calibrate_threshold(ratios, 1.0)


def test_combine_uses_verification_where_it_decides_and_the_norm_gate_elsewhere():
  V = verification.Verdict
  verdicts = [V(True, True, 50, 60, 1.0, np.nan, "copy:inside"),
              V(True, False, 40, 50, 0.4, 0.9, "reverse"),
              V(False, True, 2, 9, np.nan, np.nan, "undecided:few_inliers"),
              V(False, True, 2, 9, np.nan, np.nan, "undecided:few_inliers")]
  paper = np.array([False, True, False, True])
  calibrated = np.array([True, True, True, False])
  assert decisions.combine("none", paper, calibrated, verdicts).tolist() == [True] * 4
  assert decisions.combine("norm", paper, calibrated, verdicts).tolist() == paper.tolist()
  assert decisions.combine("verify", paper, calibrated, verdicts).tolist() == [True, False, True,
                                                                         True]
  assert decisions.combine("verify_else_norm", paper, calibrated, verdicts).tolist() == [
      True, False, False, True]
  assert decisions.combine("verify_else_calibrated", paper, calibrated, verdicts).tolist() == [
      True, False, True, False]
  assert decisions.rescored([0.5, 0.5, 0.5, 0.5], verdicts, 1.0).tolist() == [1.5, 0.5, 0.5, 0.5]
  with pytest.raises(UserError, match="eval.decision"):
    decisions.check_decision("maybe")


def test_an_unmeasurable_outline_keeps_the_pair(monkeypatch):
  """boundary_contrast nan (no outline edge inside the query): undecided and
  kept, as its docstring says, not judged a reverse crop."""
  feats, _ = verification.extract_all([P, crop(P, 0.1, 0.1, 0.7, 0.7)])
  assert verification.verify(feats[0], feats[1]).reason == "reverse"
  monkeypatch.setattr(verification, "boundary_contrast", lambda *a, **k: float("nan"))
  v = verification.verify(feats[0], feats[1])
  assert v.keep and not v.decided and v.reason == "undecided:no_edge"


def test_reference_features_use_the_verify_settings(monkeypatch):
  seen = []
  real = verification.extract

  def spy(image, cfg=None, **kw):
    cfg = cfg or verification.VerifyConfig()
    seen.append((cfg.max_side, cfg.num_features))
    return real(image, cfg, **kw)

  monkeypatch.setattr(verification, "extract", spy)
  cfg = verification.VerifyConfig(max_side=256, num_features=300)
  images = [P, crop(P, 0.1, 0.1, 0.7, 0.7)]
  decisions.verify_candidates([1], [0], lambda i: images[i], lambda i: images[i], cfg, 1,
                              log=lambda _: None)
  assert seen and set(seen) == {(256, 300)}


def test_streamed_verification_gives_the_all_at_once_verdicts_in_bounded_memory():
  """Pairs in query order, in batches, references in a small LRU cache: the
  verdicts of extracting every image's features at once and verifying each
  pair, each query extracted once, the cache never over its capacity."""
  from asl_jax import verification_stream
  cfg = verification.VerifyConfig(max_side=256, num_features=300)
  images = [P, crop(P, 0.1, 0.1, 0.7, 0.7), photo(5), crop(P, 0.2, 0.1, 0.8, 0.9),
            crop(photo(5), 0.3, 0.2, 0.9, 0.8), photo(6)]
  rng = np.random.default_rng(0)
  qi = rng.integers(0, 6, 40)
  ri = rng.integers(0, 6, 40)
  feats, mirrors = verification.extract_all(images, cfg, mirror=True)
  expected = verification.verify_pairs(feats, feats, qi, ri, cfg, mirrors, workers=1)
  loads = []

  def load_query(i):
    loads.append(i)
    return images[i]
  got, timing = verification_stream.verify_stream(
      qi, ri, load_query, lambda i: images[i], cfg, 2, batch_pairs=5, batch_queries=2,
      reference_cache=2, log=lambda _: None, progress_seconds=0)
  assert [str(v) for v in got] == [str(v) for v in expected]
  assert {v.reason for v in got} >= {"copy:inside", "reverse"}  # Not all undecided.
  assert sorted(loads) == sorted(set(qi.tolist()))  # Each query extracted once.
  assert timing["query_extractions"] == len(set(qi.tolist()))
  assert timing["reference_cache_max"] == 2
  assert timing["reference_extractions"] > len(set(ri.tolist()))  # Evictions cost re-extraction.


def test_stream_batches_and_the_cache_are_bounded():
  from asl_jax import verification_stream
  qi = np.array([3, 1, 1, 2, 3, 1, 0, 0, 0, 0, 0, 2])
  cut = list(verification_stream.batches(qi, batch_pairs=4, batch_queries=2))
  assert sorted(np.concatenate(cut).tolist()) == list(range(12))
  flat = np.concatenate(cut)
  assert np.all(np.diff(qi[flat]) >= 0)  # In query order.
  for b in cut:
    assert len(b) <= 4 and len(set(qi[b].tolist())) <= 2
  cache = verification_stream.LRUCache(2)
  made = []
  for key in [1, 2, 1, 3, 2, 1]:
    cache.get(key, lambda key=key: made.append(key) or key)
    assert len(cache.items) <= 2
  assert made == [1, 2, 3, 2, 1]  # 2 evicted by 3 (1 was used more recently), and so on.


def test_a_reverse_crop_slightly_wider_than_its_reference_is_not_inside():
  """The reference is the middle 86% of the query's width (the query 17% wider): the old
  rule (cover >= 0.8: inside, a copy, rescored above unverified true copies) passed it; now
  only a query nearly all inside the outline is inside, and this one is judged at the
  outline, where the scene continues: reverse. A true crop stays inside."""
  reference = crop(P, 0.07, 0.0, 0.93, 1.0)
  old = judge(P, reference, cover=0.8)
  assert old.reason == "copy:inside" and 0.8 < old.cover < 0.9
  v = judge(P, reference)
  assert v.decided and not v.keep and v.reason == "reverse", v
  assert verification.VerifyConfig().cover >= 0.95
  kept = judge(crop(P, 0.05, 0.05, 0.95, 0.95), P)
  assert kept.decided and kept.keep and kept.reason == "copy:inside" and kept.cover > 0.97
