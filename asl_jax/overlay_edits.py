"""The copy edits that add content: text and emoji-like stickers drawn over the
image, another image pasted into it (underlay), the image pasted onto
another one, a meme's caption band above it and the image shown inside a
web or phone page (a screenshot). None changes the information amount by
itself (copy_edits.py; data.edit_information gives them a factor)."""

import string
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from asl_jax.pil_image import Array, Img, random_color, to_pil
from asl_jax.pil_image import resize_pil as _resize

_GLYPHS = string.ascii_letters + string.digits + "#@&%?!"


def _font(px: int) -> ImageFont.FreeTypeFont:
  return ImageFont.load_default(size=max(4, int(px)))


def text_overlay(image: Img, rng: np.random.Generator, max_chars=20, size=(0.08, 0.3),
                 opacity=(0.5, 1.0)) -> Img:
  """Draws 1..max_chars random characters in a random colour; the font size
  is a fraction (drawn from `size`) of the shorter side, the opacity drawn
  from `opacity`."""
  w, h = image.size
  n = int(rng.integers(1, max_chars + 1))
  text = "".join(rng.choice(list(_GLYPHS), size=n))
  px = rng.uniform(*size) * min(h, w)
  layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
  alpha = int(255 * rng.uniform(*opacity))
  x, y = rng.uniform(0, 0.6) * w, rng.uniform(0, 0.8) * h
  ImageDraw.Draw(layer).text((x, y), text, font=_font(px),
                             fill=random_color(rng) + (alpha,))
  return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


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


def sticker_overlay(image: Img, rng: np.random.Generator, size=(0.15, 0.5),
                    opacity=(0.6, 1.0)) -> Img:
  """Pastes an emoji-like sticker at a random place; its side is a fraction
  (drawn from `size`) of the shorter side, its opacity drawn from `opacity`."""
  w, h = image.size
  st = sticker(rng, int(rng.uniform(*size) * min(h, w)))
  alpha = np.asarray(st)[..., 3].astype(np.float32) * rng.uniform(*opacity)
  st.putalpha(Image.fromarray(alpha.astype(np.uint8)))
  out = image.convert("RGBA")
  x = int(rng.uniform(0, max(1, w - st.width)))
  y = int(rng.uniform(0, max(1, h - st.height)))
  out.alpha_composite(st, (x, y))
  return out.convert("RGB")


def underlay(image: Img, background_fn: Callable, rng: np.random.Generator,
             scale=(0.04, 0.1), position=(0.0, 0.5)) -> Img:
  """Pastes a small copy of another image onto this one (BoT's "image
  underlay"): its height a fraction (drawn from `scale`) of this image's,
  its top-left corner at fractions (drawn from `position`) of the sides.
  background_fn(rng, min_size) gives the other image."""
  w, h = image.size
  oh = max(1, int(round(rng.uniform(*scale) * h)))
  other = to_pil(background_fn(rng, oh))
  ow = max(1, int(round(other.width * oh / other.height)))
  x, y = (int(rng.uniform(*position) * w), int(rng.uniform(*position) * h))
  out = image.copy()
  out.paste(_resize(other, (oh, ow)), (x, y))
  return out


def paste_onto(image: Img, background: Array | Img, rng: np.random.Generator,
               scale=(0.3, 0.8)) -> Img:
  """Pastes the image, shrunk to a fraction of the background, onto it."""
  out = to_pil(background).copy()
  bw, bh = out.size
  w, h = image.size
  s = rng.uniform(*scale) * min(bh / h, bw / w)
  small = _resize(image, (max(4, int(h * s)), max(4, int(w * s))))
  y = int(rng.integers(0, bh - small.height + 1))
  x = int(rng.integers(0, bw - small.width + 1))
  out.paste(small, (x, y))
  return out


def _random_text(rng: np.random.Generator, words=(1, 5)) -> str:
  n = int(rng.integers(words[0], words[1] + 1))
  return " ".join("".join(rng.choice(list(string.ascii_uppercase), size=int(rng.integers(2, 8))))
                  for _ in range(n))


def meme(image: Img, rng: np.random.Generator, band=(0.15, 0.35)) -> Img:
  """A meme's caption band (AugLy's meme_format): the image below a band of
  a plain light colour, its height a fraction (drawn from `band`) of the
  image's, holding a caption of a few words in large dark bold letters."""
  w, h = image.size
  bh = max(4, int(round(rng.uniform(*band) * h)))
  out = Image.new("RGB", (w, h + bh), tuple(int(c) for c in rng.integers(220, 256, 3)))
  out.paste(image, (0, bh))
  text = _random_text(rng, (1, 3)).lower()
  draw = ImageDraw.Draw(out)
  px = 0.7 * bh
  tw = draw.textlength(text, font=_font(px))
  px *= min(1.0, 0.95 * w / max(tw, 1.0))  # Too long for the band: smaller letters.
  font, colour = _font(px), tuple(int(c) for c in rng.integers(0, 60, 3))
  tw = draw.textlength(text, font=font)
  draw.text(((w - tw) / 2, (bh - px) / 2), text, font=font, fill=colour,
            stroke_width=max(1, int(px / 25)), stroke_fill=colour)
  return out


def screenshot(image: Img, rng: np.random.Generator, scale=(0.3, 0.9)) -> Img:
  """The image inside a drawn page (AugLy's overlay_onto_screenshot): a phone
  page (portrait; the image 75-95% of its width) or a web page (landscape;
  the image a fraction, drawn from `scale`, of its width) with a coloured title
  bar, a row of round avatars, grey lines of text and panels."""
  w, h = image.size
  phone = bool(rng.random() < 0.5)
  frac = rng.uniform(0.75, 0.95) if phone else rng.uniform(*scale)
  pw = max(32, int(round(w / frac)))
  ph = max(32, int(round(pw * (rng.uniform(1.7, 2.1) if phone else rng.uniform(0.55, 0.8)))))
  page = Image.new("RGB", (pw, ph), tuple(int(c) for c in rng.integers(225, 256, 3)))
  draw = ImageDraw.Draw(page)
  grey = lambda: tuple([int(rng.integers(120, 215))] * 3)
  bar = max(4, int(round(ph * (0.06 if phone else 0.08))))
  draw.rectangle([0, 0, pw, bar], fill=random_color(rng) if rng.random() < 0.5 else grey())
  r = max(2, bar // 2)
  for i in range(int(rng.integers(3, 9))):  # Avatars.
    cx = r + i * 3 * r
    draw.ellipse([cx, bar + r // 2, cx + 2 * r, bar + r // 2 + 2 * r], fill=random_color(rng))
  top = bar + 3 * r
  line = max(2, bar // 4)
  for ly in range(top, ph - line, 3 * line):  # Lines of "text" and panels.
    x0 = int(pw * rng.uniform(0.02, 0.3))
    draw.rectangle([x0, ly, int(pw * rng.uniform(0.4, 0.98)), ly + line], fill=grey())
  for _ in range(int(rng.integers(0, 3))):
    x0, y0 = int(rng.uniform(0, 0.8) * pw), int(rng.uniform(0.2, 0.8) * ph)
    draw.rectangle([x0, y0, x0 + int(0.15 * pw), y0 + int(0.15 * ph)], fill=random_color(rng))
  iw = max(4, int(round(min(w, 0.95 * pw, w * (ph - top - 4) / h))))
  ih = max(4, int(round(h * iw / w)))
  x = (pw - iw) // 2 if phone else int(rng.integers(0, max(1, pw - iw)))
  y = top + int(rng.integers(0, max(1, ph - top - ih)))
  page.paste(_resize(image, (ih, iw)), (x, y))
  return page
