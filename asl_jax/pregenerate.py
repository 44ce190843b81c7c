"""Training views made once, offline, as BoT and D²LV train (method.md §3.3).

  python -m asl_jax.pregenerate --config configs/asl.py:ndec --out /data/ndec_views

For every training identity of the config (after `data.train_every`) this
writes `--views` views (20 in BoT): view 0 the original resized, views 1..V-1
a crop and the config's copy-edit chain (`input_pipeline.make_views`), as
JPEGs with their information amounts, one record per identity, into
ArrayRecord shards under --out, on every core. Training reads them with
`--config.data.views_dir=/data/ndec_views`: per identity K of the V views at
random, then BoT's online transform (flip, pad by 10/256 of the side, random
crop). A view then costs a JPEG decode instead of the whole edit chain
(README: "The input pipeline feeding that recipe"), and the views of an
identity are a fixed set, as in the paper's training.

Each shard is written under a temporary name and renamed when complete, so
rerunning an interrupted command continues where it stopped. A directory
that holds views made with other settings is refused, never overwritten.
Views depend only on (--seed, identity): any number of workers, or hosts
(--part i/n each writing every n-th shard into a shared directory), gives the
same files.
"""

import dataclasses
import functools
import io
import json
import math
import multiprocessing
import os
import sys
import time

import grain
import numpy as np
from PIL import Image

from asl_jax import data, input_pipeline
from asl_jax.errors import CorruptImageError, UserError

FORMAT = "asl_jax views 1"
META = "views.json"
_MAGIC = b"ASLV1\0"


# ------------------------------------------------------------------ records --
def pack(label: int, amounts: np.ndarray, jpegs: list[bytes]) -> bytes:
  """One identity's record: label, V information amounts, V JPEGs."""
  head = np.array([label, len(jpegs)], np.int64).tobytes()
  lengths = np.array([len(j) for j in jpegs], np.int64).tobytes()
  return b"".join([_MAGIC, head, np.asarray(amounts, np.float32).tobytes(), lengths, *jpegs])


def unpack(blob: bytes) -> tuple[int, np.ndarray, list[bytes]]:
  if not blob.startswith(_MAGIC):
    raise ValueError("Not a record of asl_jax.pregenerate (bad magic bytes).")
  o = len(_MAGIC)
  label, v = (int(x) for x in np.frombuffer(blob, np.int64, 2, o))
  o += 16
  amounts = np.frombuffer(blob, np.float32, v, o).copy()
  o += 4 * v
  lengths = np.frombuffer(blob, np.int64, v, o)
  o += 8 * v
  jpegs = []
  for n in lengths:
    jpegs.append(bytes(blob[o:o + n]))
    o += int(n)
  return label, amounts, jpegs


def shard_name(index: int, count: int) -> str:
  return f"views.array_record-{index:05d}-of-{count:05d}"


def _jpeg(view: np.ndarray, quality: int) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(view).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


# --------------------------------------------------------------- generating --
def settings(cfg, num_identities: int, views: int, seed: int, quality: int,
             shards: int) -> dict:
  """What the views depend on; stored in views.json and compared on reuse."""
  params = cfg.get("edit_params") or {}
  return {
      "format": FORMAT, "dataset": cfg.name, "train_every": cfg.get("train_every", 1),
      "identities": num_identities, "views": views, "image_size": cfg.image_size,
      "seed": seed, "jpeg_quality": quality, "shards": shards,
      "crop_area": list(cfg.crop_area),
      "train_edits": {k: float(v) for k, v in sorted(cfg.train_edits.items())},
      "edit_params": json.loads(json.dumps({k: dict(v) for k, v in params.items()})),
      "paste_backgrounds": cfg.get("paste_backgrounds", "train")}


def _write_shard(index: int, *, source, spec, backgrounds, seed: int, quality: int,
                 out_dir: str, count: int) -> int:
  """Writes shard `index` of `count` (identities split evenly, in order)."""
  from array_record.python import array_record_module  # noqa: PLC0415
  start, stop = (len(source) * index // count, len(source) * (index + 1) // count)
  final = os.path.join(out_dir, shard_name(index, count))
  tmp = final + ".incomplete"
  writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
  for label in range(start, stop):
    record = source[label]
    rng = np.random.default_rng([seed, label])
    views, amounts = input_pipeline.make_views(
        data.decode_pil(record["image"], record), rng, spec,
        input_pipeline.background_fn(backgrounds, label))
    writer.write(pack(label, amounts, [_jpeg(v, quality) for v in views]))
  writer.close()
  os.replace(tmp, final)
  return stop - start


def generate(config, out_dir: str, *, views: int = 20, seed: int = 0, quality: int = 95,
             shards: int = 0, workers: int = -1, part: tuple[int, int] = (0, 1),
             log=print) -> dict:
  """Writes the views of `config.data`'s training identities into out_dir.

  Args:
    config: the training config (its data fields make the views).
    out_dir: created if needed; may hold an interrupted run of the same
      settings, which is continued.
    views: views per identity (view 0 the original resized).
    seed: the views of identity i depend only on (seed, i).
    quality: JPEG quality of the stored views.
    shards: ArrayRecord files (0: one per 1,000 identities).
    workers: processes (-1: one per core, 0: this process).
    part: (i, n): write only shards i, i+n, ... (one of n hosts).
  Returns:
    The settings stored in views.json.
  """
  cfg = config.data
  if views < 2:
    raise UserError(f"--views={views}: ASL needs at least 2 views per identity (BoT makes 20).")
  if not 1 <= quality <= 100:
    raise UserError(f"--quality={quality}: a JPEG quality is 1..100.")
  i, n = part
  if not 0 <= i < n:
    raise UserError(f"--part={i}/{n}: give i/n with 0 <= i < n.")
  source = data.train_source(data.prepare(cfg, log=log), cfg)
  count = shards or max(1, math.ceil(len(source) / 1000))
  count = min(count, len(source))
  meta = settings(cfg, len(source), views, seed, quality, count)
  os.makedirs(out_dir, exist_ok=True)
  _check_or_write_meta(out_dir, meta)
  todo = [s for s in range(i, count, n)
          if not os.path.exists(os.path.join(out_dir, shard_name(s, count)))]
  spec = dataclasses.replace(input_pipeline.view_spec(cfg), num_views=views)
  paste = cfg.get("paste_backgrounds", "train")
  backgrounds = input_pipeline.Backgrounds(source) if paste == "train" else None
  task = functools.partial(_write_shard, source=source, spec=spec, backgrounds=backgrounds,
                           seed=seed, quality=quality, out_dir=out_dir, count=count)
  procs = input_pipeline.worker_processes({"num_workers": workers})
  log(f"{len(source)} identities x {views} views of {cfg.image_size} px into {out_dir}: "
      f"{len(todo)} of {count} shards to write (part {i}/{n}), {procs or 1} process(es).")
  t0, done = time.perf_counter(), 0

  def written(results):
    nonlocal done
    for n_ids in results:
      done += n_ids
      log(f"  {done} identities written ({done * views / (time.perf_counter() - t0):.0f} views/s)")

  if procs > 1 and len(todo) > 1:
    with multiprocessing.get_context("spawn").Pool(min(procs, len(todo))) as pool:
      written(pool.imap_unordered(task, todo))
  else:
    written(map(task, todo))
  return meta


def _check_or_write_meta(out_dir: str, meta: dict):
  path = os.path.join(out_dir, META)
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    diff = [f"{k}: {old.get(k)!r} there, {meta.get(k)!r} now"
            for k in sorted(set(old) | set(meta)) if old.get(k) != meta.get(k)]
    if diff:
      raise UserError(f"{out_dir} holds views made with other settings ({'; '.join(diff)}). "
                      "Choose another --out, or delete that directory to replace them; "
                      "nothing there was changed.")
    return
  tmp = path + ".incomplete"
  with open(tmp, "w") as f:
    json.dump(meta, f, indent=1)
  os.replace(tmp, path)


# ------------------------------------------------------------------ reading --
def open_views(views_dir: str, cfg, num_identities: int):
  """The random-access source of a finished views directory, checked
  against the training config; (source, settings)."""
  path = os.path.join(views_dir, META)
  if not os.path.exists(path):
    raise UserError(f"data.views_dir={views_dir!r} has no {META}: make the views first with "
                    "python -m asl_jax.pregenerate --config <the same config> --out "
                    f"{views_dir}.")
  with open(path) as f:
    meta = json.load(f)
  now = settings(cfg, num_identities, meta.get("views"), meta.get("seed"),
                 meta.get("jpeg_quality"), meta.get("shards"))
  # The edits too: a changed chain must not be trained on silently with old views.
  keys = ("format", "dataset", "identities", "image_size", "train_every", "crop_area",
          "train_edits", "edit_params", "paste_backgrounds")
  diff = [f"{k}: {meta.get(k)!r} there, {now[k]!r} in the config" for k in keys
          if meta.get(k) != now[k]]
  if diff:
    raise UserError(f"The views in {views_dir} do not fit this config ({'; '.join(diff)}). "
                    "Make views for it with python -m asl_jax.pregenerate and the same config.")
  if meta["views"] < cfg.views_per_id:
    raise UserError(f"The views in {views_dir} hold {meta['views']} views per identity, fewer "
                    f"than data.views_per_id={cfg.views_per_id}.")
  files = [os.path.join(views_dir, shard_name(s, meta["shards"])) for s in range(meta["shards"])]
  missing = [os.path.basename(f) for f in files if not os.path.exists(f)]
  if missing:
    raise UserError(f"{views_dir} lacks {len(missing)} of its {meta['shards']} shards (first: "
                    f"{missing[0]}): its generation did not finish. Rerun the same "
                    "python -m asl_jax.pregenerate command to complete it.")
  source = grain.sources.ArrayRecordDataSource(files)
  if len(source) != num_identities:
    raise UserError(f"{views_dir} holds {len(source)} records for {num_identities} identities; "
                    "make the views again.")
  return source, meta


class PregeneratedViews(grain.transforms.RandomMap):
  """One identity's record -> K of its V views, each flipped (p 0.5),
  padded by 10/256 of the side and randomly cropped (BoT's online
  transform); labels are the record's."""

  def __init__(self, num_views: int, image_size: int):
    self.k, self.size = num_views, image_size
    self.pad = max(1, round(image_size * 10 / 256))

  def view(self, jpeg: bytes, rng: np.random.Generator) -> np.ndarray:
    s, p = self.size, self.pad
    try:
      image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    except Exception as e:
      raise CorruptImageError(
          f"A pre-generated view could not be decoded ({e}): the views directory is damaged. "
          "Make the views again with python -m asl_jax.pregenerate into a new --out.") from None
    if image.size != (s, s):
      image = image.resize((s, s), Image.BILINEAR)
    a = np.asarray(image)
    if rng.random() < 0.5:
      a = a[:, ::-1]
    padded = np.zeros((s + 2 * p, s + 2 * p, 3), np.uint8)
    padded[p:p + s, p:p + s] = a
    y, x = rng.integers(0, 2 * p + 1, 2)
    return padded[y:y + s, x:x + s]

  def random_map(self, blob, rng):
    label, amounts, jpegs = unpack(blob)
    pick = rng.choice(len(jpegs), self.k, replace=False)
    return {"views": np.stack([self.view(jpegs[j], rng) for j in pick]),
            "information_amount": amounts[pick], "label": np.int32(label)}


# ---------------------------------------------------------------------- CLI --
def _cli():
  from absl import app, flags  # noqa: PLC0415

  from asl_jax import main as asl_main  # noqa: PLC0415
  config = asl_main._CONFIG  # --config, with main's checks of --config.x.y overrides.
  out = flags.DEFINE_string("out", None, "Directory for views.json and the shards.")
  views = flags.DEFINE_integer("views", 20, "Views per identity (BoT: 20, view 0 the original).")
  seed = flags.DEFINE_integer("seed", 0, "The views of identity i depend only on (seed, i).")
  quality = flags.DEFINE_integer("quality", 95, "JPEG quality of the stored views.")
  shards = flags.DEFINE_integer("shards", 0, "ArrayRecord files (0: one per 1,000 identities).")
  workers = flags.DEFINE_integer("workers", -1, "Processes (-1: one per core, 0: this one).")
  part = flags.DEFINE_string("part", "0/1", "i/n: write shards i, i+n, ... (one of n hosts).")
  flags.mark_flags_as_required(["config", "out"])

  def main(argv):
    del argv
    try:
      try:
        i, n = (int(x) for x in part.value.split("/"))
      except ValueError:
        raise UserError(f"--part={part.value!r}: give i/n, e.g. 0/4.") from None
      generate(config.value, out.value, views=views.value, seed=seed.value,
               quality=quality.value, shards=shards.value, workers=workers.value, part=(i, n))
    except UserError as e:
      print(f"asl_jax.pregenerate: error: {e}", file=sys.stderr)
      sys.exit(2)

  asl_main.check_overrides(sys.argv[1:])
  app.run(main)


if __name__ == "__main__":
  _cli()
