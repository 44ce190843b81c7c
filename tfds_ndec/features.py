"""The one feature spec of the `ndec` dataset, shared by every config.

TFDS keeps a single feature spec per dataset, so every split has every field;
a split fills only the fields it uses and `complete` gives the rest neutral
values ('' / 1.0 / [] and, for `partner`, a 1x1 black JPEG).
"""

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image


def encode_jpeg(image: np.ndarray, quality: int = 92) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def _image():
  # Bytes are stored as given (JPEG, or PNG for lossless sources); both decode
  # to 3 channels with TFDS's decoders and with PIL.
  return tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")


def features() -> tfds.features.FeaturesDict:
  text = tfds.features.Text
  return tfds.features.FeaturesDict({
      "id": text(doc="Image id: T000000, R000000, Q00000 (or P00000_a in "
                 "ndec/synthetic pairs)."),
      "image": _image(),
      "filename": text(doc="Source file the image was read from, relative to "
                       "the manual directory (synthetic: a made-up name)."),
      "reference_id": text(doc="queries: the reference this is a copy of."),
      "kind": text(doc="queries: copy | hard_negative | distractor "
                   "(synthetic), copy | negative (real data, unless the "
                   "ground truth has a `kind` column)."),
      "hard_negative_kind": text(
          doc="reverse_crop | similar | viewpoint | time (queries, pairs)."),
      "resembles_id": text(doc="hard-negative queries: the reference they "
                           "resemble without being a copy of it."),
      "edits": tfds.features.Sequence(text(), doc="copies: edits applied."),
      "information_amount": tfds.features.Scalar(
          np.float32, doc="copies: fraction of the reference content kept."),
      "pair_id": text(doc="train_negative_pairs: the pair's id (the folder "
                      "name in the NDEC download)."),
      "partner": tfds.features.FeaturesDict({
          "id": text(), "image": _image(), "filename": text()},
          doc="train_negative_pairs: the second image of the pair."),
  })


_PLACEHOLDER = []


def complete(example: dict) -> dict:
  """Fills the fields a split does not use."""
  if not _PLACEHOLDER:
    _PLACEHOLDER.append(encode_jpeg(np.zeros((1, 1, 3), np.uint8)))
  defaults = {"reference_id": "", "kind": "", "hard_negative_kind": "",
              "resembles_id": "", "edits": [],
              "information_amount": np.float32(1.0), "pair_id": "",
              "partner": {"id": "", "image": _PLACEHOLDER[0], "filename": ""}}
  return {**defaults, **example}
