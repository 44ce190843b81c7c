"""Finding, building and opening the `ndec` TFDS dataset (array_record, no TF).

`config.data.name` is a TFDS name such as `ndec/synthetic` or `ndec/full`.
The embedded `ndec/synthetic` set is built on first use; real data must be
prepared beforehand (README, "Preparing NDEC").
"""

import io
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

import tfds_ndec
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


def builder(cfg) -> tfds.core.DatasetBuilder:
  """The TFDS builder that `config.data` names."""
  name = cfg.name
  if name == "ndec/synthetic":
    config = tfds_ndec.synthetic_config(
        **{k: cfg.synthetic[k] for k in _SYNTHETIC_FIELDS})
    return tfds_ndec.Builder(config=config, data_dir=data_dir(cfg),
                             file_format="array_record",
                             num_workers=cfg.synthetic.num_workers)
  if name.startswith("ndec/"):
    config_name = name.split("/")[1]
    known = [c.name for c in tfds_ndec.Builder.BUILDER_CONFIGS]
    if config_name not in known:
      raise UserError(
          f"{name} is not prepared under {data_dir(cfg)}, and this version of "
          f"the tfds_ndec builder has only the configs {known}: the configs "
          "that read the real NDEC/DISC21 download (ndec/full, "
          "ndec/disc21_dev) are not implemented yet (README, 'Preparing "
          "NDEC'). Until then, train and evaluate on ndec/synthetic "
          "(configs/asl.py with no variant).")
  try:
    return tfds.builder(name, data_dir=data_dir(cfg))
  except Exception as e:  # TFDS raises several kinds for unknown names.
    raise UserError(
        f"config.data.name={name!r} is not a dataset TFDS knows ({e}). Use "
        "'ndec/synthetic' for the embedded set.") from None


def prepare(cfg, log=print) -> tfds.core.DatasetBuilder:
  """Returns a prepared builder, building `ndec/synthetic` if needed."""
  b = builder(cfg)
  if b.is_prepared():
    log(f"Using {b.info.full_name} from {b.data_dir}")
    return b
  if cfg.name != "ndec/synthetic":
    raise UserError(
        f"The dataset {cfg.name} is not prepared under {data_dir(cfg)} "
        f"(looked for {b.data_dir}). Prepare it once with TFDS "
        "(tfds.builder(name, data_dir=...).download_and_prepare("
        "file_format='array_record')) after downloading the files that "
        "tfds_ndec/README.md lists, or point --config.data.data_dir (or "
        "$TFDS_DATA_DIR) at where it was prepared.")
  log(f"Building {cfg.name} into {b.data_dir} (once; later runs reuse it)")
  b.download_and_prepare(file_format="array_record")
  log(f"Built {b.info.full_name}: " + ", ".join(
      f"{s}={b.info.splits[s].num_examples}" for s in b.info.splits))
  return b


def source(b: tfds.core.DatasetBuilder, split: str):
  """Random-access source of a split; images stay encoded (decoded in the
  input pipeline with `decode_image`, which names a corrupt file)."""
  skip = tfds.decode.SkipDecoding()
  return b.as_data_source(split=split, decoders={
      "image": skip, "partner": {"image": skip}})


def text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def decode_image(data: bytes, record: dict) -> np.ndarray:
  """JPEG/PNG bytes -> uint8 [H, W, 3]; a clear error names the bad file."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      return np.asarray(im.convert("RGB"))
  except Exception as e:
    raise CorruptImageError(
        f"Image {text(record.get('id', '?'))} (source file "
        f"{text(record.get('filename', '?'))}) could not be decoded: {e}. "
        "Replace the file in the manual directory and prepare the dataset "
        "again; the prepared data and checkpoints are left untouched.") from None


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
