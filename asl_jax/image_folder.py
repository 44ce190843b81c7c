"""A folder of a user's photos: which files are images, read upright.

`scan` walks a folder once and sorts its files into images that decode and
files that are skipped, each with the reason: an extension that is not an
image format PIL reads here (`unsupported`), or a file that does not decode
(`unreadable`: corrupt, truncated, or not an image despite its name). Every
image is read upright: the EXIF orientation tag that cameras and phones
write instead of rotating the pixels is applied (`load`).

`FolderSource` gives the images as records (`{"id", "image": encoded bytes}`)
with the random access `evaluation/embedding.embed_split` reads a prepared split
with, so a folder is embedded exactly as the evaluation embeds its splits.
"""

import dataclasses
import io
import os
from concurrent import futures

import numpy as np
from PIL import Image, ImageOps

from asl_jax import pil_image

# Formats PIL decodes without plugins; HEIC/HEIF, RAW and the like are not.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
_ORIENTATION = 0x0112  # EXIF tag.


@dataclasses.dataclass(frozen=True)
class Skipped:
  path: str
  reason: str  # unsupported | unreadable: <error>


def skipped_summary(skipped: list[Skipped], show: int = 3) -> str:
  """'N files skipped: a (reason), b (reason), ...' for a message."""
  if not skipped:
    return "no files skipped"
  named = ", ".join(f"{s.path} ({s.reason})" for s in skipped[:show])
  return f"{len(skipped)} files skipped: {named}" + (", ..." if len(skipped) > show else "")


@dataclasses.dataclass
class Folder:
  """The images of a folder (paths relative to `root`, sorted) and the files
  skipped; `rotated[i]`: image i carries an EXIF orientation other than 1."""
  root: str
  images: list[str]
  rotated: list[bool]
  sizes: list[tuple[int, int]]  # Upright (width, height).
  skipped: list[Skipped]

  def path(self, i: int) -> str:
    return os.path.join(self.root, self.images[i])


def _check(path: str) -> tuple[bool, tuple[int, int]]:
  """(EXIF-rotated?, upright size) of an image that decodes; raises otherwise.
  JPEGs are decoded at reduced scale (draft): the whole stream is still read,
  so truncation shows, at a fraction of the cost."""
  with Image.open(path) as im:
    orientation = im.getexif().get(_ORIENTATION, 1)
    size = im.size
    im.draft("RGB", (64, 64))
    im.load()
  if orientation in (5, 6, 7, 8):  # The quarter turns swap width and height.
    size = size[::-1]
  return orientation not in (1, None), size


def scan(root: str, workers: int = 8) -> Folder:
  """Every file under `root` (sub-folders included, hidden files too),
  sorted by relative path, sorted into images and skipped files."""
  files = []
  for dirpath, dirs, names in os.walk(root):
    dirs.sort()
    files += [os.path.relpath(os.path.join(dirpath, n), root) for n in sorted(names)]
  candidates = [f for f in files if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
  skipped = [Skipped(f, "unsupported") for f in files
             if os.path.splitext(f)[1].lower() not in IMAGE_EXTENSIONS]

  def check(rel):
    try:
      return _check(os.path.join(root, rel))
    except Exception as e:  # PIL raises many kinds for bad files.
      return f"unreadable: {type(e).__name__}: {e}"

  with futures.ThreadPoolExecutor(workers) as pool:  # PIL decodes without the GIL.
    results = list(pool.map(check, candidates))
  images, rotated, sizes = [], [], []
  for rel, result in zip(candidates, results):
    if isinstance(result, str):
      skipped.append(Skipped(rel, result))
    else:
      images.append(rel)
      rotated.append(result[0])
      sizes.append(result[1])
  skipped.sort(key=lambda s: s.path)
  return Folder(os.path.abspath(root), images, rotated, sizes, skipped)


def load_pil(path: str) -> Image.Image:
  """The image upright (EXIF orientation applied), as RGB."""
  with Image.open(path) as im:
    return pil_image.to_rgb(ImageOps.exif_transpose(im))


def load(path: str) -> np.ndarray:
  """uint8 [H, W, 3], upright."""
  return np.asarray(load_pil(path))


def image_id(rel: str) -> str:
  """The ISC id of a file: its name without the extension."""
  return os.path.splitext(os.path.basename(rel))[0]


def unique_ids(folder: Folder) -> list[str]:
  """The ISC ids (file stems) of the images; raises ValueError naming the
  files when two share one (ISC descriptor files key images by stem)."""
  seen, clashes = {}, []
  for rel in folder.images:
    i = image_id(rel)
    if i in seen:
      clashes.append(f"{seen[i]} and {rel}")
    seen.setdefault(i, rel)
  if clashes:
    raise ValueError(f"{len(clashes)} image names are used twice ({'; '.join(clashes[:5])}); "
                     "descriptor files key images by file name without extension")
  return [image_id(rel) for rel in folder.images]


class FolderSource:
  """Records {"id", "image", "filename"} of a folder's images, with the
  random access of a prepared split. `image` is the file's own bytes, or,
  for an EXIF-rotated image, the upright pixels re-encoded losslessly (PNG),
  since the evaluation's decoder does not read EXIF."""

  def __init__(self, folder: Folder, ids: list[str]):
    self.folder, self.ids = folder, ids

  def __len__(self):
    return len(self.folder.images)

  def __getitem__(self, index: int) -> dict:
    path = self.folder.path(index)
    if self.folder.rotated[index]:
      buffer = io.BytesIO()
      load_pil(path).save(buffer, format="PNG")
      data = buffer.getvalue()
    else:
      with open(path, "rb") as f:
        data = f.read()
    return {"id": self.ids[index], "image": data, "filename": path}
