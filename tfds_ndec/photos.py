"""A copy-detection benchmark made from a folder of photos, NDEC-style.

  python -m tfds_ndec.photos --photos ~/my_photos --out ~/my_bench --seed 0
  python -m asl_jax.main --config configs/asl.py --config.data.name=folder/my_bench \
      --config.data.manual_dir=~/my_bench

What `ndec/synthetic` does with procedural scenes, done with the user's
photos: it writes a set in the DISC21 layout (tfds_ndec/folder.py), which
then loads as `folder/<name>`:
* `train/`: a share of the photos, never used on the evaluation side;
* `references/` and `queries/` from the other photos, each photo in one role:
  - copy: the reference is the photo, the query an edit of it by the
    ISC/DISC21 edit list (`synthetic.QUERY_EDITS`; pastes go onto training
    photos), recorded with its edits and information amount;
  - reverse_crop (hard negative): the reference is a crop of the photo (40-70%
    of its area), the query the whole photo or a larger crop holding it;
  - shifted_view (hard negative): the reference and the query are two
    overlapping crops of the photo, neither holding the other;
  - distractor: the query is a photo with no reference;
  - the remaining photos are references no query copies;
* `ground_truth.csv` and `queries.csv` (kind, reference_id, detail, information
  amount).

Deterministic for a seed and the folder's content. Photos of any size and
format PIL reads are scaled to at most `--max_side`; unreadable files stop the
run with their path, or are skipped and listed with `--skip_bad_images`.
"""

import csv
import os
import sys

import numpy as np
from PIL import Image

from asl_jax import cli, copy_edits, pil_image
from asl_jax import paths as output_paths
from asl_jax.errors import UserError
from tfds_ndec import manual, synthetic

ROLES = ("copy", "reverse_crop", "shifted_view", "distractor", "reference_only")
MIN_SIDE = 128
_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def list_photos(folder: str) -> list[str]:
  """Image files under `folder` (recursively), in sorted order."""
  if not os.path.isdir(folder):
    raise manual.NdecInputError(f"--photos {folder} is not a folder.")
  out = []
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    out += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(_EXTENSIONS)]
  return out


def read_photo(path: str, max_side: int) -> Image.Image:
  """An RGB photo scaled to at most `max_side`; BadImageError names the file."""
  try:
    with Image.open(path) as im:
      im.draft("RGB", (max_side, max_side))
      im = pil_image.to_rgb(im)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise manual.BadImageError(f"{path}: {type(e).__name__}: {e}") from None
  scale = max_side / max(im.size)
  if scale < 1:
    im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                   Image.Resampling.LANCZOS)
  return im


def _box(width, height, rng, area, aspect=(0.75, 1.33)):
  """A random crop box (x0, y0, x1, y1) of `area` (a range) of the image."""
  a = rng.uniform(*area) * width * height
  r = np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1])))
  w = int(min(width, max(8, round(np.sqrt(a * r)))))
  h = int(min(height, max(8, round(a / w))))
  x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
  return x0, y0, x0 + w, y0 + h


def _mild(image: Image.Image, rng) -> tuple[Image.Image, str]:
  """Half of the time one edit that removes nothing (flip, colour, JPEG)."""
  if rng.random() < 0.5:
    return image, "unedited"
  which = rng.choice(["hflip", "color_jitter", "jpeg"])
  if which == "hflip":
    return copy_edits.hflip(image), "hflip"
  if which == "color_jitter":
    return copy_edits.color_jitter(image, rng, strength=(0.15, 0.15, 0.15, 0.0)), "color_jitter"
  return copy_edits.jpeg(image, rng, quality=(50, 85)), "jpeg"


def reverse_crop(photo: Image.Image, rng) -> tuple[Image.Image, Image.Image, str]:
  """(reference, query, detail): the reference a crop of 40-70% of the photo,
  the query the whole photo or a larger crop holding the reference."""
  w, h = photo.size
  x0, y0, x1, y1 = _box(w, h, rng, (0.4, 0.7))
  reference = photo.crop((x0, y0, x1, y1))
  if rng.random() < 0.5:
    return reference, photo, "whole photo"
  grow = rng.uniform(0.3, 1.0)  # Of the margin on each side, independently.
  box = (int(x0 * (1 - grow * rng.random())), int(y0 * (1 - grow * rng.random())),
         int(x1 + (w - x1) * grow * rng.random()), int(y1 + (h - y1) * grow * rng.random()))
  box = (min(box[0], x0), min(box[1], y0), max(box[2], x1), max(box[3], y1))
  if (box[2] - box[0]) * (box[3] - box[1]) < 1.2 * (x1 - x0) * (y1 - y0):
    box = (0, 0, w, h)
  return reference, photo.crop(box), f"larger crop {box}"


def shifted_view(photo: Image.Image, rng) -> tuple[Image.Image, Image.Image, str]:
  """(reference, query, detail): two crops of 45-65% of the photo's width and
  height, the second shifted by 25-45% of the crop along x or y, so that
  they overlap and neither holds the other."""
  w, h = photo.size
  cw, ch = int(w * rng.uniform(0.45, 0.65)), int(h * rng.uniform(0.45, 0.65))
  horizontal = rng.random() < 0.5
  shift = int((cw if horizontal else ch) * rng.uniform(0.25, 0.45))
  span_x = w - cw - (shift if horizontal else 0)
  span_y = h - ch - (0 if horizontal else shift)
  x0, y0 = int(rng.integers(0, span_x + 1)), int(rng.integers(0, span_y + 1))
  a = (x0, y0, x0 + cw, y0 + ch)
  b = (x0 + shift, y0, x0 + shift + cw, y0 + ch) if horizontal else (
      x0, y0 + shift, x0 + cw, y0 + shift + ch)
  if rng.random() < 0.5:
    a, b = b, a
  return photo.crop(a), photo.crop(b), f"crops {a} and {b}"


def plan_roles(n: int, rng, train_fraction: float) -> list[str]:
  """A role for each of n photos ('train' or one of ROLES)."""
  n_train = int(round(n * train_fraction))
  rest = n - n_train
  shares = {"copy": 0.35, "reverse_crop": 0.2, "shifted_view": 0.15, "distractor": 0.15}
  counts = {k: int(rest * v) for k, v in shares.items()}
  counts["reference_only"] = rest - sum(counts.values())
  roles = ["train"] * n_train + [r for r in ROLES for _ in range(counts[r])]
  return [roles[i] for i in rng.permutation(n)]


def generate(photos_dir: str, out_dir: str, *, seed: int = 0, max_side: int = 512,
             train_fraction: float = 0.4, min_photos: int = 20, skip_bad_images: bool = False,
             log=print) -> dict:
  """Writes the benchmark; returns the counts per role and the skipped files."""
  _check_out(out_dir)
  paths = list_photos(photos_dir)
  photos, skipped, small = [], [], []
  for p in paths:
    try:
      im = read_photo(p, max_side)
    except manual.BadImageError as e:
      if not skip_bad_images:
        raise manual.BadImageError(
            f"{e}. Remove or replace the file, or pass --skip_bad_images to leave unreadable "
            "files out (they are listed); nothing was written.") from None
      skipped.append(p)
      continue
    if min(im.size) < MIN_SIDE:
      small.append(p)
      continue
    photos.append((os.path.relpath(p, photos_dir), im))
  if len(photos) < min_photos:
    raise manual.NdecInputError(
        f"{photos_dir} has {len(photos)} usable photos ({len(paths)} image files, "
        f"{len(small)} with a side under {MIN_SIDE} px, {len(skipped)} unreadable); a "
        f"benchmark needs at least {min_photos}. Add photos, or lower --min_photos.")
  _check_out(out_dir)  # Again: it may have been filled while the photos were read.
  rng = np.random.default_rng([seed, 0x9407])
  roles = plan_roles(len(photos), rng, train_fraction)
  train = [im for (_, im), role in zip(photos, roles, strict=True) if role == "train"]
  if not train:
    raise manual.NdecInputError("--train_fraction leaves no training photo to paste copies "
                                "onto; raise it.")

  def background(r, min_size):
    return train[int(r.integers(len(train)))]

  refs, queries = [], []  # (image, source), (image, kind, ref index, detail, amount, source)
  for (source, im), role in zip(photos, roles, strict=True):
    r = np.random.default_rng([seed, 0x9408, len(refs), len(queries)])
    if role == "copy":
      edited = copy_edits.copy_edit_chain(im, r, synthetic.QUERY_EDITS,
                                          background_fn=background, min_edits=1)
      refs.append((im, source))
      queries.append((edited.image, "copy", len(refs) - 1, "+".join(edited.edits),
                      edited.information_amount, source))
    elif role in ("reverse_crop", "shifted_view"):
      make = reverse_crop if role == "reverse_crop" else shifted_view
      reference, query, detail = make(im, r)
      query, edit = _mild(query, r)
      refs.append((reference, source))
      queries.append((query, f"hard_negative/{role}", len(refs) - 1, f"{detail}, {edit}",
                      1.0, source))
    elif role == "distractor":
      query, edit = _mild(im, r)
      queries.append((query, "distractor", -1, edit, 1.0, source))
    elif role == "reference_only":
      refs.append((im, source))
  _write(out_dir, train, refs, queries, rng)
  counts = {role: roles.count(role) for role in ("train", *ROLES)}
  log(f"Wrote {out_dir}: {len(train)} training photos, {len(refs)} references, "
      f"{len(queries)} queries ({counts}); skipped {len(skipped)} unreadable and "
      f"{len(small)} small files")
  return {"counts": counts, "skipped": skipped, "too_small": small}


def _check_out(out_dir: str):
  """--out must be a new or empty folder that can be written, before any work."""
  try:
    output_paths.output_dir(out_dir, "--out", "the benchmark")
  except UserError as e:
    raise manual.NdecInputError(str(e)) from None
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise manual.NdecInputError(f"--out {out_dir} exists and is not empty; give a new folder "
                                "(nothing there was changed).")


def _write(out_dir, train, refs, queries, rng):
  """The DISC21 layout: ids in shuffled order so that roles are not in the ids."""
  os.makedirs(out_dir, exist_ok=True)
  for folder in ("train", "references", "queries"):
    os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
  for i, im in enumerate(train):
    im.save(os.path.join(out_dir, "train", f"T{i:06d}.jpg"), quality=92)
  ref_ids = [f"R{j:06d}" for j in rng.permutation(len(refs))]
  for (im, _), rid in zip(refs, ref_ids, strict=True):
    im.save(os.path.join(out_dir, "references", rid + ".jpg"), quality=92)
  order = rng.permutation(len(queries))
  with open(os.path.join(out_dir, "ground_truth.csv"), "w", newline="") as gt, \
       open(os.path.join(out_dir, "queries.csv"), "w", newline="") as kinds:
    g, k = csv.writer(gt, lineterminator="\n"), csv.writer(kinds, lineterminator="\n")
    g.writerow(["query_id", "reference_id"])
    k.writerow(["query_id", "kind", "reference_id", "detail", "information_amount", "source"])
    for qpos, qi in enumerate(order):
      im, kind, ref, detail, amount, source = queries[qi]
      qid = f"Q{qpos:05d}"
      copy_edits.to_pil(im).save(os.path.join(out_dir, "queries", qid + ".jpg"), quality=92)
      rid = ref_ids[ref] if ref >= 0 else ""
      g.writerow([qid, rid if kind == "copy" else ""])
      k.writerow([qid, kind, rid, detail, f"{amount:.4f}", source])


def parse(argv=None):
  p = cli.parser("python -m tfds_ndec.photos", __doc__)
  p.add_argument("--photos", required=True, help="Folder of photos (searched recursively).")
  p.add_argument("--out", required=True, help="New folder for the benchmark.")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max_side", type=int, default=512, help="Photos are scaled to at most this.")
  p.add_argument("--train_fraction", type=float, default=0.4)
  p.add_argument("--min_photos", type=int, default=20)
  p.add_argument("--skip_bad_images", action="store_true",
                 help="Leave unreadable files out (listed) instead of stopping.")
  return p.parse_args(argv)


def run(args):
  """Checks the flags, writes the set and lists the files it skipped."""
  if not 0 < args.train_fraction < 1:
    raise manual.NdecInputError(f"--train_fraction={args.train_fraction}: give a share "
                                "between 0 and 1 (0.4 by default).")
  if args.max_side < MIN_SIDE:
    raise manual.NdecInputError(f"--max_side={args.max_side}: give at least {MIN_SIDE}.")
  result = generate(args.photos, args.out, seed=args.seed, max_side=args.max_side,
                    train_fraction=args.train_fraction, min_photos=args.min_photos,
                    skip_bad_images=args.skip_bad_images)
  for path in result["skipped"]:
    print(f"skipped (unreadable): {path}", file=sys.stderr)


def main(argv=None) -> int:
  """Returns the exit status (asl_jax.cli.status: bad input is one paragraph and 2)."""
  return cli.run_command(run, parse, argv)


if __name__ == "__main__":
  cli.exit_process(main())
