"""Any image-copy-detection set in the DISC21 layout, as an `ndec` config.

  <folder>/
    references/       reference images, any file names (the stem is the id)
    queries/          query images
    ground_truth.csv  query_id,reference_id (empty reference_id: not a copy)
    train/            optional: unlabelled training images
    queries.csv       optional: query_id,kind[,reference_id][,detail]
                      [,information_amount]; kind is
                      copy | distractor | hard_negative/<subkind>; for a hard
                      negative, reference_id names the reference it resembles
                      (not a match); detail of a copy lists its edits
                      ("crop(area=0.5)+grayscale").

Each set is prepared as `ndec/folder_<name>` (the name given, or the folder's
own name), so two sets never share a directory; the folder's path and a
digest of its file list are kept in the dataset's metadata, and preparing
another folder under a name already taken is refused. Everything is checked
before any image is read; errors name the files, lines and ids.
"""

import dataclasses
import hashlib
import os
import re

from asl_jax import errors
from tfds_ndec import manual

ANY_ID = r"[^/\\]+"
REFERENCES = manual.Part("reference images", ("references",), ANY_ID)
QUERIES = manual.Part("query images", ("queries",), ANY_ID)
TRAIN = manual.Part("training images", ("train",), ANY_ID)
GROUND_TRUTH = ("ground_truth.csv", "dev_ground_truth.csv", "public_ground_truth_h5.csv")
QUERY_KINDS = "queries.csv"
_NAME = re.compile(r"[A-Za-z0-9_]+")
_SHOW = 5

LAYOUT = __doc__.split("\n\n")[1]


def set_name(folder: str, name: str = "") -> str:
  """The set's name: `name`, else the folder's own name, as letters, digits
  and underscores (a TFDS config name)."""
  raw = name or os.path.basename(os.path.normpath(os.path.abspath(folder)))
  clean = re.sub(r"[^A-Za-z0-9_]+", "_", raw).strip("_").lower()
  if not clean:
    raise manual.NdecInputError(
        f"Cannot make a dataset name from {raw!r}: give one made of letters, digits "
        "and underscores (--name, or config.data.name).")
  return clean


@dataclasses.dataclass(frozen=True)
class QueryKind:
  kind: str                # copy | distractor | hard_negative
  hard_negative_kind: str  # The <subkind> of hard_negative/<subkind>.
  resembles_id: str        # Hard negatives: the reference they resemble.
  edits: str               # Copies: the edits, '+'-separated names.
  information_amount: str = ""  # Copies: the share of the reference kept ('' unknown).


def edit_names(detail: str) -> str:
  """'rotate(-5)+color_jitter(b=1.2)' -> 'rotate+color_jitter'."""
  names = []
  for part in re.split(r"\+(?![^()]*\))", detail or ""):
    name = part.split("(", 1)[0].strip()
    if name and _NAME.fullmatch(name):
      names.append(name)
  return "+".join(names)


def read_query_kinds(path: str) -> dict[str, tuple[int, QueryKind, str]]:
  """query id -> (line, kind, reference_id column) of a queries.csv."""
  rows = errors.csv_rows(path, "a queries.csv (query_id,kind,reference_id,detail)",
                         manual.NdecInputError)
  if not rows or [x.strip().lower() for x in rows[0]][:1] != ["query_id"]:
    raise manual.NdecInputError(
        f"{path}: the first line must be a header starting with query_id and naming "
        "a kind column (query_id,kind,reference_id,detail).")
  header = [x.strip().lower() for x in rows[0]]
  if "kind" not in header:
    raise manual.NdecInputError(f"{path}: the header {','.join(header)!r} has no kind column.")
  out, bad = {}, []
  for line, fields in enumerate(rows[1:], start=2):
    if not any(x.strip() for x in fields):
      continue
    if len(fields) != len(header):
      bad.append(f"line {line}: {len(fields)} fields, expected {len(header)}")
      continue
    row = dict(zip(header, (x.strip() for x in fields), strict=True))
    q, kind = row["query_id"], row["kind"]
    main, _, sub = kind.partition("/")
    if not ((kind in ("copy", "distractor")) or (main == "hard_negative" and sub)):
      bad.append(f"line {line}: kind {kind!r} (use copy, distractor or "
                 "hard_negative/<subkind>)")
      continue
    if q in out:
      bad.append(f"line {line}: {q} already on line {out[q][0]}")
      continue
    ref = row.get("reference_id", "")
    amount = row.get("information_amount", "")
    if amount:
      try:
        ok = 0 <= float(amount) <= 1
      except ValueError:
        ok = False
      if not ok:
        bad.append(f"line {line}: information_amount {amount!r} (a number in [0, 1])")
        continue
    out[q] = (line, QueryKind(main, sub, ref if main == "hard_negative" else "",
                              edit_names(row.get("detail", "")) if main == "copy" else "",
                              amount if main == "copy" else ""),
              ref)
  if bad:
    raise manual.NdecInputError(
        f"{path} has {len(bad)} bad rows; fix them and prepare again: "
        + "; ".join(bad[:_SHOW]))
  return out


def _check_kinds(path, kinds, rows, reference_ids):
  """queries.csv must list the same queries as the ground truth and agree
  with it on which are copies (and of what)."""
  gt = {r.query_id: r for r in rows}
  problems = []
  missing = sorted(set(gt) - set(kinds))
  extra = sorted(set(kinds) - set(gt))
  if missing:
    problems.append(f"{len(missing)} queries of the ground truth have no row "
                    f"({', '.join(missing[:_SHOW])})")
  if extra:
    problems.append(f"{len(extra)} rows name queries the ground truth does not list "
                    f"({', '.join(extra[:_SHOW])})")
  disagree = []
  for q, (line, kind, ref) in kinds.items():
    if q not in gt:
      continue
    truth = gt[q].reference_id
    if (kind.kind == "copy") != bool(truth):
      disagree.append(f"line {line}: {q} is {kind.kind!r} but the ground truth says "
                      + (f"it copies {truth}" if truth else "it copies nothing"))
    elif kind.kind == "copy" and ref and ref != truth:
      disagree.append(f"line {line}: {q} copies {ref} here but {truth} in the ground truth")
    elif kind.kind == "hard_negative" and ref and ref not in reference_ids:
      disagree.append(f"line {line}: {q} resembles {ref}, which has no reference image")
  if disagree:
    problems.append(f"{len(disagree)} rows disagree with the ground truth or the "
                    f"images ({'; '.join(disagree[:_SHOW])})")
  if problems:
    raise manual.GroundTruthError(
        f"{path} does not match the ground truth: " + "; ".join(problems)
        + ". Fix the CSV (or the ground truth) and prepare again.")


def scan(folder: str, log=print) -> tuple[dict[str, list], dict]:
  """The checked content of a set: split -> items (as `_real_items` gives
  them) and what goes into the metadata. Raises before any image is read."""
  manual.check_manual_dir(folder, LAYOUT)
  missing = manual.missing_paths(folder, [REFERENCES, QUERIES], GROUND_TRUTH)
  if missing:
    raise manual.ManualDirError(
        f"{folder} is not a copy-detection set in the DISC21 layout; it lacks "
        "(looked for):\n  " + "\n  ".join(missing) + f"\n\nExpected:\n{LAYOUT}")
  found = {"references": manual.scan_part(folder, REFERENCES, log),
           "queries": manual.scan_part(folder, QUERIES, log)}
  if manual.part_dirs(folder, TRAIN):
    found["train"] = manual.scan_part(folder, TRAIN, log)
  for split, images in found.items():
    if not images:
      raise manual.ManualDirError(f"{os.path.join(folder, split)} holds no images "
                                  f"({', '.join(manual.IMAGE_EXTENSIONS)}).\n\nExpected:\n{LAYOUT}")
  shared = []
  splits = list(found)
  for i, a in enumerate(splits):
    for b in splits[i + 1:]:
      shared += [f"{x} ({a}/ and {b}/)" for x in sorted(set(found[a]) & set(found[b]))]
  if shared:
    raise manual.ManualDirError(
        f"{len(shared)} image ids of {folder} appear in two subfolders; ids must be "
        "unique across references/, queries/ and train/ (rename them): "
        + "; ".join(shared[:_SHOW]))
  gt_path = manual.find_first(folder, GROUND_TRUTH)
  rows = manual.read_ground_truth(gt_path)
  manual.check_ground_truth(gt_path, rows, found["queries"], found["references"],
                            manual.part_dirs(folder, QUERIES))
  kinds_path = os.path.join(folder, QUERY_KINDS)
  kinds = {}
  if os.path.isfile(kinds_path):
    kinds = read_query_kinds(kinds_path)
    _check_kinds(kinds_path, kinds, rows, found["references"])
  rows = sorted(rows, key=lambda r: r.query_id)
  items = {split: list(found[split].values()) for split in ("train", "references")
           if split in found}
  items["queries"] = [(found["queries"][r.query_id], _with_kind(r, kinds.get(r.query_id)))
                      for r in rows]
  meta = {"folder": os.path.abspath(folder), "files_sha1": _digest(found, gt_path, kinds_path),
          "has_train": "train" in found, "has_query_kinds": bool(kinds)}
  return items, meta


def _with_kind(row: manual.GroundTruthRow, kind):
  if kind is None:
    return row
  _, k, _ = kind
  extra = dict(row.extra)
  extra.update(kind=k.kind, hard_negative_kind=k.hard_negative_kind,
               resembles_id=k.resembles_id, edits=k.edits,
               information_amount=k.information_amount)
  return dataclasses.replace(row, extra=tuple(sorted(extra.items())))


def _digest(found, *paths) -> str:
  h = hashlib.sha1()
  for split in sorted(found):
    for image in found[split].values():
      h.update(f"{split}/{image.path}:{image.size}\n".encode())
  for p in paths:
    if os.path.isfile(p):
      with open(p, "rb") as f:
        h.update(f.read())
  return h.hexdigest()
