"""Embedding images as a run's evaluation does: each image decoded and
resized (square, or its short side to the embedding size), the model in
inference mode, the L2-normalised descriptor (optionally averaged with the
mirror image's) and the gate feature's norm. Used by the evaluation
(`icd.py`), by `inference.py` (embed, find, export) and by the benchmarks.
"""

import collections
import io
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from asl_jax import copy_edits, data, sharding
from asl_jax.models import resnet


def embedding_size(config) -> int:
  """The side images are embedded at: eval.image_size, else (0)
  data.image_size, the training side."""
  return int(config.eval.image_size or config.data.image_size)


class _LoadForEval(grain.transforms.Map):
  """Record index (or -1 for padding) -> uint8 image resized to `shape` (h, w)."""

  def __init__(self, source, shape):
    self.source, self.shape = source, tuple(shape)

  def map(self, index):
    if index < 0:
      return np.zeros(self.shape + (3,), np.uint8)
    record = self.source[int(index)]
    # The JPEG decoder may scale by 1/2, 1/4 or 1/8 while both sides stay at
    # least the embedding size: the same resize, a fraction of the decoding.
    image = np.asarray(data.decode_pil(record["image"], record, min_size=max(self.shape)))
    return copy_edits.resize(image, self.shape)


RESIZE_MODES = ("square", "short_side")
SHAPE_MULTIPLE = 32  # short_side: the long side is rounded to a multiple of this.


def eval_shape(height: int, width: int, size: int, resize: str = "square") -> tuple[int, int]:
  """The (height, width) an image of that size is embedded at: `size` x `size`
  (square), or its short side `size` and its long side scaled with it and
  rounded to a multiple of 32 (short_side, as SSCD's evaluation resizes
  the short side; the rounding keeps the number of shapes, and so of
  compilations, small)."""
  if resize == "square":
    return size, size
  scale = size / min(height, width)
  long = max(SHAPE_MULTIPLE, int(round(max(height, width) * scale / SHAPE_MULTIPLE))
             * SHAPE_MULTIPLE)
  return (size, long) if height <= width else (long, size)


def _stored_size(record) -> tuple[int, int]:
  """(height, width) of a record's image from its header (nothing decoded)."""
  with Image.open(io.BytesIO(record["image"])) as im:
    return im.height, im.width


def shape_groups(source, size: int, resize: str) -> dict[tuple[int, int], np.ndarray]:
  """Embedding shape -> the record indices embedded at it."""
  n = len(source)
  if resize == "square":
    return {(size, size): np.arange(n)}
  groups = collections.defaultdict(list)
  for i in range(n):
    groups[eval_shape(*_stored_size(source[i]), size, resize)].append(i)
  return {k: np.asarray(v) for k, v in sorted(groups.items())}


def _plan(n: int, batch: int, process: int, processes: int) -> np.ndarray:
  """Record indices this process loads, batch by batch (-1 pads)."""
  per = batch // processes
  chunks = []
  for start in range(0, n, batch):
    idx = np.arange(start + process * per, start + (process + 1) * per)
    chunks.append(np.where(idx < min(start + batch, n), idx, -1))
  return np.concatenate(chunks) if chunks else np.zeros(0, np.int64)


def outputs(apply, images, eval_config=None):
  """(unit descriptors, gate norms) of a batch, `apply` being the model in
  inference mode on uint8 images. With `eval_config` (a run's config.eval;
  None: neither): flip_average, the descriptor is the mean of the image's and
  its mirror image's unit descriptors (test-time augmentation: horizontal
  flips are a common copy edit); gate_flip_average, the gate norm is the
  geometric mean of theirs, else the image's own."""
  flip_average = bool(eval_config and eval_config.flip_average)
  gate_flip_average = bool(eval_config and eval_config.gate_flip_average)
  unit = lambda d: d / jnp.maximum(jnp.linalg.norm(d, axis=-1, keepdims=True), 1e-12)
  aux = apply(images)
  d, g = unit(aux["descriptor"]), jnp.linalg.norm(aux["gate_feature"], axis=-1)
  if flip_average or gate_flip_average:
    mirror = apply(images[:, :, ::-1])
    if flip_average:
      d = unit(d + unit(mirror["descriptor"]))
    if gate_flip_average:
      g = jnp.sqrt(g * jnp.linalg.norm(mirror["gate_feature"], axis=-1))
  return d, g


def make_embed_fn(model, mesh, eval_config=None):
  """The jitted (params, batch_stats, images) -> `outputs` (with
  `eval_config`'s flip averaging), sharded over `mesh`."""
  def embed(params, batch_stats, images):
    apply = lambda x: model.apply({"params": params, "batch_stats": batch_stats},
                                  resnet.images_to_input(x), train=False)
    return outputs(apply, images, eval_config)
  return jax.jit(embed, in_shardings=(None, None, sharding.data_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


def eval_workers(num_workers: int) -> int:
  """Worker processes of `eval.num_workers`: n >= 0 as given (0: threads in
  this process); -1: one per core this process may use on an accelerator host,
  none on a CPU-only one (its cores run the model)."""
  if num_workers != -1:
    return num_workers
  if jax.default_backend() == "cpu":
    return 0
  return data.worker_processes(-1)


def embed_split(embed_fn, state, source, image_size, batch_size, mesh,
                name="", log=print, num_threads=4, num_workers=0, timing=None,
                resize="square"):
  """(descriptors [n, d], gate norms [n]) for every record of a split, in
  record order, embedded at `eval_shape`'s shape (images of one shape batched
  together). num_workers > 0: decoding and resizing in that many Grain
  worker processes (the JPEG decoder and PIL's resize hold the GIL for part of
  their work, so threads alone stay well short of the accelerator's rate),
  each with `num_threads` reader threads; 0: `num_threads` threads here.
  timing: a dict given here gets "first_batch_s" (worker start-up included)."""
  n = len(source)
  desc, norms, done, t0 = None, None, 0, time.time()
  groups = shape_groups(source, image_size, resize)
  for shape, indices in groups.items():
    d, g = _embed_indices(embed_fn, state, source, indices, shape, batch_size, mesh,
                          num_threads, num_workers, timing if done == 0 else None)
    if desc is None:
      desc, norms = np.zeros((n, d.shape[1]), d.dtype), np.zeros(n, g.dtype)
    desc[indices], norms[indices] = d, g
    done += len(indices)
    log(f"  embedded {name} {done}/{n} ({done / (time.time() - t0):.0f} images/s"
        + (f"; {len(indices)} at {shape[0]}x{shape[1]}" if len(groups) > 1 else "") + ")")
  if desc is None:
    raise ValueError(f"the {name} split is empty")
  return desc, norms


def _embed_indices(embed_fn, state, source, indices, shape, batch_size, mesh, num_threads,
                   num_workers=0, timing=None):
  """(descriptors, gate norms) of the records `indices`, all resized to `shape`."""
  n = len(indices)
  processes = jax.process_count()
  devices = jax.device_count()
  # Whole device multiples, and no bigger than the group needs (a small group
  # would otherwise be padded up to a full evaluation batch) rounded up to a
  # power of two, so that groups of one shape in both splits share a program.
  need = 1 << max(int(np.ceil(np.log2(max(-(-n // devices), 1)))), 0)
  batch_size = max(min(batch_size, need * devices) // devices, 1) * devices
  plan = _plan(n, batch_size, jax.process_index(), processes)
  plan = np.where(plan >= 0, indices[np.maximum(plan, 0)], -1)
  ds = grain.MapDataset.source(plan).map(_LoadForEval(source, shape))
  ds = ds.batch(batch_size // processes).to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4))
  if num_workers > 0 and len(plan):
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=min(num_workers, -(-len(plan) // (batch_size // processes))),
        per_worker_buffer_size=2))
  desc, norms, t0 = [], [], time.time()
  for images in ds:
    d, g = embed_fn(state.params["model"], state.batch_stats,
                    sharding.global_batch(images, mesh))
    desc.append(np.asarray(d))
    norms.append(np.asarray(g))
    if timing is not None and len(desc) == 1:
      timing["first_batch_s"] = time.time() - t0
  if hasattr(ds, "close"):
    ds.close()
  return np.concatenate(desc)[:n], np.concatenate(norms)[:n]
