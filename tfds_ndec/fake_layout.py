"""Fake NDEC/DISC21 manual directories, in the layouts real downloads have.

Used by the tests, by `dummy_data/` (the TFDS convention for a builder's own
test), by the preparation benchmark and by the paper recipe's smoke run. The
images are smooth random textures with grain, so their JPEG sizes are like
photos' (about 60-90 kB at 640x480, quality 90), not like flat test patterns.

  python -m tfds_ndec.fake_layout /tmp/ndec_manual --num_train 20000 \
      --width 640 --height 480 --sharded
"""

import dataclasses
import os
import shutil

import numpy as np
from PIL import Image

from asl_jax import cli
from tfds_ndec import manual


@dataclasses.dataclass(frozen=True)
class FakeLayout:
  """What to write. Copies are the first `num_copies` queries (each a crop of
  a reference); the other queries are negatives."""
  num_train: int = 12
  num_references: int = 10
  num_queries: int = 8
  num_copies: int = 4
  num_pairs: int = 3
  num_dev_queries: int = 6
  num_dev_copies: int = 3
  width: int = 64
  height: int = 48
  sharded: bool = False  # train_0../references_0.. instead of train/ references/.
  num_shard_folders: int = 3
  query_ext: str = ".jpg"  # e.g. ".png" or ".jpeg".
  header: bool = True
  bom: bool = False
  crlf: bool = False
  trailing_blank_lines: int = 0
  seed: int = 0


def texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
  """A photo-like RGB image: smooth colour fields plus fine grain."""
  coarse = rng.integers(0, 256, (max(2, height // 24), max(2, width // 24), 3), np.uint8)
  smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC),
                      np.float32)
  smooth += 7 * rng.standard_normal((height, width, 1), dtype=np.float32)
  return np.clip(smooth, 0, 255).astype(np.uint8)


def _save(path: str, image: np.ndarray):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fmt = "PNG" if path.lower().endswith(".png") else "JPEG"
  with open(path, "wb") as f:
    f.write(manual.encode(Image.fromarray(image), fmt, 90))


def _folder(layout: FakeLayout, name: str, index: int) -> str:
  if not layout.sharded:
    return name
  return f"{name}_{index % layout.num_shard_folders}"


def write_csv(path: str, rows: list[tuple[str, str]], layout: FakeLayout):
  end = "\r\n" if layout.crlf else "\n"
  lines = (["query_id,reference_id"] if layout.header else []) + [f"{q},{r}" for q, r in rows]
  text = end.join(lines) + end + end * layout.trailing_blank_lines
  with open(path, "w", encoding="utf-8-sig" if layout.bom else "utf-8", newline="") as f:
    f.write(text)


_TRAIN, _REFERENCE, _QUERY, _PAIR = range(4)


def _rng(layout: FakeLayout, role: int, index: int) -> np.random.Generator:
  return np.random.default_rng([layout.seed, role, index])  # One stream per image.


def _image(layout: FakeLayout, role: int, index: int) -> np.ndarray:
  return texture(_rng(layout, role, index), layout.width, layout.height)


def _write_source(args):
  root, layout, role, index = args
  name, prefix = {_TRAIN: ("train", "T"), _REFERENCE: ("references", "R")}[role]
  _save(os.path.join(root, _folder(layout, name, index), f"{prefix}{index:06d}.jpg"),
        _image(layout, role, index))


def write(root: str, layout: FakeLayout = FakeLayout(), workers: int = 1) -> dict:
  """Writes the fake download under `root` (`workers` processes for the
  training and reference images); returns its ground truth
  {'ndec': [(query, reference or '')], 'dev': [...]}."""
  w, h = layout.width, layout.height
  jobs = [(root, layout, _TRAIN, i) for i in range(layout.num_train)]
  jobs += [(root, layout, _REFERENCE, i) for i in range(layout.num_references)]
  if workers > 1:
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
      for _ in pool.imap_unordered(_write_source, jobs, chunksize=64):
        pass
  else:
    for job in jobs:
      _write_source(job)

  def queries(folder, count, copies, role_offset):
    rows = []
    for j in range(count):
      qid = f"Q{j:05d}"
      rng = _rng(layout, _QUERY, role_offset + j)
      path = os.path.join(root, folder, qid + layout.query_ext)
      if j < copies:
        r = int(rng.integers(layout.num_references))
        crop = _image(layout, _REFERENCE, r)[h // 8: h - h // 8, w // 8: w - w // 8]
        _save(path, crop)
        rows.append((qid, f"R{r:06d}"))
      else:
        _save(path, texture(rng, w, h))
        rows.append((qid, ""))
    return rows

  ndec = queries("query_images_h5", layout.num_queries, layout.num_copies, 0)
  write_csv(os.path.join(root, "public_ground_truth_h5.csv"), ndec, layout)
  dev = queries("dev_queries", layout.num_dev_queries, layout.num_dev_copies, 1 << 20)
  write_csv(os.path.join(root, "dev_ground_truth.csv"), dev, layout)
  for p in range(layout.num_pairs):
    folder = os.path.join(root, "negative_pair", f"{p + 1:05d}")
    base = _image(layout, _PAIR, p)
    _save(os.path.join(folder, f"T{900000 + p:06d}.jpg"), base)
    _save(os.path.join(folder, f"{p + 1:05d}_neg.jpg"), np.flip(base, 1).copy())
  return {"ndec": ndec, "dev": dev}


def write_once(root: str, layout: FakeLayout, workers: int = 1) -> bool:
  """`write`, unless `root` already holds this layout (recorded in
  `<root>.layout.txt`, beside it); returns whether it wrote."""
  stamp = root.rstrip(os.sep) + ".layout.txt"
  if os.path.exists(stamp):
    with open(stamp) as f:
      if f.read() == repr(layout):
        return False
  shutil.rmtree(root, ignore_errors=True)
  write(root, layout, workers)
  with open(stamp, "w") as f:
    f.write(repr(layout))
  return True


def parse(argv=None):
  parser = cli.parser("python -m tfds_ndec.fake_layout", __doc__)
  parser.add_argument("root")
  for f in dataclasses.fields(FakeLayout):
    flag = "--" + f.name
    if f.type is bool or f.type == "bool":
      parser.add_argument(flag, action="store_true")
    else:
      parser.add_argument(flag, type=type(f.default), default=f.default)
  parser.add_argument("--workers", type=int, default=os.cpu_count())
  return parser.parse_args(argv)


def run(args):
  """Writes the fake directory `args` describe."""
  args = dict(vars(args))
  root, workers = args.pop("root"), args.pop("workers")
  write(root, FakeLayout(**args), workers)
  print(f"Wrote a fake NDEC/DISC21 manual directory to {root}")


def main(argv=None) -> int:
  """Returns the exit status (asl_jax.cli.status)."""
  return cli.run_command(run, parse, argv)


if __name__ == "__main__":
  cli.exit_process(main())
