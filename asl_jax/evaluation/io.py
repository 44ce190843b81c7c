"""ISC2021 file formats: ground truth and prediction CSVs, descriptor HDF5.

* Ground truth: `query_id,reference_id`, one row per query, an empty
  reference for queries that copy nothing. A header line is optional.
* Predictions: `query_id,reference_id,score`, higher score = more likely a
  copy; ids without extension. A header line is optional.
* Descriptors, working layout (ISC `write_hdf5_descriptors`): datasets
  `vectors` float32 [n, d] and `image_names` (bytes); path prefixes and image
  extensions are stripped on reading.
* Descriptors, track-2 submission layout: `query`, `reference` float32 and
  `query_ids`, `reference_ids` (bytes, sorted by id).

Readers accept a UTF-8 BOM, CRLF line ends and trailing blank lines, and raise
`FormatError` naming the file and line of the first bad rows.
"""

import csv
import dataclasses
import os
from typing import Sequence

import numpy as np

from asl_jax import errors, image_folder, paths
from asl_jax.errors import UserError


class FormatError(UserError):
  """A malformed input file; the message names the file and line."""


def _rows(path: str, what: str):
  """(line number, fields) of the non-blank lines of a CSV file, `what` it should be."""
  if not os.path.exists(path):
    raise FormatError(f"{path}: no such file.")
  for lineno, fields in enumerate(errors.csv_rows(path, what, FormatError), 1):
    if any(x.strip() for x in fields):
      yield lineno, [x.strip() for x in fields]


def _looks_like_header(fields) -> bool:
  """A first row of words naming the columns (query,reference / qid,rid ...)."""
  words = [x.lower() for x in fields[:2]]
  return (bool(words[0]) and all(w.replace("_", "").replace(" ", "").isalpha() for w in words)
          and any(k in words[0] for k in ("query", "qid", "id"))
          and (len(words) < 2 or any(k in words[1] for k in ("ref", "rid", "id", "match"))))


def read_ground_truth(path: str) -> list[tuple[str, str]]:
  """(query id, reference id or '') rows of an ISC ground-truth CSV.

  A header is `query_id,reference_id` (more columns after them are read past,
  as when a set is prepared) or none; a first row that names the columns
  otherwise is an error (it would count as a copy pair)."""
  out, seen, bad, width = [], {}, [], 2
  for lineno, fields in _rows(path, "a ground truth (query_id,reference_id rows)"):
    if fields[:2] == ["query_id", "reference_id"]:
      width = max(2, len(fields))
      continue
    if not out and not bad and _looks_like_header(fields):
      raise FormatError(
          f"{path}: line {lineno} {','.join(fields)!r} looks like a header, but the header "
          "of a ground truth is exactly 'query_id,reference_id' (or none); as it is, it "
          "would be read as a copy pair. Rename it to query_id,reference_id or remove it.")
    if len(fields) not in (1, 2, width) or not fields[0]:
      bad.append(f"line {lineno}: {','.join(fields)!r}")
      continue
    q, r = fields[0], fields[1] if len(fields) >= 2 else ""
    if q in seen:
      bad.append(f"line {lineno}: query {q} already on line {seen[q]}")
      continue
    seen[q] = lineno
    out.append((q, r))
  if bad:
    raise FormatError(f"{path}: expected rows 'query_id,reference_id' (empty "
                      "reference for non-copies), one per query; "
                      f"{len(bad)} bad row(s): " + "; ".join(bad[:5]))
  return out


@dataclasses.dataclass
class Predictions:
  query_ids: list[str]
  reference_ids: list[str]
  scores: np.ndarray


def read_predictions(path: str) -> Predictions:
  """Rows of an ISC predictions CSV; duplicates and bad rows are errors."""
  q, r, s, bad, seen = [], [], [], [], {}
  for lineno, fields in _rows(path, "a predictions CSV (query_id,reference_id,score rows)"):
    if fields[:3] == ["query_id", "reference_id", "score"]:
      continue
    if len(fields) != 3 or not fields[0] or not fields[1]:
      bad.append(f"line {lineno}: expected 3 columns query_id,reference_id,"
                 f"score, got {','.join(fields)!r}")
      continue
    try:
      score = float(fields[2])
    except ValueError:
      bad.append(f"line {lineno}: score {fields[2]!r} is not a number")
      continue
    if not np.isfinite(score):
      bad.append(f"line {lineno}: score {fields[2]!r} is not finite")
      continue
    key = (fields[0], fields[1])
    if key in seen:
      bad.append(f"line {lineno}: duplicate pair {key[0]},{key[1]} (first on "
                 f"line {seen[key]})")
      continue
    seen[key] = lineno
    q.append(fields[0])
    r.append(fields[1])
    s.append(score)
  if bad:
    raise FormatError(f"{path}: {len(bad)} bad row(s): " + "; ".join(bad[:5]))
  if not q:
    size = os.path.getsize(path)
    what = f"{size} bytes" + (", a header only" if size else "")
    raise FormatError(f"{path}: no prediction rows ({what}); expected rows "
                      "query_id,reference_id,score. A run that predicts "
                      "nothing is usually a failed run: check the file that was meant.")
  return Predictions(q, r, np.asarray(s, np.float64))


def write_ground_truth(path: str, rows: Sequence[tuple[str, str]]):
  with open(path, "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["query_id", "reference_id"])
    w.writerows(rows)


def write_predictions(path: str, query_ids, reference_ids, scores):
  """The ISC predictions CSV; a file already at `path` is replaced only once
  the new one is complete."""
  with paths.replaced_when_written(path, newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["query_id", "reference_id", "score"])
    for q, r, s in zip(query_ids, reference_ids, scores):
      w.writerow([q, r, repr(float(s))])


# ---------------------------------------------------------------- HDF5 --
def _clean_id(name) -> str:
  name = name.decode() if isinstance(name, bytes) else str(name)
  name = os.path.basename(name)
  root, ext = os.path.splitext(name)
  return root if ext.lower() in image_folder.IMAGE_EXTENSIONS else name


def write_descriptors(path: str, ids: Sequence[str], vectors: np.ndarray, **extra):
  """ISC working layout: `vectors` and `image_names` (plus `extra` datasets,
  e.g. `gate_norms`, which ISC readers ignore)."""
  import h5py
  with h5py.File(path, "w") as f:
    f.create_dataset("vectors", data=np.asarray(vectors, np.float32))
    f.create_dataset("image_names", data=np.array([i.encode() for i in ids]))
    for name, value in extra.items():
      f.create_dataset(name, data=np.asarray(value))


def _h5(path: str):
  """h5py.File(path, 'r'), a missing or non-HDF5 file a FormatError."""
  import h5py
  if not os.path.isfile(path):
    raise FormatError(f"{path}: no such file (expected an HDF5 descriptor file).")
  try:
    return h5py.File(path, "r")
  except OSError as e:
    raise FormatError(f"{path} is not an HDF5 file ({e}); expected descriptors written as "
                      "HDF5 (README, 'The other commands').") from None


def check_vectors(path: str, name: str, vectors: np.ndarray, ids: Sequence[str]) -> np.ndarray:
  """[n, d] float32 with finite values, or a FormatError naming the rows."""
  if vectors.ndim != 2 or vectors.shape[1] == 0:
    raise FormatError(f"{path}: '{name}' has shape {vectors.shape}; expected [n, d] (one "
                      "descriptor of d > 0 dimensions per image). A 1-D array holds no "
                      "per-image vectors: write vectors[None] for one image.")
  bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
  if bad.size:
    names = ", ".join(str(ids[i]) if i < len(ids) else f"row {i}" for i in bad[:5])
    raise FormatError(f"{path}: {bad.size} of the {len(vectors)} descriptors in '{name}' hold "
                      f"NaN or infinite values (e.g. {names}); one such vector corrupts the "
                      "search silently. Recompute them, or drop those images.")
  return vectors


def read_descriptors(paths: str | Sequence[str]) -> tuple[list[str], np.ndarray]:
  """ISC working layout, one file or several shards concatenated."""
  paths = [paths] if isinstance(paths, str) else list(paths)
  ids, vecs = [], []
  for p in paths:
    with _h5(p) as f:
      if "vectors" not in f or "image_names" not in f:
        raise FormatError(f"{p}: expected datasets 'vectors' and 'image_names' "
                          f"(ISC working layout); found {sorted(f.keys())}.")
      names = [_clean_id(n) for n in np.atleast_1d(f["image_names"][()])]
      vecs.append(check_vectors(p, "vectors", np.asarray(f["vectors"], np.float32), names))
      ids += names
      if len(ids) != sum(len(v) for v in vecs):
        raise FormatError(f"{p}: 'vectors' and 'image_names' differ in length.")
      if vecs[-1].shape[1] != vecs[0].shape[1]:
        raise FormatError(f"{p}: its descriptors have {vecs[-1].shape[1]} dimensions, those "
                          f"of {paths[0]} {vecs[0].shape[1]}; the shards must match.")
  return ids, np.concatenate(vecs)


def write_submission(path: str, query_ids, query, reference_ids, reference):
  """Track-2 submission layout, ids sorted as the official evaluation expects."""
  import h5py
  qo, ro = np.argsort(query_ids), np.argsort(reference_ids)
  with h5py.File(path, "w") as f:
    f.create_dataset("query", data=np.asarray(query, np.float32)[qo])
    f.create_dataset("reference", data=np.asarray(reference, np.float32)[ro])
    f.create_dataset("query_ids", data=np.array([query_ids[i].encode() for i in qo]))
    f.create_dataset("reference_ids",
                     data=np.array([reference_ids[i].encode() for i in ro]))


def read_submission(path: str):
  """(query ids, query vectors, reference ids, reference vectors)."""
  with _h5(path) as f:
    need = {"query", "reference", "query_ids", "reference_ids"}
    if not need <= set(f.keys()):
      raise FormatError(f"{path}: expected datasets {sorted(need)} (track-2 "
                        f"submission layout); found {sorted(f.keys())}.")
    qi = [_clean_id(x) for x in np.atleast_1d(f["query_ids"][()])]
    ri = [_clean_id(x) for x in np.atleast_1d(f["reference_ids"][()])]
    q = check_vectors(path, "query", np.asarray(f["query"], np.float32), qi)
    r = check_vectors(path, "reference", np.asarray(f["reference"], np.float32), ri)
  for name, v, ids in (("query", q, qi), ("reference", r, ri)):
    if len(v) != len(ids):
      raise FormatError(f"{path}: '{name}' holds {len(v)} descriptors but '{name}_ids' "
                        f"{len(ids)} ids; they must match.")
  if q.shape[1] != r.shape[1]:
    raise FormatError(f"{path}: query descriptors have {q.shape[1]} dimensions "
                      f"but references {r.shape[1]}; they must match.")
  return qi, q, ri, r


def is_submission_file(path: str) -> bool:
  with _h5(path) as f:
    return "query" in f and "reference" in f


def read_gate_norms(path: str) -> dict[str, float] | None:
  """id -> gate-feature norm of a descriptor file written by an asl_jax
  evaluation (None when the file holds no `gate_norms`)."""
  import h5py
  with h5py.File(path, "r") as f:
    if "gate_norms" not in f:
      return None
    ids = [_clean_id(n) for n in f["image_names"][:]]
    return dict(zip(ids, np.asarray(f["gate_norms"], np.float64).tolist(), strict=True))


def image_files(folder: str) -> dict[str, str]:
  """id (file stem) -> path of every image (image_folder.IMAGE_EXTENSIONS)
  under `folder`; an id found twice is an error naming both files."""
  out = {}
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    for name in sorted(files):
      stem, ext = os.path.splitext(name)
      if ext.lower() not in image_folder.IMAGE_EXTENSIONS:
        continue
      path = os.path.join(root, name)
      if stem in out:
        raise FormatError(f"{folder}: the id {stem} has two images, {out[stem]} and {path}; "
                          "keep one.")
      out[stem] = path
  return out
