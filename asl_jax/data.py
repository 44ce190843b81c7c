"""Finding, building and opening the `ndec` TFDS dataset (array_record, no TF).

`config.data.name` is a TFDS name such as `ndec/synthetic` or `ndec/full`.
The embedded `ndec/synthetic` set is built on first use; the real configs
(`ndec/full`, `ndec/disc21_dev`, their re-encoded variants) are prepared on
first use from the manual directory when there is one (docs/paper_recipe.md,
"Preparing NDEC"), else the error says how.
"""

import io
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

import tfds_ndec
from asl_jax import pil_image
from asl_jax.errors import CorruptImageError, UserError

SPLITS = ("train", "train_negative_pairs", "references", "queries")
_SYNTHETIC_FIELDS = ("seed", "image_size", "num_train",
                     "num_train_negative_pairs", "num_references",
                     "num_copy_queries", "num_hard_negative_queries",
                     "num_distractor_queries")


def data_dir(cfg) -> str:
  """`config.data.data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.path.expanduser(cfg.data_dir or os.environ.get("TFDS_DATA_DIR")
                            or "~/tensorflow_datasets")


_REAL_NAME = re.compile(r"ndec/(full|disc21_dev)(?:_(\d+)_q(\d+))?")
_FOLDER_NAME = re.compile(r"(?:folder/|ndec/folder_)([A-Za-z0-9_]+?)(?:_(\d+)_q(\d+))?")


def folder_set(name: str):
  """`folder/<name>` (or `ndec/folder_<name>`): a copy-detection set in the
  DISC21 layout (tfds_ndec/folder.py); its config, else None."""
  m = _FOLDER_NAME.fullmatch(name)
  if not m:
    return None
  return tfds_ndec.folder_config(m.group(1), int(m.group(2) or 0), int(m.group(3) or 90))


def builder(cfg, name: str | None = None) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `config.data` (or of the dataset `name`)."""
  name = name or cfg.name
  folder_config = folder_set(name)
  if folder_config is not None:
    return tfds_ndec.Builder(config=folder_config, data_dir=data_dir(cfg),
                             file_format="array_record", num_workers=cfg.prepare_workers,
                             skip_bad_images=cfg.skip_bad_images)
  if name == "ndec/synthetic":
    config = tfds_ndec.synthetic_config(
        **{k: cfg.synthetic[k] for k in _SYNTHETIC_FIELDS})
    return tfds_ndec.Builder(config=config, data_dir=data_dir(cfg),
                             file_format="array_record",
                             num_workers=cfg.synthetic.num_workers)
  if name.startswith("ndec/"):
    known = [c.name for c in tfds_ndec.Builder.BUILDER_CONFIGS]
    config = name.split("/")[1]
    if config not in known:
      custom = _REAL_NAME.fullmatch(name)
      if not (custom and custom.group(2)):
        raise UserError(
            f"config.data.name={name!r} is not a config of the ndec dataset. "
            f"Known: {', '.join('ndec/' + k for k in known)}, "
            "ndec/full_<max side>_q<JPEG quality> (e.g. ndec/full_384_q85), or "
            "folder/<name> for your own set in the DISC21 layout.")
      config = tfds_ndec.real_config(custom.group(1), int(custom.group(2)),
                                     int(custom.group(3)))
    return tfds_ndec.Builder(config=config, data_dir=data_dir(cfg),
                             file_format="array_record",
                             num_workers=cfg.prepare_workers,
                             skip_bad_images=cfg.skip_bad_images)
  try:
    return tfds.builder(name, data_dir=data_dir(cfg))
  except Exception:  # TFDS raises several kinds for unknown names (with its catalogue).
    raise UserError(_unknown_name(name)) from None


def _unknown_name(name: str) -> str:
  """The valid names, and the likely one, instead of TFDS's whole catalogue."""
  import difflib
  known = ["ndec/" + c.name for c in tfds_ndec.Builder.BUILDER_CONFIGS]
  head, _, tail = name.partition("/")
  guess = difflib.get_close_matches(name, known, n=1)
  if tail and difflib.get_close_matches(head, ["folder"], n=1, cutoff=0.6):
    guess = [f"folder/{tail}"]
  hint = f" Did you mean {guess[0]}?" if guess else ""
  return (f"config.data.name={name!r} is not a dataset asl_jax knows.{hint} Give "
          f"{', '.join(known)}, ndec/full_<max side>_q<JPEG quality> (e.g. "
          "ndec/full_384_q85), folder/<name> for your own set in the DISC21 layout (with "
          "--config.data.manual_dir=<its folder>), or the name of another TFDS dataset.")


def manual_dir(cfg) -> str:
  """`config.data.manual_dir`, else TFDS's default <data_dir>/downloads/manual."""
  return os.path.expanduser(cfg.manual_dir or os.path.join(data_dir(cfg), "downloads",
                                                           "manual"))


def prepare(cfg, log=print, name: str | None = None) -> tfds.core.DatasetBuilder:
  """Returns a prepared builder: `ndec/synthetic` is built when missing, the
  real configs are prepared from the manual directory when it exists."""
  name = name or cfg.name
  b = builder(cfg, name)
  is_folder = folder_set(name) is not None
  if is_folder and cfg.manual_dir and not os.path.isdir(manual_dir(cfg)):
    raise UserError(
        f"The folder of the set {name}, --config.data.manual_dir={cfg.manual_dir!r}, is not a "
        "directory. Give the folder that holds references/, queries/ and ground_truth.csv "
        "(optionally train/ and queries.csv; README, 'Your own images').")
  if b.is_prepared():
    if is_folder:
      try:
        tfds_ndec.check_folder_origin(b, cfg.manual_dir)
      except tfds_ndec.NdecInputError as e:
        raise UserError(str(e)) from None
    log(f"Using {b.info.full_name} from {b.data_dir}")
    return b
  if is_folder and not cfg.manual_dir:
    raise UserError(
        f"The set {name} is not prepared under {data_dir(cfg)} (looked for {b.data_dir}). "
        "Give its folder with --config.data.manual_dir=<folder> (references/, queries/, "
        "ground_truth.csv, optionally train/ and queries.csv; README, 'Your own images').")
  if name == "ndec/synthetic":
    log(f"Building {name} into {b.data_dir} (once; later runs reuse it)")
    b.download_and_prepare(file_format="array_record")
  elif (name.startswith("ndec/") and os.path.isdir(manual_dir(cfg))) or is_folder:
    log(f"Preparing {name} from {manual_dir(cfg)} into {b.data_dir} (once; an "
        "interrupted prepare resumes)")
    try:
      b.download_and_prepare(download_config=tfds.download.DownloadConfig(
          manual_dir=manual_dir(cfg)))
    except tfds_ndec.NdecInputError as e:
      raise UserError(f"Cannot prepare {name}: {e}") from None
  else:
    real = _REAL_NAME.fullmatch(name)
    source = real.group(1) if real else "full"
    raise UserError(
        f"The dataset {name} is not prepared under {data_dir(cfg)} (looked "
        f"for {b.data_dir}), and there is no manual directory at "
        f"{manual_dir(cfg)} to prepare it from. Download NDEC and DISC21 as "
        "tfds_ndec/README.md describes (README, 'NDEC and the paper recipe'), then set "
        "--config.data.manual_dir to the download, or prepare once with "
        f"`python -m tfds_ndec.prepare {source} --manual_dir <download> "
        f"--data_dir {data_dir(cfg)}`; or point --config.data.data_dir (or "
        "$TFDS_DATA_DIR) at where it was prepared.")
  log(f"Built {b.info.full_name}: " + ", ".join(
      f"{s}={b.info.splits[s].num_examples}" for s in b.info.splits))
  return b


def source(b: tfds.core.DatasetBuilder, split: str):
  """Random-access source of a split; images stay encoded (decoded in the
  input pipeline with `decode_image`, which names a corrupt file)."""
  skip = tfds.decode.SkipDecoding()
  return b.as_data_source(split=split, decoders={
      "image": skip, "partner": {"image": skip}})


def train_source(b: tfds.core.DatasetBuilder, cfg):
  """The training identities of `config.data`: every `train_every`-th image
  of the `train` split."""
  src = source(b, "train")
  n = cfg.train_every
  return src if n == 1 else EveryNth(src, n)


class EveryNth:
  """Every n-th record of a random-access source (BoT/D²LV train on every
  10th DISC21 training image: 100,000 identities out of 1,000,000)."""

  def __init__(self, source, n: int):
    if n < 1:
      raise UserError(f"data.train_every={n}: must be 1 (all images) or more.")
    self.source, self.n = source, n

  def __len__(self):
    return -(-len(self.source) // self.n)

  def __getitem__(self, index):
    if not 0 <= index < len(self):
      raise IndexError(index)
    return self.source[index * self.n]


def text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def decode_pil(data: bytes, record: dict, min_size: int = 0) -> Image.Image:
  """JPEG/PNG bytes -> an RGB PIL image; a clear error names the bad file.

  min_size > 0 lets the JPEG decoder scale down by 1/2, 1/4 or 1/8 while both
  sides stay at least min_size (much cheaper than decoding in full and then
  resizing; for images only ever used smaller, such as paste backgrounds).
  """
  try:
    with Image.open(io.BytesIO(data)) as im:
      if min_size:
        im.draft("RGB", (min_size, min_size))
      return pil_image.to_rgb(im)
  except Exception as e:
    raise CorruptImageError(
        f"Image {text(record.get('id', '?'))} (source file "
        f"{text(record.get('filename', '?'))}) could not be decoded: {e}. "
        "Replace the file in the manual directory and prepare the dataset "
        "again; the prepared data and checkpoints are left untouched.") from None


def decode_image(data: bytes, record: dict) -> np.ndarray:
  """JPEG/PNG bytes -> uint8 [H, W, 3]; a clear error names the bad file."""
  return np.asarray(decode_pil(data, record))


def query_metadata(b: tfds.core.DatasetBuilder) -> dict[str, dict]:
  """Per-query kind information: kind, hard_negative_kind, resembles_id,
  reference_id, edits."""
  out = {}
  for r in _records(source(b, "queries")):
    out[text(r["id"])] = {
        "kind": text(r["kind"]), "hard_negative_kind": text(r["hard_negative_kind"]),
        "resembles_id": text(r["resembles_id"]),
        "reference_id": text(r["reference_id"]),
        "edits": [text(e) for e in r["edits"]]}
  return out


def _records(src):
  for i in range(len(src)):
    yield src[i]


def worker_processes(n: int) -> int:
  """Grain worker processes of a `num_workers` setting (data.num_workers): 0 = none (the reader's
  threads, in this process), n > 0 = n, -1 = one per CPU core this process
  may use. The copy-edit chain is Python and PIL, so threads share one core
  (the GIL) and only processes scale it (benchmarks/input_throughput.py)."""
  if n == -1:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return n
