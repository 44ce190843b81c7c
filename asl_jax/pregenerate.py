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
(docs/performance.md: "The input pipeline feeding that recipe"), and the views of an
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
import time

import numpy as np
from PIL import Image

from asl_jax import data, input_pipeline, paths
# The format and its reader live in views.py (the pipeline reads them there).
from asl_jax.views import META, pack, settings, shard_name, unpack  # noqa: F401
from asl_jax.errors import UserError

def _jpeg(view: np.ndarray, quality: int) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(view).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


# --------------------------------------------------------------- generating --
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
  paths.output_dir(out_dir, "--out", "the views")
  source = data.train_source(data.prepare(cfg, log=log), cfg)
  count = shards or max(1, math.ceil(len(source) / 1000))
  count = min(count, len(source))
  meta = settings(cfg, len(source), views, seed, quality, count)
  os.makedirs(out_dir, exist_ok=True)
  _check_or_write_meta(out_dir, meta)
  todo = [s for s in range(i, count, n)
          if not os.path.exists(os.path.join(out_dir, shard_name(s, count)))]
  spec = dataclasses.replace(input_pipeline.view_spec(cfg), num_views=views)
  paste = cfg.paste_backgrounds
  backgrounds = input_pipeline.Backgrounds(source) if paste == "train" else None
  task = functools.partial(_write_shard, source=source, spec=spec, backgrounds=backgrounds,
                           seed=seed, quality=quality, out_dir=out_dir, count=count)
  procs = input_pipeline.worker_processes(workers)
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


# ---------------------------------------------------------------------- CLI --
def _cli():
  from absl import flags  # noqa: PLC0415

  from asl_jax import cli  # noqa: PLC0415
  config = cli.define_config_flag()  # --config, checked as main checks it.
  flags.declare_key_flag("config")
  out = flags.DEFINE_string("out", None, "Directory for views.json and the shards.")
  views = flags.DEFINE_integer("views", 20, "Views per identity (BoT: 20, view 0 the original).")
  seed = flags.DEFINE_integer("seed", 0, "The views of identity i depend only on (seed, i).")
  quality = flags.DEFINE_integer("quality", 95, "JPEG quality of the stored views.")
  shards = flags.DEFINE_integer("shards", 0, "ArrayRecord files (0: one per 1,000 identities).")
  workers = flags.DEFINE_integer("workers", -1, "Processes (-1: one per core, 0: this one).")
  part = flags.DEFINE_string("part", "0/1", "i/n: write shards i, i+n, ... (one of n hosts).")

  def main(argv):
    del argv
    try:
      i, n = (int(x) for x in part.value.split("/"))
    except ValueError:
      raise UserError(f"--part={part.value!r}: give i/n, e.g. 0/4.") from None
    generate(config.value, out.value, views=views.value, seed=seed.value,
             quality=quality.value, shards=shards.value, workers=workers.value, part=(i, n))

  cli.run_config_command(main, required=("config", "out"))


if __name__ == "__main__":
  _cli()
