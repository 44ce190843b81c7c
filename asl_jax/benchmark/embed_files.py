"""The embed_files workload of `python -m asl_jax.benchmark`: evaluation
embedding from JPEG files, end to end through the evaluation's own code
(`evaluation/embedding.embed_split`: Grain reading, decoding and resizing, in 0 or
W worker processes, then the jitted embedding), on N photo-like JPEGs written
in parallel into a temporary folder first. The record source reads each file's
bytes on access (a prepared dataset reads the same bytes from ArrayRecord)."""

import os
import tempfile
import time

import numpy as np


def _write_one(args):
  """Writes one photo-like JPEG (smooth gradients, shapes, noise) of w x h."""
  path, seed, w, h = args
  from PIL import Image, ImageDraw
  rs = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  base = rs.uniform(0, 255, 3) + rs.uniform(-0.2, 0.2, 3) * x[..., None] \
      + rs.uniform(-0.2, 0.2, 3) * y[..., None]
  img = Image.fromarray((base + rs.normal(0, 8, (h, w, 3))).clip(0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(img)
  for _ in range(12):
    x0, y0 = rs.integers(0, w), rs.integers(0, h)
    draw.ellipse([x0, y0, x0 + rs.integers(10, w // 2), y0 + rs.integers(10, h // 2)],
                 fill=tuple(int(v) for v in rs.integers(0, 256, 3)))
  img.save(path, "JPEG", quality=90)


def write_jpegs(folder: str, n: int, size=(640, 480), workers: int | None = None) -> list:
  """n JPEGs of size (w, h) in folder (written by `workers` processes)."""
  import multiprocessing
  paths = [os.path.join(folder, f"{i:07d}.jpg") for i in range(n)]
  with multiprocessing.get_context("spawn").Pool(workers or os.cpu_count()) as pool:
    pool.map(_write_one, [(p, i, *size) for i, p in enumerate(paths)], chunksize=64)
  return paths


class JpegFiles:
  """Random-access records {"image": bytes, "id", "filename"} of JPEG files."""

  def __init__(self, paths):
    self.paths = list(paths)

  def __len__(self):
    return len(self.paths)

  def __getitem__(self, i):
    with open(self.paths[i], "rb") as f:
      return {"image": f.read(), "id": os.path.basename(self.paths[i]),
              "filename": self.paths[i]}


def bench_embed_files(config, num_images: int, workers_list, size=(640, 480),
                      log=lambda _: None):
  """Rows of images/s for each worker count; the 0-worker row on at most 2,048
  images (it is the slow baseline)."""
  import jax
  from asl_jax import sharding, train
  from asl_jax.evaluation import embedding
  mesh = sharding.make_mesh()
  model, _ = train.build_modules(config, 1)
  state = train.init_state(model, None, train.make_optimizer(config.optim, 10)[0], config,
                           jax.random.key(0), mesh)
  embed = embedding.make_embed_fn(model, mesh, config.eval)
  image_size = embedding.embedding_size(config)
  rows = []
  with tempfile.TemporaryDirectory(prefix="asl_embed_files_") as folder:
    t0 = time.perf_counter()
    paths = write_jpegs(folder, num_images, size)
    log(f"embed_files: wrote {num_images} JPEGs of {size[0]}x{size[1]} in "
        f"{time.perf_counter() - t0:.1f} s")
    mb = sum(os.path.getsize(p) for p in paths[:100]) / min(100, len(paths)) / 1e6
    warm = JpegFiles(paths[:config.eval.batch_size])
    embedding.embed_split(embed, state, warm, image_size, config.eval.batch_size, mesh,
                          log=lambda _: None)  # Compiles the embedding.
    reference = None
    for w in workers_list:
      w = embedding.eval_workers(w) if w == -1 and jax.default_backend() != "cpu" else (
          w if w >= 0 else (os.cpu_count() or 1))
      n = num_images if w else min(num_images, 2048)
      timing = {}
      t0 = time.perf_counter()
      desc, _ = embedding.embed_split(embed, state, JpegFiles(paths[:n]), image_size,
                                      config.eval.batch_size, mesh, log=lambda _: None,
                                      num_threads=2 if w else 4, num_workers=w, timing=timing)
      seconds = time.perf_counter() - t0
      assert desc.shape[0] == n
      first = timing["first_batch_s"]
      batch = min(config.eval.batch_size, n)
      same = reference is None or bool(np.allclose(desc[:len(reference)], reference, atol=1e-5))
      reference = desc if reference is None else reference
      rows.append({"workload": "embed_files", "framework": "asl_jax", "workers": w,
                   "images": n, "image_size": image_size, "jpeg_size": list(size),
                   "jpeg_mb": mb, "batch": config.eval.batch_size, "seconds": seconds,
                   "images_per_s": n / seconds, "first_batch_s": first,
                   # After the first batch (worker start-up): the rate 1M references see.
                   "steady_images_per_s": (n - batch) / max(seconds - first, 1e-9)
                   if n > batch else None,
                   "same_descriptors_as_first_row": same})
      log(f"embed_files: {w} workers, {n / seconds:.0f} images/s end to end, "
          f"{rows[-1]['steady_images_per_s'] or 0:.0f} after the first batch")
  return rows
