"""Contact sheets of copy pairs: PNG pages, one row per pair, the source on
the left, an arrow to the copy on the right (solid where the geometry
decided the direction, dashed where only the gate norms did), and what was
measured beside them."""

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

THUMB = 160
ARROW = 70
TEXT = 460
ROWS_PER_PAGE = 30


def _thumb(path: str, load) -> Image.Image:
  image = Image.fromarray(load(path))
  image.thumbnail((THUMB, THUMB))
  return image


def _arrow(draw: ImageDraw.ImageDraw, x0: int, x1: int, y: int, dashed: bool):
  if dashed:
    for x in range(x0, x1 - 12, 10):
      draw.line((x, y, min(x + 5, x1 - 12), y), fill=(40, 40, 40), width=3)
  else:
    draw.line((x0, y, x1 - 12, y), fill=(40, 40, 40), width=3)
  draw.polygon([(x1, y), (x1 - 14, y - 8), (x1 - 14, y + 8)], fill=(40, 40, 40))


def _caption(pair, folder) -> list[str]:
  cover = "n/a" if np.isnan(pair.cover) else f"{pair.cover:.2f}"
  how = ("direction from the geometry" if pair.decided_by == "geometry"
         else "direction from the gate norms only")
  return [f"source: {folder.images[pair.source]}", f"copy:   {folder.images[pair.copy]}",
          f"{pair.verdict} ({how})",
          f"score {pair.score:.3f}   cover {cover}   inliers {pair.inliers}",
          f"norm ratio |g(copy)|/|g(source)| {pair.norm_ratio:.3f}"
          + ("" if pair.norm_ratio <= 1 else "  (norms disagree)")]


def write(prefix: str, pairs: list, folder, load) -> list[str]:
  """contact_sheet.png (and _2, _3, ... for more than ROWS_PER_PAGE pairs)
  at `prefix`; returns the files written. load: path -> uint8 RGB, upright."""
  font = ImageFont.load_default(size=14)
  files = []
  pages = [pairs[i:i + ROWS_PER_PAGE] for i in range(0, len(pairs), ROWS_PER_PAGE)] or [[]]
  for page_number, page in enumerate(pages, 1):
    row_h = THUMB + 30
    sheet = Image.new("RGB", (2 * THUMB + ARROW + TEXT + 40, max(len(page), 1) * row_h + 10),
                      "white")
    draw = ImageDraw.Draw(sheet)
    if not page:
      draw.text((10, 10), "No copy pairs found.", fill="black", font=font)
    for row, pair in enumerate(page):
      y = 5 + row * row_h
      draw.text((10, y), "source", fill=(0, 90, 0), font=font)
      draw.text((20 + THUMB + ARROW, y), "copy", fill=(150, 0, 0), font=font)
      for x, index in ((10, pair.source), (20 + THUMB + ARROW, pair.copy)):
        thumb = _thumb(folder.path(index), load)
        sheet.paste(thumb, (x + (THUMB - thumb.width) // 2, y + 20 + (THUMB - thumb.height) // 2))
      _arrow(draw, 15 + THUMB, 15 + THUMB + ARROW, y + 20 + THUMB // 2,
             dashed=pair.decided_by != "geometry")
      for line, text in enumerate(_caption(pair, folder)):
        draw.text((30 + 2 * THUMB + ARROW, y + 25 + 20 * line), text, fill="black", font=font)
    path = prefix + (".png" if page_number == 1 else f"_{page_number}.png")
    sheet.save(path)
    files.append(path)
  return files


def default_prefix(out_dir: str) -> str:
  return os.path.join(out_dir, "contact_sheet")
