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


def to_rgb(image: Img) -> Img:
  """An RGB PIL image of any mode. 16- and 32-bit greyscale ("I;16", "I")
  are scaled to 8 bits first: PIL's convert("RGB") clips them at 255, which
  turned a 16-bit PNG into a white image. An "I" image whose values all fit
  in 8 bits is taken as 8-bit; floating point ("F") as 0-1 when it fits.
  Always a new, loaded image, as convert's, so the file may be closed after."""
  if image.mode == "RGB":
    return image.copy()
  if image.mode.startswith("I") or image.mode == "F":
    a = np.asarray(image, dtype=np.float64)
    top = a.max(initial=0.0)
    if image.mode.startswith("I;16") or top > 255:
      scale = 255.0 / 65535.0
    elif image.mode == "F" and top <= 1.0:
      scale = 255.0
    else:
      scale = 1.0
    grey = np.clip(np.round(a * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")
  return image.convert("RGB")


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
