"""The copies within one folder of photos, each with its direction: which
image is the source and which the edited copy.

1. Every image is embedded with the run's model (`inference`), upright.
2. Candidates: each image's k nearest others (itself excluded) whose
   descriptor similarity (cosine) is at least `threshold`; each unordered
   pair once.
3. Direction, from the asymmetric pairwise verification (`verification.py`)
   run both ways: with A as the query and B as the reference it says whether
   A lies inside B's outline (`copy:inside`), B's outline sits inside A with a
   step along it (`copy:pasted`: B pasted into A) or B's outline covers part
   of A with the scene continuing across it (`reverse`: B is a crop of A).
     crop        the copy lies inside the source's outline, and the source
                 holds more of the scene (inside one way, reverse the other).
     pasted      the source sits inside the copy, pasted with a visible step.
     inside      inside one way, no decision the other.
     same_frame  each lies inside the other (a resize, recolouring, overlay):
                 the geometry cannot say; the gate norms do (below).
     no_geometry no reliable geometry either way (heavy edits, or not a copy).
     conflicting the two ways disagree.
   ASL's gate norm is the second opinion, and the only one where the geometry
   gives none: a copy holds less of the image than its source, so the source
   is the image with the larger gate norm (method.md §2.3). `norm_ratio` is
   |g(copy)| / |g(source)|; below 1 the norms agree with the direction.
"""

import csv
import dataclasses

import numpy as np

from asl_jax import image_folder, verification
from asl_jax.evaluation import decisions

# Verdicts where the two images share a region the verification found: the pairs
# `find` reports (the others only with --unverified).
VERIFIED = ("crop", "pasted", "inside", "same_frame")


@dataclasses.dataclass
class CopyPair:
  source: int            # Image indices into the folder's images.
  copy: int
  score: float           # Descriptor cosine.
  verdict: str           # See the module docstring.
  decided_by: str        # geometry | norm
  cover: float           # Share of the copy inside the source's outline (nan: no geometry).
  inliers: int           # RANSAC inliers of the better of the two fits.
  norm_ratio: float      # |g(copy)| / |g(source)|.


def candidate_pairs(descriptors: np.ndarray, k: int, threshold: float):
  """(i, j, score) with i < j for each pair where j is among i's k nearest
  others (or i among j's) and the cosine is at least `threshold`; sorted by
  score, best first."""
  n = len(descriptors)
  sims = descriptors @ descriptors.T
  np.fill_diagonal(sims, -np.inf)
  k = min(k, n - 1)
  if k < 1:
    return []
  nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
  pairs = {}
  for i in range(n):
    for j in nearest[i]:
      if sims[i, j] >= threshold:
        pairs[(min(i, j), max(i, j))] = float(sims[i, j])
  return sorted(((i, j, s) for (i, j), s in pairs.items()), key=lambda p: (-p[2], p[0], p[1]))


def direction(ab: verification.Verdict, ba: verification.Verdict, norm_a: float,
              norm_b: float) -> tuple[bool, str, str]:
  """(A is the copy?, verdict, decided_by) from the verdicts with A as the
  query (ab) and with B as the query (ba), and the two gate norms."""
  x, y = ab.reason, ba.reason
  if x == "copy:inside" and y == "reverse":
    return True, "crop", "geometry"
  if y == "copy:inside" and x == "reverse":
    return False, "crop", "geometry"
  if x == "copy:pasted" and y != "copy:pasted":
    return True, "pasted", "geometry"
  if y == "copy:pasted" and x != "copy:pasted":
    return False, "pasted", "geometry"
  if x == "copy:inside" and y == "copy:inside":
    verdict = "same_frame"
  elif x == "copy:inside" and not ba.decided:
    return True, "inside", "geometry"
  elif y == "copy:inside" and not ab.decided:
    return False, "inside", "geometry"
  elif not ab.decided and not ba.decided:
    verdict = "no_geometry"
  else:
    verdict = "conflicting"
  return decisions.norm_keep(norm_a, norm_b), verdict, "norm"  # The gate keeps A -> B.


def verify_both_ways(pairs, load, cfg: verification.VerifyConfig, workers: int = 0):
  """(verdicts with the first image as the query, with the second) of each
  (i, j, score); the features of each image are extracted once (`load`:
  index -> uint8 RGB, upright)."""
  if not pairs:
    return [], []
  images = sorted({i for i, _, _ in pairs} | {j for _, j, _ in pairs})
  pos = {image: p for p, image in enumerate(images)}
  feats, mirrors = verification.extract_all((load(i) for i in images), cfg, mirror=cfg.mirror)
  a = [pos[i] for i, _, _ in pairs]
  b = [pos[j] for _, j, _ in pairs]
  verdicts = verification.verify_pairs(feats, feats, a + b, b + a, cfg, mirrors, workers)
  return verdicts[:len(pairs)], verdicts[len(pairs):]


def decide(pairs, gate_norms, verdicts_ab, verdicts_ba) -> list[CopyPair]:
  """A CopyPair, direction decided, for each candidate (i, j, score)."""
  out = []
  for (i, j, score), ab, ba in zip(pairs, verdicts_ab, verdicts_ba, strict=True):
    a_is_copy, verdict, by = direction(ab, ba, gate_norms[i], gate_norms[j])
    copy, source = (i, j) if a_is_copy else (j, i)
    as_query = ab if a_is_copy else ba  # The fit with the copy as the query.
    out.append(CopyPair(source, copy, score, verdict, by,
                        as_query.cover if as_query.decided else float("nan"),
                        max(ab.inliers, ba.inliers),
                        float(gate_norms[copy] / max(gate_norms[source], 1e-12))))
  return out


COLUMNS = ("source", "copy", "score", "verdict", "decided_by", "cover", "inliers",
           "norm_ratio", "norms_agree", "source_size", "copy_size")


def write_pairs(path: str, pairs: list[CopyPair], folder: image_folder.Folder):
  """pairs.csv: one row per pair, COLUMNS; paths relative to the folder."""
  size = lambda i: "x".join(map(str, folder.sizes[i]))
  with open(path, "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(COLUMNS)
    for p in pairs:
      w.writerow([folder.images[p.source], folder.images[p.copy], f"{p.score:.4f}", p.verdict,
                  p.decided_by, "" if np.isnan(p.cover) else f"{p.cover:.3f}", p.inliers,
                  f"{p.norm_ratio:.4f}", str(p.norm_ratio <= 1.0).lower(), size(p.source),
                  size(p.copy)])


def write_skipped(path: str, skipped: list[image_folder.Skipped]):
  """skipped.csv: path,reason of each file not read."""
  with open(path, "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(("path", "reason"))
    w.writerows((s.path, s.reason) for s in skipped)
