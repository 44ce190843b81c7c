"""Asymmetric pairwise verification of candidate pairs (an extension of ASL).

ASL's gate asks, from two descriptor norms, which image of a candidate pair
holds more content. This module answers the same question from local
correspondences, as the ISC2021 winners verified their candidates
(recall_surrogate.md Part B.6): SIFT keypoints (OpenCV) of the query and the
reference, ratio-test matches, a RANSAC similarity fit from reference to
query, and then the reference's outline projected into the query.

* The query lies inside the reference's outline (a crop, a resize, a
  recolouring of it): a copy, kept. Inside means nearly all of it
  (`cover`, 0.95: the fit's error): a query that holds a little more than
  the reference is judged at the outline as below, never waved through.
* The reference's outline covers only part of the query: the query holds
  more than the reference. ISC2021 calls that a copy when the rest of the
  query is unrelated content (the reference pasted onto another photo,
  padded, inside a screenshot or a meme) and not a copy when the rest is the
  continuation of the same scene (the reference is a crop of the query: a
  reverse-direction hard negative). The two are told apart at the outline:
  a pasted image meets its surroundings in a step that runs along the whole
  outline, a continued scene does not (`boundary_contrast`).
* No reliable geometry (too few inliers, a degenerate fit): no decision; the
  pair is kept and the descriptor's score stands.

Features are computed once per image (`extract`), the matching and the fit
once per pair (`verify`; many pairs in bounded memory: verification_stream.py). All thresholds are
fields of `VerifyConfig` and recorded with the run.
"""

import dataclasses
import os
from concurrent import futures

import numpy as np

try:
  import cv2
except ImportError:  # Checked by `require_opencv`, with the install line.
  cv2 = None


def require_opencv():
  if cv2 is None:
    raise ImportError(
        "Pairwise verification needs OpenCV: pip install opencv-python-headless "
        "(a dependency of asl_jax; reinstall with pip install -e .).")


@dataclasses.dataclass(frozen=True)
class VerifyConfig:
  """Settings of the verification; every field is recorded with a run."""
  max_side: int = 512            # Images are scaled to at most this side.
  num_features: int = 1000       # SIFT keypoints kept per image.
  ratio: float = 0.8             # Lowe's ratio test.
  ransac_threshold: float = 0.02  # Inlier distance, as a fraction of the query's diagonal.
  min_inliers: int = 10          # Fewer: no decision (the pair is kept).
  min_inlier_fraction: float = 0.15  # Of the ratio-test matches.
  # Reference outline covers >= this of the query: inside it, a copy. Nearly all (the fit's
  # error): at 0.8 a reverse crop 17% wider than its reference (cover 0.85) was "inside".
  cover: float = 0.95
  contrast: float = 2.0          # Outline step / step beside it >= this: pasted, a copy.
  mirror: bool = True            # Also match the mirrored query (flipped copies).


@dataclasses.dataclass
class Features:
  """Local features of one image, at the working size."""
  points: np.ndarray       # float32 [n, 2] (x, y)
  descriptors: np.ndarray  # float32 [n, 128] RootSIFT
  size: tuple[int, int]    # (width, height) of the working image
  # uint8 [h, w, 3] working image for the outline test, which reads only the
  # query's: None for a reference.
  image: np.ndarray | None = None


def _working_image(image: np.ndarray, max_side: int) -> np.ndarray:
  h, w = image.shape[:2]
  scale = min(1.0, max_side / max(h, w))
  if scale < 1.0:
    image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
  return image


def extract(image: np.ndarray, cfg: VerifyConfig = VerifyConfig(),
            keep_image: bool = True) -> Features:
  """SIFT keypoints with RootSIFT descriptors of a uint8 RGB image (and the
  working image itself with `keep_image`: queries need it, references not)."""
  require_opencv()
  image = _working_image(np.ascontiguousarray(image), cfg.max_side)
  gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
  sift = cv2.SIFT_create(nfeatures=cfg.num_features)
  keypoints, desc = sift.detectAndCompute(gray, None)
  if desc is None or not keypoints:
    points, desc = np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
  else:
    points = np.array([k.pt for k in keypoints], np.float32)
    # RootSIFT (Arandjelović and Zisserman 2012): L1-normalise, square root.
    desc = np.sqrt(desc / np.maximum(desc.sum(1, keepdims=True), 1e-7)).astype(np.float32)
  return Features(points, desc, (image.shape[1], image.shape[0]),
                  image if keep_image else None)


def mirrored(image: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(image[:, ::-1])


# ------------------------------------------------------------- one pair --
@dataclasses.dataclass
class Verdict:
  """What the verification found for one (query, reference) pair."""
  decided: bool            # Enough consistent geometry to judge.
  keep: bool               # The pair stays a candidate (True when undecided).
  inliers: int
  matches: int
  cover: float             # Fraction of the query inside the reference's outline.
  contrast: float          # Step at the outline / step beside it (nan: not measured).
  reason: str              # copy:inside | copy:pasted | reverse | undecided:<why>


def _ratio_matches(q: Features, r: Features, ratio: float):
  """(query idx, reference idx) of matches that pass Lowe's ratio test."""
  if len(q.descriptors) < 2 or len(r.descriptors) < 2:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  # Distances of unit vectors: sqrt(2 - 2 cos). The two best by a max, a
  # masked max (3x faster than an argpartition of the whole matrix).
  sim = q.descriptors @ r.descriptors.T
  rows = np.arange(len(sim))
  top = sim.argmax(1)
  best = sim[rows, top]
  sim[rows, top] = -np.inf
  second = sim.max(1)
  d1 = np.sqrt(np.maximum(2 - 2 * best, 0))
  d2 = np.sqrt(np.maximum(2 - 2 * second, 0))
  ok = d1 < ratio * d2
  return np.flatnonzero(ok), top[ok]


def _fit(q: Features, r: Features, cfg: VerifyConfig):
  """RANSAC affine fit reference -> query: (2x3 matrix or None, inliers, matches).

  A full affine map rather than a similarity: aspect-ratio changes are
  ISC2021 edits, and a similarity would see the stretched copy's frame
  overhang the reference's outline."""
  qi, ri = _ratio_matches(q, r, cfg.ratio)
  if len(qi) < max(cfg.min_inliers, 3):
    return None, 0, len(qi)
  w, h = q.size
  threshold = cfg.ransac_threshold * float(np.hypot(w, h))
  matrix, mask = cv2.estimateAffine2D(
      r.points[ri], q.points[qi], method=cv2.RANSAC,
      ransacReprojThreshold=threshold, maxIters=2000, confidence=0.995)
  inliers = int(mask.sum()) if mask is not None else 0
  return matrix, inliers, len(qi)


def _outline(matrix: np.ndarray, size) -> np.ndarray:
  """The reference's frame corners [4, 2] mapped into the query."""
  w, h = size
  corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
  return corners @ matrix[:, :2].T + matrix[:, 2]


def _cover(polygon: np.ndarray, size) -> float:
  """Fraction of the query's frame inside `polygon`."""
  w, h = size
  frame = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
  area, _ = cv2.intersectConvexConvex(polygon.astype(np.float32), frame)
  return float(area) / float(w * h)


def boundary_contrast(image: np.ndarray, polygon: np.ndarray, *, near: float = 3.0,
                      far: float = 7.0, beside: float = 10.0, margin: float = 4.0,
                      step: float = 2.0) -> float:
  """How much more the image changes across the outline than beside it.

  Samples the outline's edges that run inside the image (edges on the
  image's own border say nothing), and at each sample compares the mean
  colour of a band just inside the outline with one just outside
  (`near`..`far` pixels away): the step across the outline. The same step
  measured on a line `beside` pixels further inside is the scene's own rate
  of change. Returns median(step across) / median(step beside); about 1 for
  a scene that continues across the outline, large for a pasted image or a
  flat border. nan when no edge runs inside the image.
  """
  h, w = image.shape[:2]
  center = polygon.mean(0)
  across, inside = [], []
  offsets = np.arange(near, far + 1e-6, 1.0, dtype=np.float32)
  for a, b in zip(polygon, np.roll(polygon, -1, 0), strict=True):
    length = float(np.hypot(*(b - a)))
    if length < 4 * far:
      continue
    t = np.arange(far, length - far, step, dtype=np.float32) / length
    points = a + t[:, None] * (b - a)
    normal = np.array([-(b - a)[1], (b - a)[0]], np.float32) / length
    if np.dot(center - points.mean(0), normal) < 0:
      normal = -normal  # Points into the outline.
    reach = far + beside
    lo, hi = points - reach * normal, points + reach * normal
    ok = ((np.minimum(lo[:, 0], hi[:, 0]) >= margin) & (np.maximum(lo[:, 0], hi[:, 0]) < w - margin)
          & (np.minimum(lo[:, 1], hi[:, 1]) >= margin)
          & (np.maximum(lo[:, 1], hi[:, 1]) < h - margin))
    if ok.sum() < 5:
      continue
    points = points[ok]

    out_band = _band(image, points, normal, -offsets)
    in_band = _band(image, points, normal, offsets)
    in_far = _band(image, points, normal, offsets + beside)
    across.append(np.abs(in_band - out_band).sum(-1))
    inside.append(np.abs(in_far - in_band).sum(-1))
  if not across:
    return float("nan")
  a, b = np.median(np.concatenate(across)), np.median(np.concatenate(inside))
  return float(a / max(b, 1e-3))


def _band(image, points, normal, shifts) -> np.ndarray:
  """Mean colour over `shifts` of the samples at points + shift * normal."""
  p = points[:, None, :] + shifts[None, :, None] * normal[None, None, :]
  return _bilinear(image, p).mean(1)


def _bilinear(image: np.ndarray, points: np.ndarray) -> np.ndarray:
  """image [h, w, c] sampled at points [..., 2] (x, y) -> [..., c]."""
  h, w = image.shape[:2]
  x = np.clip(points[..., 0], 0, w - 1.001)
  y = np.clip(points[..., 1], 0, h - 1.001)
  x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
  fx, fy = (x - x0)[..., None], (y - y0)[..., None]
  top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
  bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
  return top * (1 - fy) + bottom * fy


def verify(query: Features, reference: Features, cfg: VerifyConfig = VerifyConfig(),
           query_mirror: Features | None = None) -> Verdict:
  """The verdict on one pair (see the module docstring)."""
  best = None
  for q in (query, query_mirror):
    if q is None:
      continue
    matrix, inliers, matches = _fit(q, reference, cfg)
    if best is None or inliers > best[2]:
      best = (q, matrix, inliers, matches)
  q, matrix, inliers, matches = best
  if matrix is None or inliers < cfg.min_inliers:
    return Verdict(False, True, inliers, matches, float("nan"), float("nan"),
                   "undecided:few_inliers")
  if inliers < cfg.min_inlier_fraction * matches:
    return Verdict(False, True, inliers, matches, float("nan"), float("nan"),
                   "undecided:inconsistent")
  singular = np.linalg.svd(matrix[:, :2], compute_uv=False)
  if not (0.05 < singular[1] and singular[0] < 20 and singular[0] < 4 * singular[1]):
    return Verdict(False, True, inliers, matches, float("nan"), float("nan"),
                   "undecided:degenerate")
  polygon = _outline(matrix, reference.size)
  cover = _cover(polygon, q.size)
  if cover >= cfg.cover:
    return Verdict(True, True, inliers, matches, cover, float("nan"), "copy:inside")
  contrast = boundary_contrast(q.image.astype(np.float32) / 255.0, polygon)
  if not np.isfinite(contrast):  # No outline edge inside the query to judge: no decision.
    return Verdict(False, True, inliers, matches, cover, contrast, "undecided:no_edge")
  if contrast >= cfg.contrast:
    return Verdict(True, True, inliers, matches, cover, contrast, "copy:pasted")
  return Verdict(True, False, inliers, matches, cover, contrast, "reverse")


# ------------------------------------------------------------ many pairs --
def verify_pairs(query_feats: list, ref_feats: list, query_index, reference_index,
                 cfg: VerifyConfig = VerifyConfig(), query_mirrors: list | None = None,
                 workers: int = 0) -> list[Verdict]:
  """Verdicts for the candidate pairs (query_index[i], reference_index[i]).

  workers: threads (0: one per core). NumPy's products and OpenCV's fits
  release the GIL, so threads scale without copying the features; OpenCV's
  own thread pool is held at one thread meanwhile (nested pools contend).
  Features are computed once per image by the caller; each pair costs one
  descriptor product and one RANSAC fit (two with the mirrored query).
  """
  pairs = list(zip(np.asarray(query_index).tolist(), np.asarray(reference_index).tolist(),
                   strict=True))
  one = lambda p: verify(query_feats[p[0]], ref_feats[p[1]], cfg,
                         query_mirrors[p[0]] if query_mirrors is not None else None)
  workers = workers or os.cpu_count() or 1
  previous = cv2.getNumThreads()
  cv2.setNumThreads(1)
  try:
    if workers == 1:
      return [one(p) for p in pairs]
    with futures.ThreadPoolExecutor(workers) as pool:
      return list(pool.map(one, pairs, chunksize=64))
  finally:
    cv2.setNumThreads(previous)


def extract_all(images, cfg: VerifyConfig = VerifyConfig(), mirror: bool = False):
  """Features of each image of an iterable of uint8 RGB arrays (and of its
  mirror image when asked)."""
  feats, mirrors = [], [] if mirror else None
  for image in images:
    feats.append(extract(image, cfg))
    if mirror:
      mirrors.append(extract(mirrored(image), cfg))
  return feats, mirrors
