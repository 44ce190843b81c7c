"""Copy-edit operations on images, with the information amount each one keeps.

These are the edits of ISC2021/DISC21 and of the BoT/D²LV training chains
(the BoT `isc_100k_256` augmentation chain): crops, resizes and aspect changes, flips,
rotation, colour jitter, grayscale, blur, JPEG re-encoding, pixelisation,
padding, text and sticker overlays, pasting the image onto another one, and
AugLy's meme caption band and screenshot page.

`copy_edit_chain` takes and returns a uint8 HxWx3 numpy array (or an RGB PIL
image, which it keeps as one); the ops inside it work on PIL images, so a chain
converts once each way. Every op draws its randomness from an explicit
`np.random.Generator`, so a seed reproduces an edit. Ops that
remove content return the fraction of the input's content that survives; ASL's
*information amount* of a view is the product of these fractions over its
chain. As recommended in method.md §7.3, only cropping lowers it: padding,
overlays and pasting onto a background never raise it (the background is not
content of the source image) and do not lower it either. The overlays and
pastes live in overlay_edits.py.
"""

import dataclasses
import functools
import inspect
import io
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from asl_jax.overlay_edits import (meme, paste_onto, screenshot, sticker_overlay, text_overlay,
                                   underlay)
from asl_jax.pil_image import Array, Img, random_color, to_array, to_pil
from asl_jax.pil_image import resize_pil as _resize


@dataclasses.dataclass
class EditedImage:
  """An image with the edits applied so far and the content that survived."""
  image: Array | Img
  information_amount: float = 1.0
  edits: list[str] = dataclasses.field(default_factory=list)


# ----------------------------------------------------------------- geometry --
_LOG_RATIO = (float(np.log(3 / 4)), float(np.log(4 / 3)))


def crop_box(height: int, width: int, rng: np.random.Generator, area=(0.2, 1.0),
             log_ratio=_LOG_RATIO) -> tuple[tuple[int, int, int, int], float]:
  """A random crop covering `area` of the image, as RandomResizedCrop draws it.

  Returns the box (left, top, right, bottom) and its exact pixel-area fraction.
  """
  h, w = height, width
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
  return (x, y, x + cw, y + ch), (ch * cw) / (h * w)


def crop(image: Array, rng: np.random.Generator, area=(0.2, 1.0),
         log_ratio=_LOG_RATIO) -> tuple[Array, float]:
  """`crop_box` applied to an array: the crop (not resized) and its area fraction."""
  (x0, y0, x1, y1), fraction = crop_box(*image.shape[:2], rng, area, log_ratio)
  return image[y0:y1, x0:x1], fraction


def resize(image: Array, size: tuple[int, int]) -> Array:
  """Resizes to (height, width) with bilinear filtering (aspect not kept)."""
  if image.shape[:2] == tuple(size):
    return image
  return to_array(_resize(Image.fromarray(image), size))


def random_resize(image: Img, rng: np.random.Generator, scale=(0.5, 1.5),
                  aspect=(0.67, 1.5)) -> Img:
  """Rescales the image and changes its aspect ratio."""
  w, h = image.size
  s, a = rng.uniform(*scale), rng.uniform(*aspect)
  nh = max(8, int(round(h * s / np.sqrt(a))))
  nw = max(8, int(round(w * s * np.sqrt(a))))
  return _resize(image, (nh, nw))


def hflip(image: Img) -> Img:
  return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def inscribed_box(width: float, height: float, degrees: float) -> tuple[float, float]:
  """(width, height) of the largest axis-aligned rectangle inside a
  width x height rectangle rotated by `degrees`."""
  a = np.deg2rad(degrees)
  sin, cos = abs(float(np.sin(a))), abs(float(np.cos(a)))
  long, short = max(width, height), min(width, height)
  if short <= 2 * sin * cos * long or abs(sin - cos) < 1e-10:
    # Half-constrained: two corners of the box touch the longer side.
    x = 0.5 * short
    return (x / sin, x / cos) if width >= height else (x / cos, x / sin)
  cos2 = cos * cos - sin * sin
  return (width * cos - height * sin) / cos2, (height * cos - width * sin) / cos2


def rotate(image: Img, rng: np.random.Generator, max_degrees=50.0, quarter_turns=0.25,
           expand=True, crop_inside=0.0) -> Img:
  """Rotates by a random angle in +-max_degrees, or with probability
  `quarter_turns` by 90, 180 or 270 degrees; with `expand` the canvas grows so
  that no content is cut (torchvision's RandomRotation keeps the size), the
  corners filled with a random colour. With probability `crop_inside` the
  result is instead cut to the largest upright rectangle inside the rotated
  image, with no filled corners, as AugLy's rotate does."""
  angle = float(rng.uniform(-max_degrees, max_degrees))
  if rng.random() < quarter_turns:  # Quarter turns are common edits too.
    angle = float(rng.choice([90.0, 180.0, 270.0]))
  if crop_inside and rng.random() < crop_inside:
    out = image.rotate(angle, resample=Image.BILINEAR, expand=True)
    bw, bh = inscribed_box(image.width, image.height, angle)
    bw, bh = max(1, int(bw)), max(1, int(bh))
    left, top = (out.width - bw) // 2, (out.height - bh) // 2
    return out.crop((left, top, left + bw, top + bh))
  return image.rotate(angle, resample=Image.BILINEAR, expand=expand,
                      fillcolor=random_color(rng))


def pad(image: Img, rng: np.random.Generator, max_fraction=0.2) -> Img:
  """Adds a border of random colour and width on each side."""
  w, h = image.size
  t, b = (rng.uniform(0, max_fraction, 2) * h).astype(int)
  l, r = (rng.uniform(0, max_fraction, 2) * w).astype(int)
  out = Image.new("RGB", (w + l + r, h + t + b), random_color(rng))
  out.paste(image, (int(l), int(t)))
  return out


def shrink(image: Img, side: int) -> Img:
  """Scales the image down, keeping its aspect, so that its shorter side is
  at most `side` (unchanged if it already is)."""
  w, h = image.size
  if min(w, h) <= side:
    return image
  f = side / min(w, h)
  return _resize(image, (max(1, round(h * f)), max(1, round(w * f))))


# -------------------------------------------------------------- photometric --
def color_jitter(image: Img, rng: np.random.Generator,
                 strength=(0.5, 0.5, 0.5, 0.1)) -> Img:
  """Brightness, contrast, saturation and hue changes in random order."""
  b, c, s, hue = strength
  out = image
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
  return out


def grayscale(image: Img) -> Img:
  return image.convert("L").convert("RGB")


def blur(image: Img, rng: np.random.Generator, sigma=(0.1, 2.0)) -> Img:
  """Gaussian blur; sigma is relative to a 256-pixel image, as in the chains."""
  scale = max(image.size) / 256.0
  radius = rng.uniform(*sigma) * scale
  return image.filter(ImageFilter.GaussianBlur(radius))


def jpeg(image: Img, rng: np.random.Generator, quality=(10, 50)) -> Img:
  """Re-encodes as JPEG at a random quality."""
  buf = io.BytesIO()
  image.save(buf, format="JPEG", quality=int(rng.integers(*quality)))
  return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def pixelize(image: Img, rng: np.random.Generator, ratio=(0.3, 1.0)) -> Img:
  """Downsamples then upsamples with nearest neighbour (AugLy pixelization)."""
  w, h = image.size
  r = rng.uniform(*ratio)
  small = image.resize((max(1, int(w * r)), max(1, int(h * r))), Image.BILINEAR)
  return small.resize((w, h), Image.NEAREST)


def shuffle_pixels(image: Img, rng: np.random.Generator, factor=(0.0, 0.4)) -> Img:
  """Moves a random fraction (drawn from `factor`) of the pixels to each
  other's places (AugLy's shuffle_pixels)."""
  a = np.array(image)
  flat = a.reshape(-1, a.shape[-1])
  picked = np.flatnonzero(rng.random(len(flat)) < rng.uniform(*factor))
  flat[picked] = flat[rng.permutation(picked)]
  return Image.fromarray(a)


def perspective(image: Img, rng: np.random.Generator, sigma=(0.0, 50.0)) -> Img:
  """Moves each corner by a normal offset of standard deviation drawn from
  `sigma` (pixels of a 256-pixel image, scaled with the image) and warps the
  image to match, on the same canvas (AugLy's perspective_transform, with
  bilinear rather than bicubic sampling: 2.5 times faster; the uncovered
  parts are black)."""
  w, h = image.size
  std = rng.uniform(*sigma) * max(w, h) / 256.0
  src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
  dst = src + rng.normal(0.0, std, (4, 2)) if std > 0 else src
  # PIL maps each output pixel (x, y) back to the input:
  # ((a x + b y + c) / (g x + h y + 1), (d x + e y + f) / (g x + h y + 1)).
  rows = []
  for (x, y), (u, v) in zip(dst, src, strict=True):
    rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
    rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
  try:
    coeffs = np.linalg.solve(np.array(rows), src.reshape(-1))
  except np.linalg.LinAlgError:  # Corners moved onto a line: leave the image.
    return image
  return image.transform((w, h), Image.Transform.PERSPECTIVE, tuple(coeffs), Image.BILINEAR)


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


def _plain(op):
  return lambda image, rng, background_fn, **params: op(image, rng, **params)


def _paste_onto(image, rng, background_fn, **params):
  # The view is pasted onto the other image at most at its own size.
  return paste_onto(image, background_fn(rng, min(image.size)), rng, **params)


# The edits after the crop, in the order they are applied, and the function
# whose keyword arguments are each edit's parameters. The crop comes first
# and alone changes the information amount (`copy_edit_chain`).
_EDITS: dict[str, tuple[Callable, Callable]] = {
    "resize": (random_resize, _plain(random_resize)),
    "rotate": (rotate, _plain(rotate)),
    "pixelize": (pixelize, _plain(pixelize)),
    "shuffle_pixels": (shuffle_pixels, _plain(shuffle_pixels)),
    "perspective": (perspective, _plain(perspective)),
    "pad": (pad, _plain(pad)),
    "underlay": (underlay, lambda image, rng, background_fn, **params: underlay(
        image, background_fn, rng, **params)),
    "color_jitter": (color_jitter, _plain(color_jitter)),
    "grayscale": (grayscale, lambda image, rng, background_fn: grayscale(image)),
    "blur": (blur, _plain(blur)),
    "hflip": (hflip, lambda image, rng, background_fn: hflip(image)),
    "text": (text_overlay, _plain(text_overlay)),
    "text2": (text_overlay, _plain(text_overlay)),  # BoT draws text twice.
    "sticker": (sticker_overlay, _plain(sticker_overlay)),
    "paste_onto": (paste_onto, _paste_onto),
    "meme": (meme, _plain(meme)),
    "screenshot": (screenshot, _plain(screenshot)),
    "jpeg": (jpeg, _plain(jpeg)),
}
EDIT_NAMES = ("crop",) + tuple(_EDITS)
_CROP_PARAMS = ("area",)


@functools.cache  # Asked for every view, by check_edits.
def edit_parameters(name: str) -> tuple[str, ...]:
  """The parameters (keyword arguments) edit `name` accepts."""
  if name == "crop":
    return _CROP_PARAMS
  fn = _EDITS[name][0]
  skip = {"image", "rng", "background", "background_fn"}
  return tuple(p for p in inspect.signature(fn).parameters if p not in skip)


def check_edits(probabilities: dict, params: dict | None = None) -> None:
  """Raises ValueError, naming the fix, for an unknown edit or parameter or
  a probability outside [0, 1]."""
  params = params or {}
  for what, names in (("edit", probabilities), ("edit with parameters", params)):
    unknown = sorted(set(names) - set(EDIT_NAMES))
    if unknown:
      raise ValueError(f"Unknown copy {what} {unknown}; known edits: {', '.join(EDIT_NAMES)}.")
  for name, p in probabilities.items():
    if not 0.0 <= float(p) <= 1.0:
      raise ValueError(f"The probability of copy edit {name!r} is {p}; give one in [0, 1].")
  for name, kw in params.items():
    bad = sorted(set(kw) - set(edit_parameters(name)))
    if bad:
      raise ValueError(f"Copy edit {name!r} has no parameter {bad}; its parameters are "
                       f"{list(edit_parameters(name)) or 'none'}.")


def check_information(factors: dict) -> None:
  """Raises ValueError, naming the fix, for an unknown edit or a factor
  outside (0, 1] in an edit -> information-factor map (data.edit_information)."""
  unknown = sorted(set(factors) - set(EDIT_NAMES) - {"crop"})
  if unknown or "crop" in factors:
    raise ValueError(f"Unknown edit {unknown or ['crop']} (the crop's amount is its area "
                     f"fraction); edits with a factor: {', '.join(_EDITS)}.")
  for name, f in factors.items():
    if not isinstance(f, (int, float)) or not 0.0 < float(f) <= 1.0:
      raise ValueError(f"The information factor of edit {name!r} is {f!r}; give one in "
                       "(0, 1]: an edit can only remove content.")


def copy_edit_chain(
    image: Array | Img, rng: np.random.Generator, probabilities: dict[str, float],
    crop_area=(0.2, 1.0), background_fn: Callable | None = None,
    min_edits: int = 0, work_size: int | None = None,
    params: dict[str, dict] | None = None,
    information: dict[str, float] | None = None) -> EditedImage:
  """Applies each edit with its probability, in the canonical order.

  Args:
    image: the source image, a uint8 HxWx3 array or an RGB PIL image.
    rng: randomness.
    probabilities: edit name (see `EDIT_NAMES`) -> probability. Only the
      edits named here are drawn for (a name with probability 0 still takes
      its draw, so that adding a new edit to the module does not change the
      edits a seed gives for an old set of probabilities).
    crop_area: the range of crop area fractions.
    background_fn: (rng, min_size) -> image (array or PIL), the other image
      of `paste_onto` and `underlay`; min_size is the shorter side the edit
      needs (a larger image is fine; JPEGs can be decoded smaller). Random
      gradients if None.
    min_edits: if fewer edits fired, force random extra ones among the named
      (so that a copy query is never a bit-identical duplicate).
    work_size: if set, the image is shrunk (aspect kept) whenever its shorter
      side exceeds it, before the edits and after each one. For a caller that
      resizes the result to about this size anyway (training views): the
      edits' sizes are relative to the image, so this changes little but the
      cost of edits that follow an enlarging one (resize, rotate, pad,
      paste_onto). None (the builder's queries) keeps every size.
    params: edit name -> keyword arguments of its function (see
      `edit_parameters`), replacing the defaults; e.g. {"pad":
      {"max_fraction": 0.1}}. `crop_area` is the crop's.
    information: edit name -> the factor (in (0, 1]) each applied edit
      multiplies the information amount by (`check_information`); without
      it only the crop lowers the amount (its area fraction).
  Returns:
    The edited image (of the input's type), its information amount and the
    list of edits applied.
  """
  params = dict(params or {})
  check_edits(probabilities, params)
  crop_area = tuple(params.pop("crop", {}).get("area", crop_area))
  background_fn = background_fn or (lambda r, min_size: random_background(r))
  named = [n for n in EDIT_NAMES if n in probabilities]
  fire = {n: rng.random() < probabilities[n] for n in named}
  missing = min_edits - sum(fire.values())
  if missing > 0:
    off = [n for n in named if not fire[n]]
    for n in rng.choice(off, size=min(missing, len(off)), replace=False):
      fire[str(n)] = True
  fit = (lambda im: shrink(im, work_size)) if work_size else (lambda im: im)
  pil = to_pil(image)
  out = EditedImage(pil)
  if fire.get("crop"):
    box, out.information_amount = crop_box(pil.height, pil.width, rng, crop_area)
    pil = pil.crop(box)
    out.edits.append("crop")
  pil = fit(pil)
  for name, (_, op) in _EDITS.items():
    if fire.get(name):
      pil = fit(op(pil, rng, background_fn, **params.get(name, {})))
      out.edits.append(name)
      out.information_amount *= float((information or {}).get(name, 1.0))
  out.image = pil if isinstance(image, Image.Image) else to_array(pil)
  return out
