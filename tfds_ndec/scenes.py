"""Procedural scenes for the synthetic NDEC-like benchmark.

A scene is a small description of an image in continuous coordinates: a
background gradient with low-frequency waves, layers of textured shapes at
three scales, glyphs, a fine high-frequency texture and a lighting field. The
image is *rendered* through a viewport (a rectangle of the scene), so that the
same scene can be seen whole, cropped, from a shifted viewpoint or under other
lighting, with every detail redrawn sharply at the output resolution. That is
what NDEC's hard negatives need:

* reverse-direction crops: the reference is a viewport inside the scene and
  the query is the whole scene (it holds more content, so it is not a copy);
* visually similar images: the same layout and palette, details redrawn;
* another viewpoint: a shifted and zoomed viewport;
* another time: new lighting and moved transient objects.

The content of the unit square [0, 1]^2 is the "whole scene"; shapes also
extend beyond it so that shifted viewports still see content.
"""

import dataclasses
import string

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_FILLS = ("solid", "stripes", "checker", "radial", "dots")
_CHARS = string.ascii_uppercase + string.digits


@dataclasses.dataclass
class Shape:
  kind: str          # rect | ellipse | triangle | star | blob
  center: np.ndarray  # (2,) scene coordinates
  size: float        # half extent in scene units
  aspect: float
  angle: float
  color: np.ndarray  # (3,) float
  color2: np.ndarray
  fill: str
  frequency: float   # cycles per scene unit of the fill pattern
  fill_angle: float
  transient: bool    # moves between shooting times
  vertices: np.ndarray | None = None  # blob outline, unit-circle based


@dataclasses.dataclass
class Glyph:
  char: str
  center: np.ndarray
  size: float
  angle: float
  color: np.ndarray


@dataclasses.dataclass
class Lighting:
  direction: float
  strength: float
  tint: np.ndarray   # (3,) multiplicative colour temperature


@dataclasses.dataclass
class Scene:
  palette: np.ndarray     # (P, 3)
  bg_colors: np.ndarray   # (2, 3)
  bg_angle: float
  waves: np.ndarray       # (W, 4): frequency, angle, phase, amplitude
  shapes: list[Shape]
  glyphs: list[Glyph]
  texture: np.ndarray     # (T, 4): fine texture sinusoids
  lighting: Lighting


# A shared bank of colours: every scene draws its palette from it, so colour
# statistics alone cannot tell scenes apart (as with natural images) and a
# model must see structure.
PALETTE_BANK = np.array([
    [220, 60, 50], [240, 170, 40], [235, 225, 90], [70, 170, 80],
    [50, 150, 200], [60, 80, 170], [150, 80, 170], [230, 230, 225],
    [40, 40, 45], [140, 100, 70]], np.float32)


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
  """n distinct bank colours, slightly perturbed."""
  idx = rng.choice(len(PALETTE_BANK), size=n, replace=False)
  return np.clip(PALETTE_BANK[idx] + rng.normal(0, 8, (n, 3)), 0, 255)


def _shape(rng, palette, scale_range, lo=-0.25, hi=1.25,
           transient=False) -> Shape:
  kind = str(rng.choice(["rect", "ellipse", "triangle", "star", "blob"]))
  n = 9
  verts = None
  if kind == "blob":
    verts = 1.0 + 0.35 * rng.uniform(-1, 1, n)
  c = palette[rng.integers(len(palette))] + rng.normal(0, 12, 3)
  c2 = palette[rng.integers(len(palette))] + rng.normal(0, 12, 3)
  return Shape(kind=kind, center=rng.uniform(lo, hi, 2),
               size=float(rng.uniform(*scale_range)),
               aspect=float(np.exp(rng.uniform(-0.6, 0.6))),
               angle=float(rng.uniform(0, np.pi)), color=c, color2=c2,
               fill=str(rng.choice(_FILLS)),
               frequency=float(rng.uniform(6, 40)),
               fill_angle=float(rng.uniform(0, np.pi)), transient=transient,
               vertices=verts)


def _glyph(rng, palette) -> Glyph:
  return Glyph(char=str(rng.choice(list(_CHARS))),
               center=rng.uniform(0.0, 1.0, 2), size=float(rng.uniform(0.06, 0.2)),
               angle=float(rng.uniform(-40, 40)),
               color=palette[rng.integers(len(palette))] * rng.uniform(0.2, 1.2))


def _lighting(rng) -> Lighting:
  return Lighting(direction=float(rng.uniform(0, 2 * np.pi)),
                  strength=float(rng.uniform(0.0, 0.35)),
                  tint=1.0 + rng.normal(0, 0.06, 3))


def _details(rng, palette):
  """Medium and small shapes, glyphs and the fine texture: what 'similar'
  images redraw while keeping the layout."""
  shapes = [_shape(rng, palette, (0.06, 0.16)) for _ in range(rng.integers(5, 9))]
  shapes += [_shape(rng, palette, (0.02, 0.06), lo=-0.1, hi=1.1)
             for _ in range(rng.integers(6, 12))]
  shapes += [_shape(rng, palette, (0.03, 0.09), lo=0.0, hi=1.0, transient=True)
             for _ in range(rng.integers(2, 5))]
  glyphs = [_glyph(rng, palette) for _ in range(rng.integers(2, 5))]
  texture = np.stack([rng.uniform(30, 90, 6), rng.uniform(0, np.pi, 6),
                      rng.uniform(0, 2 * np.pi, 6), rng.uniform(3, 8, 6)], 1)
  return shapes, glyphs, texture


def sample_scene(rng: np.random.Generator) -> Scene:
  """Draws a new scene."""
  palette = _palette(rng, int(rng.integers(4, 7)))
  big = [_shape(rng, palette, (0.18, 0.45)) for _ in range(rng.integers(3, 6))]
  small, glyphs, texture = _details(rng, palette)
  waves = np.stack([rng.uniform(0.5, 4, 3), rng.uniform(0, np.pi, 3),
                    rng.uniform(0, 2 * np.pi, 3), rng.uniform(10, 30, 3)], 1)
  return Scene(palette=palette, bg_colors=palette[rng.choice(len(palette), 2)],
               bg_angle=float(rng.uniform(0, 2 * np.pi)), waves=waves,
               shapes=big + small, glyphs=glyphs, texture=texture,
               lighting=_lighting(rng))


def redraw_details(scene: Scene, rng: np.random.Generator) -> Scene:
  """A visually similar scene: same layout and palette, new details."""
  n_big = sum(s.size >= 0.18 for s in scene.shapes)
  big = [dataclasses.replace(s, fill=str(rng.choice(_FILLS)),
                             frequency=float(rng.uniform(6, 40)),
                             fill_angle=float(rng.uniform(0, np.pi)),
                             center=s.center + rng.normal(0, 0.04, 2))
         for s in scene.shapes[:n_big]]
  small, glyphs, texture = _details(rng, scene.palette)
  return dataclasses.replace(scene, shapes=big + small, glyphs=glyphs,
                             texture=texture)


def change_time(scene: Scene, rng: np.random.Generator) -> Scene:
  """The same place at another time: new light, moved transient objects."""
  shapes = [dataclasses.replace(s, center=rng.uniform(0.0, 1.0, 2))
            if s.transient else s for s in scene.shapes]
  shapes += [_shape(rng, scene.palette, (0.03, 0.09), lo=0.0, hi=1.0,
                    transient=True) for _ in range(rng.integers(1, 3))]
  light = Lighting(direction=scene.lighting.direction + rng.uniform(2, 4),
                   strength=float(rng.uniform(0.25, 0.5)),
                   tint=1.0 + rng.normal(0, 0.12, 3))
  return dataclasses.replace(scene, shapes=shapes, lighting=light)


# ----------------------------------------------------------------- render --
def _outline(s: Shape) -> np.ndarray:
  """Polygon of a shape in scene coordinates, (V, 2)."""
  if s.kind == "rect":
    u = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float32)
  elif s.kind == "triangle":
    u = np.array([[0, -1], [1, 0.8], [-1, 0.8]], np.float32)
  elif s.kind == "star":
    t = np.linspace(0, 2 * np.pi, 11)[:-1]
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    u = np.stack([r * np.cos(t), r * np.sin(t)], 1)
  elif s.kind == "blob":
    t = np.linspace(0, 2 * np.pi, len(s.vertices), endpoint=False)
    u = np.stack([s.vertices * np.cos(t), s.vertices * np.sin(t)], 1)
  else:
    t = np.linspace(0, 2 * np.pi, 28, endpoint=False)
    u = np.stack([np.cos(t), np.sin(t)], 1)
  u = u * s.size * np.array([s.aspect, 1 / s.aspect]) ** 0.5
  rot = np.array([[np.cos(s.angle), -np.sin(s.angle)],
                  [np.sin(s.angle), np.cos(s.angle)]])
  return u @ rot.T + s.center


def _fill(s: Shape, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """The shape's texture at scene coordinates x, y -> (..., 3)."""
  if s.fill == "solid":
    return np.broadcast_to(s.color, x.shape + (3,))
  u = x * np.cos(s.fill_angle) + y * np.sin(s.fill_angle)
  v = -x * np.sin(s.fill_angle) + y * np.cos(s.fill_angle)
  f = s.frequency
  if s.fill == "stripes":
    t = (np.sin(2 * np.pi * f * u) > 0)
  elif s.fill == "checker":
    t = (np.floor(f * u) + np.floor(f * v)) % 2 == 0
  elif s.fill == "radial":
    d = np.hypot(x - s.center[0], y - s.center[1]) / s.size
    t = np.clip(d, 0, 1)
    return s.color * (1 - t[..., None]) + s.color2 * t[..., None]
  else:  # dots
    t = (np.sin(2 * np.pi * f * u) * np.sin(2 * np.pi * f * v)) > 0.4
  return np.where(t[..., None], s.color, s.color2)


def render(scene: Scene, viewport=(0.0, 0.0, 1.0, 1.0),
           size: tuple[int, int] = (128, 128)) -> np.ndarray:
  """Renders the scene region `viewport` = (x0, y0, width, height) to a uint8
  image of `size` = (height, width)."""
  x0, y0, vw, vh = viewport
  h, w = size
  xs = x0 + (np.arange(w, dtype=np.float32) + 0.5) / w * vw
  ys = y0 + (np.arange(h, dtype=np.float32) + 0.5) / h * vh
  x, y = np.meshgrid(xs, ys)
  # Background: two-colour gradient plus low-frequency waves.
  t = (x * np.cos(scene.bg_angle) + y * np.sin(scene.bg_angle)) * 0.5 + 0.5
  c0, c1 = scene.bg_colors
  c0, c1 = c0.astype(np.float32), c1.astype(np.float32)
  img = c0 + (c1 - c0) * np.clip(t, 0, 1)[..., None]
  img += _sinusoids(scene.waves, x, y)[..., None]
  to_px = lambda pts: np.stack([(pts[:, 0] - x0) / vw * w, (pts[:, 1] - y0) / vh * h], 1)
  for s in scene.shapes:
    poly = to_px(_outline(s))
    lo = np.floor(poly.min(0)).astype(int)
    hi = np.ceil(poly.max(0)).astype(int) + 1
    lo, hi = np.maximum(lo, 0), np.minimum(hi, [w, h])
    if np.any(hi - lo <= 0):
      continue
    mask_im = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask_im).polygon([tuple(p) for p in poly], fill=255)
    sl = (slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    m = np.asarray(mask_im, np.float32)[sl][..., None] / 255.0
    img[sl] = img[sl] * (1 - m) + _fill(s, x[sl], y[sl]) * m
  img = _draw_glyphs(scene, img, viewport, size)
  img += _sinusoids(scene.texture, x, y)[..., None]  # Fine: seen up close.
  light = scene.lighting
  g = (x - 0.5) * np.cos(light.direction) + (y - 0.5) * np.sin(light.direction)
  img *= (1 + light.strength * g)[..., None]
  img *= light.tint.astype(np.float32)
  return np.clip(img, 0, 255).astype(np.uint8)


def _sinusoids(params: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Sum of amp * sin(2 pi f (x cos a + y sin a) + phase) over rows of params."""
  out = np.zeros_like(x)
  for f, a, p, amp in params.astype(np.float32):
    out += amp * np.sin((2 * np.pi * f) * (x * np.cos(a) + y * np.sin(a)) + p)
  return out


def _draw_glyphs(scene, img, viewport, size):
  x0, y0, vw, vh = viewport
  h, w = size
  if not scene.glyphs:
    return img
  layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
  for g in scene.glyphs:
    px = g.size / vh * h
    if px < 4:
      continue
    font = ImageFont.load_default(size=int(px))
    tile = Image.new("RGBA", (int(px * 1.6), int(px * 1.6)), (0, 0, 0, 0))
    color = tuple(int(c) for c in np.clip(g.color, 0, 255)) + (255,)
    ImageDraw.Draw(tile).text((tile.width / 2, tile.height / 2), g.char, font=font,
                              fill=color, anchor="mm")
    tile = tile.rotate(g.angle, resample=Image.BILINEAR)
    cx = (g.center[0] - x0) / vw * w - tile.width / 2
    cy = (g.center[1] - y0) / vh * h - tile.height / 2
    layer.paste(tile, (int(cx), int(cy)), tile)
  arr = np.asarray(layer, np.float32)
  a = arr[..., 3:4] / 255.0
  return img * (1 - a) + arr[..., :3] * a


# -------------------------------------------------------------- viewports --
FULL = (0.0, 0.0, 1.0, 1.0)


def sub_viewport(rng: np.random.Generator, area=(0.25, 0.6)) -> tuple:
  """A random square-ish viewport inside the whole scene with that area."""
  a = rng.uniform(*area)
  r = np.exp(rng.uniform(-0.2, 0.2))
  w, h = min(1.0, np.sqrt(a * r)), min(1.0, np.sqrt(a / r))
  return (float(rng.uniform(0, 1 - w)), float(rng.uniform(0, 1 - h)), float(w), float(h))


def shifted_viewport(rng: np.random.Generator, shift=(0.15, 0.3),
                     zoom=(0.75, 1.3)) -> tuple:
  """The whole-scene viewport moved by a fraction of its size and zoomed."""
  z = rng.uniform(*zoom)
  ang = rng.uniform(0, 2 * np.pi)
  d = rng.uniform(*shift)
  cx, cy = 0.5 + d * np.cos(ang), 0.5 + d * np.sin(ang)
  return (float(cx - z / 2), float(cy - z / 2), float(z), float(z))
