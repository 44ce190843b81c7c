"""Shard-by-shard preparation of the `ndec` dataset: streaming, parallel and
resumable.

Every split is cut into shards planned up front (a list of source items per
shard). A shard is written by one picklable generator object, so the same
plan runs three ways:
* in this process, one shard after another (`num_workers=1`);
* in a pool of local processes (`num_workers>1`), each shard streamed from
  its source files into its own file: memory stays at one example per worker
  whatever the set size;
* on Apache Beam (TFDS's `DownloadConfig(beam_runner=...)`), one Beam task
  per shard, for preparing across machines.

Locally, finished shards are kept in a work folder (under the TFDS download
directory, named by a fingerprint of their content plan) until the whole
dataset is in place, so an interrupted prepare re-run writes only the shards
it had not finished; a shard file appears there only once complete (written
under a temporary name, then renamed), so nothing is duplicated or half-written.
"""

import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import time

import numpy as np

from tfds_ndec import features as features_lib
from tfds_ndec import manual

MAX_SHARD_BYTES = 256 << 20  # Source bytes per shard of real data.
MAX_SHARD_EXAMPLES = 4096
SYNTHETIC_SHARD_EXAMPLES = 256


# ------------------------------------------------------------------ shards --
@dataclasses.dataclass(frozen=True)
class SyntheticShard:
  """Examples [start, stop) of a split of `ndec/synthetic`."""
  split: str
  sizes: object  # synthetic.Sizes
  start: int
  stop: int
  report_path: str = ""

  def fingerprint(self) -> str:
    return _digest(("synthetic", self.split, repr(self.sizes), self.start, self.stop))

  def examples(self, skipped: list):
    del skipped  # Generated images cannot be unreadable.
    from tfds_ndec import synthetic  # Heavy (scenes, copy edits): import late.
    for i in range(self.start, self.stop):
      yield synthetic.make_example((self.split, self.sizes, i))

  def __call__(self):  # TFDS's ExampleGeneratorFn (the Beam route).
    yield from _reporting(self)


@dataclasses.dataclass(frozen=True)
class RealShard:
  """Some images of a split of the real download (`items`: SourceImage for
  train/references, (SourceImage, GroundTruthRow) for queries, Pair for
  train_negative_pairs)."""
  manual_dir: str
  split: str
  items: tuple
  encoding: manual.Encoding
  skip_bad_images: bool = False
  report_path: str = ""

  def fingerprint(self) -> str:
    return _digest(("real", self.split, self.items, self.encoding))

  def examples(self, skipped: list):
    """Yields (key, example); appends unreadable files to `skipped` when
    skipping is on, else raises BadImageError naming the file."""
    for item in self.items:
      try:
        key, example = self._example(item)
      except manual.BadImageError as e:
        if not self.skip_bad_images:
          raise manual.BadImageError(
              f"Cannot read an image of the {self.split} split: {e}. Replace "
              "the file (re-download or re-extract it) and prepare again; or "
              "prepare with skip_bad_images=True (--config.data.skip_bad_images=True "
              "for asl_jax.main, --skip_bad_images for tfds_ndec.prepare) to leave it "
              "out and list it in the "
              "dataset's metadata. Nothing prepared so far is lost.") from None
        skipped.append(str(e))
        continue
      yield key, features_lib.complete(example)

  def _image(self, source: manual.SourceImage) -> dict:
    data = manual.load_image(os.path.join(self.manual_dir, source.path), self.encoding)
    return {"id": source.id, "image": data, "filename": source.path}

  def _example(self, item):
    if self.split == "queries":
      source, row = item
      extra = dict(row.extra)
      kind = extra.get("kind") or ("copy" if row.reference_id else "negative")
      return source.id, {**self._image(source), "reference_id": row.reference_id,
                         "kind": kind,
                         "hard_negative_kind": extra.get("hard_negative_kind", ""),
                         "resembles_id": extra.get("resembles_id", ""),
                         "edits": [e for e in extra.get("edits", "").split("+") if e],
                         "information_amount": np.float32(
                             float(extra.get("information_amount") or 1.0))}
    if self.split == "train_negative_pairs":
      return item.pair_id, {**self._image(item.first), "pair_id": item.pair_id,
                            "partner": self._image(item.second)}
    return item.id, self._image(item)

  def __call__(self):  # TFDS's ExampleGeneratorFn (the Beam route).
    yield from _reporting(self)


def _reporting(shard):
  skipped = []
  yield from shard.examples(skipped)
  if shard.report_path:
    _write_json(shard.report_path, {"skipped": skipped})


def _digest(value) -> str:
  return hashlib.sha1(repr(value).encode()).hexdigest()[:16]


def _write_json(path: str, value):
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f)
  os.replace(tmp, path)


# ---------------------------------------------------------------- planning --
def plan_real(items, size_of, max_bytes=None, max_examples=None) -> list[tuple]:
  """Cuts items into consecutive shards of at most `max_bytes` of source
  files and `max_examples` examples (default: this module's constants)."""
  max_bytes = max_bytes or MAX_SHARD_BYTES
  max_examples = max_examples or MAX_SHARD_EXAMPLES
  shards, current, total = [], [], 0
  for item in items:
    size = size_of(item)
    if current and (total + size > max_bytes or len(current) == max_examples):
      shards.append(tuple(current))
      current, total = [], 0
    current.append(item)
    total += size
  if current:
    shards.append(tuple(current))
  return shards


def plan_synthetic(split: str, sizes, count: int) -> list[SyntheticShard]:
  step = SYNTHETIC_SHARD_EXAMPLES
  return [SyntheticShard(split, sizes, a, min(a + step, count))
          for a in range(0, max(count, 1), step)]


# ----------------------------------------------------------------- writing --
@dataclasses.dataclass(frozen=True)
class Task:
  shard: object
  path: str  # The finished shard in the work folder.
  file_format: str


def _done_report(task: Task) -> dict | None:
  report = task.path + ".json"
  if os.path.exists(task.path) and os.path.exists(report):
    with open(report) as f:
      return json.load(f)
  return None


def write_shard(task: Task) -> dict:
  """Streams one shard into `task.path` (via a temporary name) and writes its
  report beside it; returns the report."""
  from tensorflow_datasets.core import example_serializer
  from tensorflow_datasets.core import writer as writer_lib
  feats = features_lib.features()
  serializer = example_serializer.ExampleSerializer(feats.get_serialized_info())
  skipped, count = [], [0]

  def serialized():
    for key, example in task.shard.examples(skipped):
      count[0] += 1
      yield key, serializer.serialize_example(feats.encode_example(example))

  tmp = f"{task.path}.incomplete{os.getpid()}"
  try:
    writer_lib.ExampleWriter(file_format=task.file_format).write(tmp, serialized())
  except BaseException:
    if os.path.exists(tmp):  # A killed process leaves one, never used: the
      os.remove(tmp)         # work folder goes once the dataset is in place.
    raise
  os.replace(tmp, task.path)
  report = {"num_examples": count[0], "num_bytes": os.path.getsize(task.path),
            "skipped": skipped}
  _write_json(task.path + ".json", report)
  return report


def run_tasks(tasks: list[Task], num_workers: int, log=print) -> list[dict]:
  """Writes the shards not already finished in an earlier run; returns every
  task's report, in task order."""
  reports = [_done_report(t) for t in tasks]
  todo = [i for i, r in enumerate(reports) if r is None]
  if len(todo) < len(tasks):
    log(f"  resuming: {len(tasks) - len(todo)} of {len(tasks)} shards were "
        "finished by an earlier run")
  t0, images, last = time.time(), 0, 0.0

  def progress(i, report, done):
    nonlocal images, last
    reports[i] = report
    images += report["num_examples"]
    now = time.time()
    if now - last > 10 or done == len(todo):
      last = now
      log(f"  {done}/{len(todo)} shards written, {images} examples, "
          f"{images / max(now - t0, 1e-9):.0f} examples/s")

  workers = min(num_workers or multiprocessing.cpu_count(), len(todo))
  if workers <= 1:
    for done, i in enumerate(todo, start=1):
      progress(i, write_shard(tasks[i]), done)
    return reports
  ctx = multiprocessing.get_context("spawn")  # Safe beside JAX's threads.
  with ctx.Pool(workers, maxtasksperchild=64) as pool:
    results = pool.imap_unordered(_indexed_write, [(i, tasks[i]) for i in todo])
    for done, (i, report) in enumerate(results, start=1):
      progress(i, report, done)
  return reports


def _indexed_write(args):
  i, task = args
  return i, write_shard(task)


def place(src: str, dst: str):
  """Puts a finished shard at its final path: a hard link when the work folder
  is on the same file system (no copy, no extra space), else a copy."""
  try:
    os.link(src, dst)
  except OSError:
    shutil.copyfile(src, dst)
