"""A held-out copy vs reverse-crop set from a folder of photos, its copies
made with AugLy as real-photo ICD sets make them, to measure a run's gate
on photos it was never tuned on.

  pip install augly==1.0.0 'pillow<10' numpy   # a separate environment: AugLy 1.0.0 needs Pillow 9
  python benchmarks/augly_gate_set.py --photos DIR --out SET [--seed 0] [--swap]
  python -m asl_jax.main --config configs/asl.py:sscd_photos --workdir W \
      --config.data.name=folder/<name> --config.data.manual_dir=SET \
      --config.model.init_from=RUN --config.train.total_steps=0

The photos (searched recursively, scaled to at most --max_side on the long
side) are shuffled by --seed and split: a few go to train/ as the
backgrounds of the pasted copies (never evaluated), then half of the rest
are copied and half reverse-cropped; --swap exchanges the two halves, so a
set and its swapped twin give every photo one copy pair and one
reverse-crop pair. In the DISC21 layout (README, "Your own images"):
* copy: the reference is the photo; the query is 1 (35%), 2 (42%) or 3 (23%)
  stacked AugLy edits of it, at most one of them heavy: crop (30-90% of the
  area), downscale (30-90%), aspect change, rotation (4-35 degrees or a
  quarter turn), flip, padding, colour jitter (brightness and contrast
  0.6-1.5, saturation 0.3-1.8), grayscale, blur, JPEG quality 10-40,
  pixelization, caption text, emoji, meme band, screenshot template, pasted
  onto a background photo at 30-60% of its height;
* hard_negative/reverse_crop: the reference is a crop of 40-70% of the
  photo's area; the query the whole photo or a larger crop holding it, half
  of them with one mild edit that removes nothing (flip, mild colour change,
  JPEG 50-85, downscale to 60-90%).
queries.csv records each query's kind and edits. Every image is written as
JPEG quality 92. Nothing of asl_jax is imported (AugLy needs Pillow < 10).
"""

import argparse
import csv
import os
import random
import sys

from PIL import Image

_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_BACKGROUNDS = 8
_LATIN = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789"


def parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--photos", required=True, help="Folder of photos (searched recursively).")
  p.add_argument("--out", required=True, help="New folder for the set.")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--swap", action="store_true",
                 help="Copy the photos the unswapped set reverse-crops, and the other way.")
  p.add_argument("--max_side", type=int, default=512)
  return p.parse_args(argv)


def list_photos(folder):
  out = []
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    out += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(_EXTENSIONS)]
  return out


def fail(message):
  """A bad input: one paragraph on stderr and exit status 2, as asl_jax's commands."""
  print(f"augly_gate_set: error: {message}", file=sys.stderr)
  sys.exit(2)


def read(path, max_side):
  try:
    with Image.open(path) as im:
      im = im.convert("RGB")
  except OSError as e:
    fail(f"{path} could not be read as an image ({e}); remove it from --photos or replace it. "
         "Nothing was written.")
  scale = max_side / max(im.size)
  if scale < 1:
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                   Image.LANCZOS)
  return im


def _crop_box(rng, area, aspect=(0.75, 1.33)):
  """(x1, y1, x2, y2) as fractions: a crop holding `area` of the image."""
  a = rng.uniform(*aspect)
  w = min(1.0, (area * a) ** 0.5)
  h = min(1.0, area / w)
  x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
  return x, y, x + w, y + h


def _text(rng, n):
  return "".join(rng.choice(_LATIN) for _ in range(n)).strip() or "copy"


def _emoji(rng):
  import augly.utils as utils
  folder = utils.SMILEY_EMOJI_DIR
  return os.path.join(folder, rng.choice(sorted(os.listdir(folder))))


def copy_edit(rng, im, name, backgrounds, heavy):
  """One AugLy edit of `im` (name from EDITS) -> (image, detail)."""
  import augly.image as aug
  if name == "crop":
    area = rng.uniform(0.3, 0.5) if heavy else rng.uniform(0.5, 0.9)
    box = _crop_box(rng, area)
    return aug.crop(im, x1=box[0], y1=box[1], x2=box[2], y2=box[3]), f"crop({area:.2f})"
  if name == "downscale":
    f = rng.uniform(0.3, 0.5) if heavy else rng.uniform(0.5, 0.9)
    return aug.scale(im, factor=f), f"scale({f:.2f})"
  if name == "aspect":
    r = rng.choice([rng.uniform(0.5, 0.8), rng.uniform(1.25, 2.0)])
    return aug.change_aspect_ratio(im, ratio=r * im.width / im.height), f"aspect({r:.2f})"
  if name == "rotate":
    d = (rng.choice([90, 180, 270]) if rng.random() < 0.3 else rng.uniform(15, 35)) if heavy \
        else rng.choice([-1, 1]) * rng.uniform(4, 15)
    return aug.rotate(im, degrees=d), f"rotate({d:.0f})"
  if name == "hflip":
    return aug.hflip(im), "hflip"
  if name == "pad":
    c = tuple(rng.randrange(256) for _ in range(3))
    f = rng.uniform(0.05, 0.3)
    return aug.pad(im, w_factor=f, h_factor=f, color=c), f"pad({f:.2f})"
  if name == "color_jitter":
    b, c, s = rng.uniform(0.6, 1.5), rng.uniform(0.6, 1.5), rng.uniform(0.3, 1.8)
    return (aug.color_jitter(im, brightness_factor=b, contrast_factor=c, saturation_factor=s),
            f"color_jitter({b:.2f},{c:.2f},{s:.2f})")
  if name == "grayscale":
    return aug.grayscale(im), "grayscale"
  if name == "blur":
    r = rng.uniform(3, 6) if heavy else rng.uniform(1, 3)
    return aug.blur(im, radius=r), f"blur({r:.1f})"
  if name == "jpeg":
    q = rng.randint(10, 40)
    return aug.encoding_quality(im, quality=q), f"jpeg({q})"
  if name == "pixelize":
    r = rng.uniform(0.15, 0.4)
    return aug.pixelization(im, ratio=r), f"pixelization({r:.2f})"
  if name == "text":
    import augly.utils as utils
    font = os.path.join(utils.FONTS_DIR, "Raleway-ExtraBold.ttf")
    return (aug.overlay_text(im, text=[ord(ch) for ch in _text(rng, rng.randint(6, 16))],
                             font_file=font, font_size=rng.uniform(0.08, 0.2),
                             color=tuple(rng.randrange(256) for _ in range(3)),
                             x_pos=rng.uniform(0, 0.4), y_pos=rng.uniform(0, 0.8)),
            "overlay_text")
  if name == "emoji":
    return (aug.overlay_emoji(im, emoji_path=_emoji(rng), emoji_size=rng.uniform(0.15, 0.35),
                              x_pos=rng.uniform(0, 0.7), y_pos=rng.uniform(0, 0.7)),
            "overlay_emoji")
  if name == "meme":
    return (aug.meme_format(im, text=_text(rng, rng.randint(3, 10)),
                            caption_height=max(40, im.height // 4)), "meme_format")
  if name == "screenshot":
    import augly.utils as utils
    template = rng.choice(["web.png", "mobile.png"])
    return (aug.overlay_onto_screenshot(
        im, template_filepath=os.path.join(utils.SCREENSHOT_TEMPLATES_DIR, template)),
            f"overlay_onto_screenshot({template})")
  if name == "paste":
    bg_name, bg = rng.choice(backgrounds)
    size = rng.uniform(0.3, 0.6)
    return (aug.overlay_onto_background_image(im, background_image=bg, overlay_size=size,
                                              x_pos=rng.uniform(0, 1 - size),
                                              y_pos=rng.uniform(0, 1 - size)),
            f"overlay_onto_photo({size:.2f},bg={bg_name})")
  raise ValueError(name)


# The copy edits; of them, those that are heavy at their strong setting and those always heavy.
_EDITS = ("crop", "downscale", "aspect", "rotate", "hflip", "pad", "color_jitter", "grayscale",
          "blur", "jpeg", "pixelize", "text", "emoji", "meme", "screenshot", "paste")
_CAN_BE_HEAVY = ("crop", "downscale", "rotate", "blur")
_ALWAYS_HEAVY = ("jpeg", "pixelize", "meme", "screenshot", "paste")


def make_copy(rng, im, backgrounds):
  n = rng.choices([1, 2, 3], weights=[35, 42, 23])[0]
  names, heavy_used = [], False
  while len(names) < n:
    name = rng.choice(_EDITS)
    if name in names or (heavy_used and name in _ALWAYS_HEAVY):
      continue
    names.append(name)
    heavy_used |= name in _ALWAYS_HEAVY
  details = []
  for name in names:
    heavy = name in _ALWAYS_HEAVY or (
        not heavy_used and name in _CAN_BE_HEAVY and rng.random() < 0.4)
    heavy_used |= heavy
    im, d = copy_edit(rng, im, name, backgrounds, heavy)
    details.append(d)
  return im.convert("RGB"), details


def reverse_crop_boxes(rng):
  """(reference box, query box, reference area): fractions (x1, y1, x2, y2) of
  the photo; the reference holds 40-70% of its area, the query box (None: the
  whole photo, half of the time) holds the reference box and more."""
  area = rng.uniform(0.4, 0.7)
  x1, y1, x2, y2 = _crop_box(rng, area)
  if rng.random() < 0.5:
    return (x1, y1, x2, y2), None, area
  grow = rng.uniform(0.3, 0.9)   # of the margin around the reference crop, each side
  return (x1, y1, x2, y2), (x1 * (1 - grow), y1 * (1 - grow), x2 + (1 - x2) * grow,
                            y2 + (1 - y2) * grow), area


def make_reverse_crop(rng, im):
  """(reference crop, query, detail): the reference 40-70% of the photo's
  area; the query the photo or a larger crop holding it, maybe mildly edited."""
  import augly.image as aug
  ref_box, box, area = reverse_crop_boxes(rng)
  ref = aug.crop(im, x1=ref_box[0], y1=ref_box[1], x2=ref_box[2], y2=ref_box[3])
  detail = [f"reference crop({area:.2f})"]
  if box is None:
    query = im
    detail.append("query whole photo")
  else:
    query = aug.crop(im, x1=box[0], y1=box[1], x2=box[2], y2=box[3])
    detail.append(f"query larger crop({(box[2] - box[0]) * (box[3] - box[1]):.2f})")
  if rng.random() < 0.5:
    mild = rng.choice(["hflip", "color", "jpeg", "downscale"])
    if mild == "hflip":
      query = aug.hflip(query)
    elif mild == "color":
      query = aug.color_jitter(query, brightness_factor=rng.uniform(0.85, 1.15),
                               contrast_factor=rng.uniform(0.85, 1.15),
                               saturation_factor=rng.uniform(0.85, 1.15))
    elif mild == "jpeg":
      query = aug.encoding_quality(query, quality=rng.randint(50, 85))
    else:
      query = aug.scale(query, factor=rng.uniform(0.6, 0.9))
    detail.append(f"query mild {mild}")
  return ref.convert("RGB"), query.convert("RGB"), detail


def build(args):
  try:
    import augly.image  # noqa: F401
  except ImportError as e:
    fail(f"AugLy could not be imported ({e}). In a separate environment: pip install "
         "augly==1.0.0 'pillow<10' numpy (AugLy 1.0.0 needs Pillow 9), then run this script "
         "with its python.")
  if not os.path.isdir(args.photos):
    fail(f"--photos {args.photos} is not a folder; give the folder of photos to build the set "
         "from.")
  photos = list_photos(args.photos)
  if len(photos) < _BACKGROUNDS + 4:
    fail(f"--photos {args.photos} holds {len(photos)} photos ({', '.join(_EXTENSIONS)}); give "
         f"a folder of at least {_BACKGROUNDS + 4}.")
  if os.path.exists(args.out):
    fail(f"--out {args.out} exists; give a new folder (nothing in it was changed).")
  rng = random.Random(args.seed)
  order = list(photos)
  rng.shuffle(order)
  backgrounds, rest = order[:_BACKGROUNDS], order[_BACKGROUNDS:]
  half = len(rest) // 2
  copies, reverse = (rest[half:], rest[:half]) if args.swap else (rest[:half], rest[half:])
  images = {path: read(path, args.max_side) for path in order}   # Every photo read first.
  for sub in ("train", "references", "queries"):
    os.makedirs(os.path.join(args.out, sub))
  save = lambda im, *p: im.save(os.path.join(args.out, *p), quality=92)
  bgs = []
  for i, path in enumerate(backgrounds):
    bg = images[path]
    save(bg, "train", f"T{i:06d}.jpg")
    bgs.append((f"T{i:06d}", bg))
  items = [("copy", p) for p in copies] + [("reverse_crop", p) for p in reverse]
  rng.shuffle(items)
  with open(os.path.join(args.out, "ground_truth.csv"), "w", newline="") as g, \
       open(os.path.join(args.out, "queries.csv"), "w", newline="") as q:
    gw, qw = csv.writer(g), csv.writer(q)
    gw.writerow(["query_id", "reference_id"])
    qw.writerow(["query_id", "kind", "reference_id", "detail"])
    for i, (kind, path) in enumerate(items):   # Query i's photo gives reference i.
      im = images[path]
      if kind == "copy":
        ref, (query, detail) = im, make_copy(rng, im, bgs)
      else:
        ref, query, detail = make_reverse_crop(rng, im)
      qid, rid = f"Q{i:05d}", f"R{i:06d}"
      save(ref, "references", rid + ".jpg")
      save(query, "queries", qid + ".jpg")
      gw.writerow([qid, rid if kind == "copy" else ""])
      qw.writerow([qid, "copy" if kind == "copy" else "hard_negative/reverse_crop", rid,
                   f"{os.path.relpath(path, args.photos)}: " + "; ".join(detail)])
  print(f"{args.out}: {len(copies)} copies, {len(reverse)} reverse crops, "
        f"{len(bgs)} background photos in train/")


if __name__ == "__main__":
  arguments = parse()
  try:
    build(arguments)
  except KeyboardInterrupt:
    left = (f"{arguments.out} is incomplete: delete it and run again"
            if os.path.exists(arguments.out) else "nothing was written")
    print(f"augly_gate_set: interrupted; {left} (the photos were only read).", file=sys.stderr)
    sys.exit(130)
