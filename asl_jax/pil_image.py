"""The image types and conversions that the copy edits share: RGB PIL images
and uint8 HxWx3 arrays, a bilinear resize, a random colour."""

import numpy as np
from PIL import Image

Array = np.ndarray
Img = Image.Image


def to_pil(image: Array | Img) -> Img:
  """An RGB PIL image (no copy when it already is one)."""
  if isinstance(image, Image.Image):
    return image if image.mode == "RGB" else image.convert("RGB")
  return Image.fromarray(image)


def to_array(image: Img) -> Array:
  """A uint8 HxWx3 array of an image (converted to RGB where it is not)."""
  return np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.uint8)


def random_color(rng: np.random.Generator) -> tuple[int, int, int]:
  """An RGB colour drawn uniformly."""
  return tuple(int(c) for c in rng.integers(0, 256, size=3))


def resize_pil(image: Img, size: tuple[int, int]) -> Img:
  """Resizes to (height, width) with bilinear filtering (no copy when it has that size)."""
  h, w = size
  return image if image.size == (w, h) else image.resize((w, h), Image.BILINEAR)
