"""Reading the real NDEC / DISC21 download from a manual directory.

Everything here is plain Python and PIL (no TFDS): finding each part of the
download in the layouts users have, parsing and checking the ground truth, and
reading one image (optionally re-encoded at a maximum side). Bad input raises
an `NdecInputError` whose message names the files, lines and paths involved
and says what to do; nothing is dropped silently.
"""

import dataclasses
import glob
import io
import os
import re

from PIL import Image, ImageFile

from asl_jax import errors, image_folder, pil_image
from asl_jax.errors import UserError

# The formats PIL reads here (asl_jax.image_folder); other files are listed and left out.
IMAGE_EXTENSIONS = image_folder.IMAGE_EXTENSIONS
_SHOW = 5  # Offending rows/paths quoted in an error message.


class NdecInputError(UserError, ValueError):
  """The manual directory or a file in it is not what the builder expects
  (a UserError: a command shows it as one paragraph)."""


class ManualDirError(NdecInputError):
  """The manual directory, or a required part of it, is missing."""


class GroundTruthError(NdecInputError):
  """The ground-truth CSV is malformed or disagrees with the images."""


class BadImageError(NdecInputError):
  """An image file cannot be read or decoded."""


@dataclasses.dataclass(frozen=True)
class Part:
  """A folder of id-named images in the download.

  `dirs` are glob patterns relative to the manual directory (the first ones
  are Meta's and NDEC's own names, the later ones those of common mirrors and
  of SSCD); every matching folder is searched recursively for files whose stem
  matches `id_pattern`, so flat and sharded (`train_0..19`) layouts both work.
  """
  what: str
  dirs: tuple[str, ...]
  id_pattern: str


TRAIN = Part("DISC21 training images T??????.jpg",
             ("train", "train_[0-9]*", "training", "images/train"), r"T\d{6}")
REFERENCES = Part("DISC21 reference images R??????.jpg",
                  ("references", "references_[0-9]*", "val_ref", "images/references"),
                  r"R\d{6}")
NDEC_QUERIES = Part("NDEC query images Q?????.jpg", ("query_images_h5",), r"Q\d{5}")
DEV_QUERIES = Part("DISC21 dev query images Q?????.jpg",
                   ("dev_queries", "dev_queries_[0-9]*", "queries", "val_query",
                    "images/queries"), r"Q\d{5}")
PAIRS_DIR = "negative_pair"
PAIR_FOLDER = re.compile(r"\d{5}")
NDEC_GROUND_TRUTH = ("public_ground_truth_h5.csv", "ndec_ground_truth.csv",
                     "ground_truth.csv", "list_files/public_ground_truth_h5.csv")
DEV_GROUND_TRUTH = ("dev_ground_truth.csv", "list_files/dev_ground_truth.csv",
                    "val_groundtruth_matches.csv")


@dataclasses.dataclass(frozen=True)
class SourceImage:
  """One image of the download: its id, path relative to the manual
  directory, and size in bytes (for planning shards)."""
  id: str
  path: str
  size: int


# ------------------------------------------------------------------ layout --
def check_manual_dir(manual_dir: str, instructions: str):
  if not os.path.isdir(manual_dir):
    raise ManualDirError(
        f"The manual directory {manual_dir} does not exist. Download NDEC and "
        "DISC21 and place them there as follows, or pass another directory "
        "(DownloadConfig(manual_dir=...), or --manual_dir of "
        f"`python -m tfds_ndec.prepare`).\n{instructions}")


def part_dirs(manual_dir: str, part: Part) -> list[str]:
  """The folders of the manual directory that hold `part` (may be empty)."""
  found = []
  for pattern in part.dirs:
    found += sorted(p for p in glob.glob(os.path.join(manual_dir, pattern))
                    if os.path.isdir(p))
  return list(dict.fromkeys(found))


def missing_paths(manual_dir: str, parts: list[Part], csv_candidates=None,
                  pairs: bool = False) -> list[str]:
  """One line per required part that the manual directory lacks."""
  lines = []
  for part in parts:
    if not part_dirs(manual_dir, part):
      tried = ", ".join(os.path.join(manual_dir, d) for d in part.dirs)
      lines.append(f"{part.what}: none of {tried}")
  if pairs and not os.path.isdir(os.path.join(manual_dir, PAIRS_DIR)):
    lines.append("NDEC hard-negative training pairs: "
                 f"{os.path.join(manual_dir, PAIRS_DIR)}/<5-digit folder>/")
  if csv_candidates and find_first(manual_dir, csv_candidates) is None:
    tried = ", ".join(os.path.join(manual_dir, c) for c in csv_candidates)
    lines.append(f"ground-truth CSV: none of {tried}")
  return lines


def find_first(manual_dir: str, candidates) -> str | None:
  for c in candidates:
    if os.path.isfile(os.path.join(manual_dir, c)):
      return os.path.join(manual_dir, c)
  return None


def _is_image(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS)


def scan_part(manual_dir: str, part: Part, log=print) -> dict[str, SourceImage]:
  """id -> image file, for every image of `part`, sorted by id.

  An id found twice (e.g. as .jpg and .png, or in two shards) is an error;
  image files whose names are not ids of this part are counted and reported.
  """
  pattern = re.compile(part.id_pattern)
  found, dupes, ignored, other = {}, [], [], []
  for folder in part_dirs(manual_dir, part):
    for root, dirnames, filenames in os.walk(folder):
      dirnames.sort()
      for name in sorted(filenames):
        if not _is_image(name):
          if not name.startswith("."):
            other.append(os.path.join(root, name))
          continue
        path = os.path.join(root, name)
        stem = os.path.splitext(name)[0]
        if not pattern.fullmatch(stem):
          ignored.append(path)
          continue
        rel = os.path.relpath(path, manual_dir)
        if stem in found:
          dupes.append(f"{stem}: {found[stem].path} and {rel}")
          continue
        found[stem] = SourceImage(stem, rel, os.path.getsize(path))
  if dupes:
    raise ManualDirError(
        f"{len(dupes)} ids of the {part.what} appear in more than one file "
        f"under {manual_dir}; keep one file per id. First: "
        + "; ".join(dupes[:_SHOW]))
  if other:
    log(f"Note: {len(other)} files among the {part.what} are not images of a format read "
        f"here ({', '.join(IMAGE_EXTENSIONS)}) and are left out: "
        + ", ".join(other[:_SHOW]) + (", ..." if len(other) > _SHOW else ""))
  if ignored:
    log(f"Note: {len(ignored)} image files beside the {part.what} are not "
        f"named like its ids ({part.id_pattern}) and are not part of the "
        f"dataset, e.g. {ignored[0]}")
  return dict(sorted(found.items()))


@dataclasses.dataclass(frozen=True)
class Pair:
  """A hard-negative training pair: its folder name and two images, the one
  named T?????? first."""
  pair_id: str
  first: SourceImage
  second: SourceImage


def scan_pairs(manual_dir: str) -> list[Pair]:
  """The pairs under negative_pair/<5-digit folder>/, in folder order."""
  root = os.path.join(manual_dir, PAIRS_DIR)
  folders = sorted(e.name for e in os.scandir(root) if e.is_dir())
  pairs, bad = [], []
  for folder in folders:
    if not PAIR_FOLDER.fullmatch(folder):
      bad.append(f"{PAIRS_DIR}/{folder} (not a 5-digit folder name)")
      continue
    files = sorted(e.name for e in os.scandir(os.path.join(root, folder))
                   if e.is_file() and _is_image(e.name))
    named = [f for f in files if re.fullmatch(TRAIN.id_pattern, os.path.splitext(f)[0])]
    if len(files) != 2 or not named:
      bad.append(f"{PAIRS_DIR}/{folder} (holds {files or 'no images'}; expected "
                 "two images, one named T??????.jpg)")
      continue
    first = named[0]
    second = files[1] if files[0] == first else files[0]
    pairs.append(Pair(folder, _pair_image(root, folder, first, True),
                      _pair_image(root, folder, second, False)))
  if bad:
    raise ManualDirError(
        f"{len(bad)} of the {len(folders)} folders under {root} are not "
        "hard-negative pairs. Each must be a 5-digit folder with exactly two "
        "images, one of them named T??????.jpg (as `cat negative_pair.tar.* | "
        "tar -xf -` unpacks them); remove or fix: " + "; ".join(bad[:_SHOW]))
  if not pairs:
    raise ManualDirError(f"{root} holds no pair folders; unpack "
                         "negative_pair.tar.aa/.ab/.ac there.")
  return pairs


def _pair_image(root: str, folder: str, name: str, is_first: bool) -> SourceImage:
  # The T?????? image keeps its DISC21 id; its partner, whose name NDEC does
  # not fix, is named by folder so that ids stay unique across pairs.
  stem = os.path.splitext(name)[0]
  return SourceImage(stem if is_first else f"{folder}/{stem}",
                     os.path.join(PAIRS_DIR, folder, name),
                     os.path.getsize(os.path.join(root, folder, name)))


# ------------------------------------------------------------ ground truth --
@dataclasses.dataclass(frozen=True)
class GroundTruthRow:
  query_id: str
  reference_id: str  # '' for queries that are not copies.
  line: int
  extra: tuple[tuple[str, str], ...] = ()  # Other columns, when a header names them.


_ID_LIKE = re.compile(r"[A-Za-z0-9_./-]+")


def read_ground_truth(path: str) -> list[GroundTruthRow]:
  """Parses `query_id,reference_id` rows (empty reference: not a copy).

  Accepts a header line or none, a UTF-8 BOM, CRLF line ends, blank lines and
  extra columns named in a header. Malformed and duplicate rows are an error
  naming the file, their line numbers and the first few of them.
  """
  lines = errors.csv_rows(path, "a ground truth (query_id,reference_id rows)", GroundTruthError)
  header, rows, malformed, first_line = None, [], [], {}
  for number, fields in enumerate(lines, start=1):
    fields = [x.strip() for x in fields]
    if not any(fields):
      continue
    if header is None and not rows and not malformed and fields[0].lower() == "query_id":
      header = [x.lower() for x in fields]
      if "reference_id" not in header:
        raise GroundTruthError(
            f"{path}, line {number}: the header {','.join(fields)!r} has no "
            "reference_id column; expected query_id,reference_id.")
      continue
    names = header or ["query_id", "reference_id"]
    if len(fields) != len(names):
      malformed.append(f"line {number}: {','.join(fields)!r} "
                       f"({len(fields)} fields, expected {len(names)})")
      continue
    row = dict(zip(names, fields))
    q, r = row["query_id"], row["reference_id"]
    if not _ID_LIKE.fullmatch(q) or (r and not _ID_LIKE.fullmatch(r)):
      malformed.append(f"line {number}: {','.join(fields)!r} (not an image id)")
      continue
    if q in first_line:
      malformed.append(f"line {number}: duplicate row for {q} (first on line "
                       f"{first_line[q]})")
      continue
    first_line[q] = number
    extra = tuple((k, v) for k, v in row.items() if k not in ("query_id", "reference_id"))
    rows.append(GroundTruthRow(q, r, number, extra))
  if malformed:
    raise GroundTruthError(
        f"{path} has {len(malformed)} malformed or duplicate rows; each row "
        "must be query_id,reference_id (empty reference_id for non-copies), "
        "one per query. Fix them and prepare again: " + "; ".join(malformed[:_SHOW]))
  if not rows:
    raise GroundTruthError(f"{path} holds no ground-truth rows.")
  return rows


def check_ground_truth(path: str, rows: list[GroundTruthRow], query_ids,
                       reference_ids, query_dirs: list[str]):
  """Every row's query and reference must have an image, and every query
  image a row; raises naming the file, lines and first offenders."""
  query_ids, reference_ids = set(query_ids), set(reference_ids)
  no_query = [f"line {r.line}: {r.query_id}" for r in rows if r.query_id not in query_ids]
  no_ref = [f"line {r.line}: {r.query_id},{r.reference_id}" for r in rows
            if r.reference_id and r.reference_id not in reference_ids]
  listed = {r.query_id for r in rows}
  unlisted = sorted(query_ids - listed)
  problems = []
  if no_query:
    problems.append(f"{len(no_query)} rows name a query with no image in "
                    f"{', '.join(query_dirs)} ({'; '.join(no_query[:_SHOW])})")
  if no_ref:
    problems.append(f"{len(no_ref)} rows name a reference with no image among "
                    f"the references ({'; '.join(no_ref[:_SHOW])})")
  if unlisted:
    problems.append(f"{len(unlisted)} query images have no row "
                    f"({', '.join(unlisted[:_SHOW])}); list every query, with "
                    "an empty reference_id for non-copies")
  if problems:
    # A header with other column names reads as a first row of unknown ids.
    header_hint = (
        f" Its first row ({rows[0].query_id},{rows[0].reference_id}) names no image while "
        "the next does: if it is a header, name its columns query_id,reference_id."
        if len(rows) > 1 and rows[0].line == 1 and rows[0].query_id not in query_ids
        and rows[1].query_id in query_ids else "")
    raise GroundTruthError(
        f"The ground truth {path} does not match the images of the manual "
        "directory: " + "; ".join(problems) + "." + header_hint + " Complete the download "
        "(or fix the CSV) and prepare again.")


# ------------------------------------------------------------------ images --
@dataclasses.dataclass(frozen=True)
class Encoding:
  """How images are stored: the original bytes (max_side=0), or re-encoded
  as JPEG of `jpeg_quality` when their longer side exceeds `max_side`."""
  max_side: int = 0
  jpeg_quality: int = 90


def load_image(path: str, encoding: Encoding) -> bytes:
  """The bytes to store for one image file, after decoding it fully.

  JPEG and PNG files in RGB are stored as they are (or resized); any other
  format or mode is converted to RGB (JPEG stays JPEG, the rest becomes PNG),
  so that every stored image decodes to 3 channels. A file that cannot be
  decoded (unreadable, truncated, not an image) raises `BadImageError`.
  """
  if ImageFile.LOAD_TRUNCATED_IMAGES:
    raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set by another "
                       "module; truncated images would not be detected.")
  try:
    with open(path, "rb") as f:
      data = f.read()
    with Image.open(io.BytesIO(data)) as im:
      fmt = im.format
      side = encoding.max_side
      if side and max(im.size) > side:
        scale = side / max(im.size)
        size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        im.draft("RGB", size)  # JPEG: decode at a reduced scale when possible.
        out = pil_image.to_rgb(im).resize(size, Image.Resampling.BICUBIC)
        return encode(out, "JPEG", encoding.jpeg_quality)
      im.load()
      if fmt in ("JPEG", "PNG") and im.mode == "RGB":
        return data
      return encode(pil_image.to_rgb(im), "JPEG" if fmt == "JPEG" else "PNG",
                    encoding.jpeg_quality)
  except Image.UnidentifiedImageError:
    raise BadImageError(f"{path}: not an image PIL can identify (empty, cut off, or another "
                        "kind of file with an image's name)") from None
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise BadImageError(f"{path}: {type(e).__name__}: {e}") from None


def encode(im: Image.Image, fmt: str, quality: int = 90) -> bytes:
  """A PIL image as JPEG (of `quality`) or PNG bytes."""
  buf = io.BytesIO()
  if fmt == "JPEG":
    im.save(buf, format="JPEG", quality=quality)
  else:
    im.save(buf, format="PNG")
  return buf.getvalue()
