"""Pre-generated training views: their storage format and their reader.

`python -m asl_jax.pregenerate` writes them (ArrayRecord shards of one record
per identity, `views.json` beside them); `data.views_dir` makes the input
pipeline read them through `open_views` and `PregeneratedViews`. Both sides
import this module, so imports run one way (pregenerate -> input_pipeline ->
views).
"""

import io
import json
import os

import grain
import numpy as np
from PIL import Image

from asl_jax.errors import CorruptImageError, UserError

FORMAT = "asl_jax views 1"
META = "views.json"
_MAGIC = b"ASLV1\0"


# ------------------------------------------------------------------ records --
def pack(label: int, amounts: np.ndarray, jpegs: list[bytes]) -> bytes:
  """One identity's record: label, V information amounts, V JPEGs."""
  head = np.array([label, len(jpegs)], np.int64).tobytes()
  lengths = np.array([len(j) for j in jpegs], np.int64).tobytes()
  return b"".join([_MAGIC, head, np.asarray(amounts, np.float32).tobytes(), lengths, *jpegs])


def unpack(blob: bytes) -> tuple[int, np.ndarray, list[bytes]]:
  if not blob.startswith(_MAGIC):
    raise ValueError("Not a record of asl_jax.pregenerate (bad magic bytes).")
  o = len(_MAGIC)
  label, v = (int(x) for x in np.frombuffer(blob, np.int64, 2, o))
  o += 16
  amounts = np.frombuffer(blob, np.float32, v, o).copy()
  o += 4 * v
  lengths = np.frombuffer(blob, np.int64, v, o)
  o += 8 * v
  jpegs = []
  for n in lengths:
    jpegs.append(bytes(blob[o:o + n]))
    o += int(n)
  return label, amounts, jpegs


def shard_name(index: int, count: int) -> str:
  return f"views.array_record-{index:05d}-of-{count:05d}"


def settings(cfg, num_identities: int, views: int, seed: int, quality: int,
             shards: int) -> dict:
  """What the views depend on; stored in views.json and compared on reuse."""
  params = cfg.edit_params
  return {
      "format": FORMAT, "dataset": cfg.name, "train_every": cfg.train_every,
      "identities": num_identities, "views": views, "image_size": cfg.image_size,
      "seed": seed, "jpeg_quality": quality, "shards": shards,
      "crop_area": list(cfg.crop_area),
      "train_edits": {k: float(v) for k, v in sorted(cfg.train_edits.items())},
      "edit_params": json.loads(json.dumps({k: dict(v) for k, v in params.items()})),
      "paste_backgrounds": cfg.paste_backgrounds,
      # Stored only where set, so that views made before these existed still fit.
      **({"edit_information": {k: float(v) for k, v in sorted(cfg.edit_information.items())}}
         if cfg.edit_information else {}),
      **({"source_crop_area": list(cfg.source_crop_area)}
         if tuple(cfg.source_crop_area) != (1.0, 1.0) else {})}


# ------------------------------------------------------------------ reading --
def open_views(views_dir: str, cfg, num_identities: int):
  """The random-access source of a finished views directory, checked
  against the training config; (source, settings)."""
  path = os.path.join(views_dir, META)
  if not os.path.exists(path):
    raise UserError(f"data.views_dir={views_dir!r} has no {META}: make the views first with "
                    "python -m asl_jax.pregenerate --config <the same config> --out "
                    f"{views_dir}.")
  with open(path) as f:
    meta = json.load(f)
  now = settings(cfg, num_identities, meta.get("views"), meta.get("seed"),
                 meta.get("jpeg_quality"), meta.get("shards"))
  # The edits too: a changed chain must not be trained on silently with old views.
  keys = ("format", "dataset", "identities", "image_size", "train_every", "crop_area",
          "train_edits", "edit_params", "paste_backgrounds", "edit_information",
          "source_crop_area")
  diff = [f"{k}: {meta.get(k)!r} there, {now.get(k)!r} in the config" for k in keys
          if meta.get(k) != now.get(k)]
  if diff:
    raise UserError(f"The views in {views_dir} do not fit this config ({'; '.join(diff)}). "
                    "Make views for it with python -m asl_jax.pregenerate and the same config.")
  if meta["views"] < cfg.views_per_id:
    raise UserError(f"The views in {views_dir} hold {meta['views']} views per identity, fewer "
                    f"than data.views_per_id={cfg.views_per_id}.")
  files = [os.path.join(views_dir, shard_name(s, meta["shards"])) for s in range(meta["shards"])]
  missing = [os.path.basename(f) for f in files if not os.path.exists(f)]
  if missing:
    raise UserError(f"{views_dir} lacks {len(missing)} of its {meta['shards']} shards (first: "
                    f"{missing[0]}): its generation did not finish. Rerun the same "
                    "python -m asl_jax.pregenerate command to complete it.")
  source = grain.sources.ArrayRecordDataSource(files)
  if len(source) != num_identities:
    raise UserError(f"{views_dir} holds {len(source)} records for {num_identities} identities; "
                    "make the views again.")
  return source, meta


class PregeneratedViews(grain.transforms.RandomMap):
  """One identity's record -> K of its V views, each flipped (p 0.5),
  padded by 10/256 of the side and randomly cropped (BoT's online
  transform); labels are the record's."""

  def __init__(self, num_views: int, image_size: int):
    self.k, self.size = num_views, image_size
    self.pad = max(1, round(image_size * 10 / 256))

  def view(self, jpeg: bytes, rng: np.random.Generator) -> np.ndarray:
    s, p = self.size, self.pad
    try:
      image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    except Exception as e:
      raise CorruptImageError(
          f"A pre-generated view could not be decoded ({e}): the views directory is damaged. "
          "Make the views again with python -m asl_jax.pregenerate into a new --out.") from None
    if image.size != (s, s):
      image = image.resize((s, s), Image.BILINEAR)
    a = np.asarray(image)
    if rng.random() < 0.5:
      a = a[:, ::-1]
    padded = np.zeros((s + 2 * p, s + 2 * p, 3), np.uint8)
    padded[p:p + s, p:p + s] = a
    y, x = rng.integers(0, 2 * p + 1, 2)
    return padded[y:y + s, x:x + s]

  def random_map(self, blob, rng):
    label, amounts, jpegs = unpack(blob)
    pick = rng.choice(len(jpegs), self.k, replace=False)
    return {"views": np.stack([self.view(jpegs[j], rng) for j in pick]),
            "information_amount": amounts[pick], "label": np.int32(label)}
