"""Copy-edit operations on images, with the information amount each one keeps.

These are the edits of ISC2021/DISC21 and of the BoT/D²LV training chains
(`../shared/docs/method.md` §3.3): crops, resizes and aspect changes, flips,
rotation, colour jitter, grayscale, blur, JPEG re-encoding, pixelisation,
padding, text and sticker overlays, and pasting the image onto another one.

Every op takes and returns a uint8 HxWx3 numpy array and draws its randomness
from an explicit `np.random.Generator`, so a seed reproduces an edit. Ops that
remove content return the fraction of the input's content that survives; ASL's
*information amount* of a view is the product of these fractions over its
chain. As recommended in method.md §7.3, only cropping lowers it: padding,
overlays and pasting onto a background never raise it (the background is not
content of the source image) and do not lower it either.
"""

import dataclasses
import io
import string
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

Array = np.ndarray
_GLYPHS = string.ascii_letters + string.digits + "#@&%?!"


@dataclasses.dataclass
class EditedImage:
  """An image with the edits applied so far and the content that survived."""
  image: Array
  information_amount: float = 1.0
  edits: list[str] = dataclasses.field(default_factory=list)


def _pil(image: Array) -> Image.Image:
  return Image.fromarray(image)


def _np(image: Image.Image) -> Array:
  return np.asarray(image.convert("RGB"), dtype=np.uint8)


def random_color(rng: np.random.Generator) -> tuple[int, int, int]:
  return tuple(int(c) for c in rng.integers(0, 256, size=3))


# ----------------------------------------------------------------- geometry --
_LOG_RATIO = (float(np.log(3 / 4)), float(np.log(4 / 3)))


def crop(image: Array, rng: np.random.Generator, area=(0.2, 1.0),
         log_ratio=_LOG_RATIO) -> tuple[Array, float]:
  """A random crop covering `area` of the image, as RandomResizedCrop draws it.

  Returns the crop (not resized) and its exact pixel-area fraction.
  """
  h, w = image.shape[:2]
  for _ in range(10):
    target = rng.uniform(*area) * h * w
    ratio = np.exp(rng.uniform(*log_ratio))
    cw = int(round(np.sqrt(target * ratio)))
    ch = int(round(np.sqrt(target / ratio)))
    if 0 < cw <= w and 0 < ch <= h:
      break
  else:  # Fall back to the largest centred crop of the target area.
    side = max(1, int(round(np.sqrt(area[0] * h * w))))
    ch, cw = min(side, h), min(side, w)
  y = int(rng.integers(0, h - ch + 1))
  x = int(rng.integers(0, w - cw + 1))
  return image[y:y + ch, x:x + cw], (ch * cw) / (h * w)


def resize(image: Array, size: tuple[int, int]) -> Array:
  """Resizes to (height, width) with bilinear filtering (aspect not kept)."""
  h, w = size
  if image.shape[:2] == (h, w):
    return image
  return _np(_pil(image).resize((w, h), Image.BILINEAR))


def random_resize(image: Array, rng: np.random.Generator, scale=(0.5, 1.5),
                  aspect=(0.67, 1.5)) -> Array:
  """Rescales the image and changes its aspect ratio."""
  h, w = image.shape[:2]
  s, a = rng.uniform(*scale), rng.uniform(*aspect)
  nh = max(8, int(round(h * s / np.sqrt(a))))
  nw = max(8, int(round(w * s * np.sqrt(a))))
  return resize(image, (nh, nw))


def hflip(image: Array) -> Array:
  return image[:, ::-1].copy()


def rotate(image: Array, rng: np.random.Generator, max_degrees=50.0) -> Array:
  """Rotates by a random angle; the canvas grows so no content is cut."""
  angle = float(rng.uniform(-max_degrees, max_degrees))
  if rng.random() < 0.25:  # Quarter turns are common edits too.
    angle = float(rng.choice([90.0, 180.0, 270.0]))
  out = _pil(image).rotate(angle, resample=Image.BILINEAR, expand=True,
                           fillcolor=random_color(rng))
  return _np(out)


def pad(image: Array, rng: np.random.Generator, max_fraction=0.2) -> Array:
  """Adds a border of random colour and width on each side."""
  h, w = image.shape[:2]
  t, b = (rng.uniform(0, max_fraction, 2) * h).astype(int)
  l, r = (rng.uniform(0, max_fraction, 2) * w).astype(int)
  out = np.empty((h + t + b, w + l + r, 3), np.uint8)
  out[...] = np.array(random_color(rng), np.uint8)
  out[t:t + h, l:l + w] = image
  return out


# -------------------------------------------------------------- photometric --
def color_jitter(image: Array, rng: np.random.Generator,
                 strength=(0.5, 0.5, 0.5, 0.1)) -> Array:
  """Brightness, contrast, saturation and hue changes in random order."""
  b, c, s, hue = strength
  out = _pil(image)
  for op in rng.permutation(4):
    if op == 0:
      out = ImageEnhance.Brightness(out).enhance(rng.uniform(1 - b, 1 + b))
    elif op == 1:
      out = ImageEnhance.Contrast(out).enhance(rng.uniform(1 - c, 1 + c))
    elif op == 2:
      out = ImageEnhance.Color(out).enhance(rng.uniform(1 - s, 1 + s))
    else:
      hsv = np.asarray(out.convert("HSV")).copy()
      shift = int(rng.uniform(-hue, hue) * 255)
      hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift) % 256
      out = Image.fromarray(hsv, "HSV").convert("RGB")
  return _np(out)


def grayscale(image: Array) -> Array:
  return _np(_pil(image).convert("L"))


def blur(image: Array, rng: np.random.Generator, sigma=(0.1, 2.0)) -> Array:
  """Gaussian blur; sigma is relative to a 256-pixel image, as in the chains."""
  scale = max(image.shape[:2]) / 256.0
  radius = rng.uniform(*sigma) * scale
  return _np(_pil(image).filter(ImageFilter.GaussianBlur(radius)))


def jpeg(image: Array, rng: np.random.Generator, quality=(10, 50)) -> Array:
  """Re-encodes as JPEG at a random quality."""
  buf = io.BytesIO()
  _pil(image).save(buf, format="JPEG", quality=int(rng.integers(*quality)))
  return _np(Image.open(io.BytesIO(buf.getvalue())))


def pixelize(image: Array, rng: np.random.Generator, ratio=(0.1, 1.0)) -> Array:
  """Downsamples then upsamples with nearest neighbour (AugLy pixelization)."""
  h, w = image.shape[:2]
  r = rng.uniform(*ratio)
  small = _pil(image).resize((max(1, int(w * r)), max(1, int(h * r))),
                             Image.BILINEAR)
  return _np(small.resize((w, h), Image.NEAREST))


# ----------------------------------------------------------------- overlays --
def _font(px: int) -> ImageFont.FreeTypeFont:
  return ImageFont.load_default(size=max(4, int(px)))


def text_overlay(image: Array, rng: np.random.Generator,
                 max_chars=20) -> Array:
  """Draws a random string in a random colour, size and opacity."""
  h, w = image.shape[:2]
  n = int(rng.integers(1, max_chars + 1))
  text = "".join(rng.choice(list(_GLYPHS), size=n))
  size = rng.uniform(0.08, 0.3) * min(h, w)
  layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
  alpha = int(255 * rng.uniform(0.5, 1.0))
  x, y = rng.uniform(0, 0.6) * w, rng.uniform(0, 0.8) * h
  ImageDraw.Draw(layer).text((x, y), text, font=_font(size),
                             fill=random_color(rng) + (alpha,))
  return _np(Image.alpha_composite(_pil(image).convert("RGBA"), layer))


def sticker(rng: np.random.Generator, size: int) -> Image.Image:
  """An emoji-like RGBA sticker: a face, a heart or a star in bright colours."""
  s = max(8, size)
  im = Image.new("RGBA", (s, s), (0, 0, 0, 0))
  d = ImageDraw.Draw(im)
  kind = int(rng.integers(3))
  fill = tuple(int(c) for c in rng.integers(120, 256, 3)) + (255,)
  if kind == 0:  # Smiley.
    d.ellipse([0, 0, s - 1, s - 1], fill=fill, outline=(0, 0, 0, 255))
    e = s // 8
    d.ellipse([s // 3 - e, s // 3 - e, s // 3 + e, s // 3 + e], fill="black")
    d.ellipse([2 * s // 3 - e, s // 3 - e, 2 * s // 3 + e, s // 3 + e],
              fill="black")
    d.arc([s // 4, s // 3, 3 * s // 4, 3 * s // 4], 20, 160, fill="black",
          width=max(1, s // 16))
  elif kind == 1:  # Heart.
    r = s // 4
    d.ellipse([0, 0, 2 * r, 2 * r], fill=fill)
    d.ellipse([2 * r - 1, 0, 4 * r - 1, 2 * r], fill=fill)
    d.polygon([(0, r + 1), (s - 1, r + 1), (s // 2, s - 1)], fill=fill)
  else:  # Star.
    t = np.linspace(0, 2 * np.pi, 11)[:-1] - np.pi / 2
    rad = np.where(np.arange(10) % 2 == 0, s / 2, s / 5)
    pts = [(s / 2 + r * np.cos(a), s / 2 + r * np.sin(a)) for r, a in zip(rad, t, strict=False)]
    d.polygon(pts, fill=fill, outline=(0, 0, 0, 255))
  return im


def sticker_overlay(image: Array, rng: np.random.Generator) -> Array:
  """Pastes an emoji-like sticker at a random place, size and opacity."""
  h, w = image.shape[:2]
  st = sticker(rng, int(rng.uniform(0.15, 0.5) * min(h, w)))
  alpha = np.asarray(st)[..., 3].astype(np.float32) * rng.uniform(0.6, 1.0)
  st.putalpha(Image.fromarray(alpha.astype(np.uint8)))
  out = _pil(image).convert("RGBA")
  x = int(rng.uniform(0, max(1, w - st.width)))
  y = int(rng.uniform(0, max(1, h - st.height)))
  out.alpha_composite(st, (x, y))
  return _np(out)


def paste_onto(image: Array, background: Array, rng: np.random.Generator,
               scale=(0.3, 0.8)) -> Array:
  """Pastes the image, shrunk to a fraction of the background, onto it."""
  bh, bw = background.shape[:2]
  h, w = image.shape[:2]
  s = rng.uniform(*scale) * min(bh / h, bw / w)
  small = resize(image, (max(4, int(h * s)), max(4, int(w * s))))
  out = background.copy()
  y = int(rng.integers(0, bh - small.shape[0] + 1))
  x = int(rng.integers(0, bw - small.shape[1] + 1))
  out[y:y + small.shape[0], x:x + small.shape[1]] = small
  return out


# -------------------------------------------------------------------- chains --
def random_background(rng: np.random.Generator, size=(128, 128)) -> Array:
  """A cheap unrelated image: a two-colour gradient with stripes."""
  h, w = size
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  t = (xx * np.cos(a := rng.uniform(0, np.pi)) + yy * np.sin(a)) / max(h, w)
  c0, c1 = np.array(random_color(rng)), np.array(random_color(rng))
  img = c0 + (c1 - c0) * (t[..., None] % 1.0)
  img += 30 * np.sin(rng.uniform(0.1, 0.5) * (xx + rng.uniform(0, 9) * yy))[..., None]
  return np.clip(img, 0, 255).astype(np.uint8)


# (name, probability, op(image, rng, background_fn) -> image). Crop comes
# first and alone changes the information amount, in `copy_edit_chain`.
_CHAIN: list[tuple[str, Callable]] = [
    ("resize", lambda im, r, bg: random_resize(im, r)),
    ("rotate", lambda im, r, bg: rotate(im, r)),
    ("pixelize", lambda im, r, bg: pixelize(im, r, (0.3, 1.0))),
    ("pad", lambda im, r, bg: pad(im, r)),
    ("color_jitter", lambda im, r, bg: color_jitter(im, r)),
    ("grayscale", lambda im, r, bg: grayscale(im)),
    ("blur", lambda im, r, bg: blur(im, r)),
    ("hflip", lambda im, r, bg: hflip(im)),
    ("text", lambda im, r, bg: text_overlay(im, r)),
    ("sticker", lambda im, r, bg: sticker_overlay(im, r)),
    ("paste_onto", lambda im, r, bg: paste_onto(im, bg(r), r)),
    ("jpeg", lambda im, r, bg: jpeg(im, r)),
]
EDIT_NAMES = ("crop",) + tuple(name for name, _ in _CHAIN)


def copy_edit_chain(
    image: Array, rng: np.random.Generator, probabilities: dict[str, float],
    crop_area=(0.2, 1.0), background_fn: Callable | None = None,
    min_edits: int = 0) -> EditedImage:
  """Applies each edit with its probability, in the canonical order.

  Args:
    image: the source image.
    rng: randomness.
    probabilities: edit name (see `EDIT_NAMES`) -> probability; missing = 0.
    crop_area: the range of crop area fractions.
    background_fn: rng -> image, used by `paste_onto` (random gradients if
      None).
    min_edits: if fewer edits fired, force random extra ones (so that a copy
      query is never a bit-identical duplicate).
  Returns:
    The edited image, its information amount and the list of edits applied.
  """
  unknown = set(probabilities) - set(EDIT_NAMES)
  if unknown:
    raise ValueError(f"Unknown copy edits {sorted(unknown)}; known: {EDIT_NAMES}")
  background_fn = background_fn or random_background
  fire = {n: rng.random() < probabilities.get(n, 0.0) for n in EDIT_NAMES}
  missing = min_edits - sum(fire.values())
  if missing > 0:
    off = [n for n in EDIT_NAMES if not fire[n]]
    for n in rng.choice(off, size=min(missing, len(off)), replace=False):
      fire[str(n)] = True
  out = EditedImage(image)
  if fire["crop"]:
    out.image, out.information_amount = crop(image, rng, crop_area)
    out.edits.append("crop")
  for name, op in _CHAIN:
    if fire[name]:
      out.image = op(out.image, rng, background_fn)
      out.edits.append(name)
  return out
