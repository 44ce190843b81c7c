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


def gate_sizes(eval_config) -> tuple[int, ...]:
  """eval.gate_sizes: the square sides whose gate norms are averaged
  (geometric mean), each image resized to them from its decoded original;
  () for the gate norm at the embedding shape alone."""
  return tuple(int(s) for s in (eval_config.get("gate_sizes", ()) if eval_config else ()))


class _LoadForEval(grain.transforms.Map):
  """Record index (or -1 for padding) -> uint8 image resized to `shape` (h, w),
  and with `gate_sizes` a tuple: that image, then the same original resized
  square to each gate size."""

  def __init__(self, source, shape, gate_sizes=()):
    self.source, self.shape, self.gate_sizes = source, tuple(shape), tuple(gate_sizes)

  def map(self, index):
    shapes = [self.shape] + [(s, s) for s in self.gate_sizes]
    if index < 0:
      images = [np.zeros(s + (3,), np.uint8) for s in shapes]
    else:
      record = self.source[int(index)]
      # The JPEG decoder may scale by 1/2, 1/4 or 1/8 while both sides stay at
      # least the largest size wanted: the same resize, a fraction of the decoding.
      image = np.asarray(data.decode_pil(record["image"], record,
                                         min_size=max(max(s) for s in shapes)))
      images = [copy_edits.resize(image, s) for s in shapes]
    return tuple(images) if self.gate_sizes else images[0]


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


def outputs(apply, images, eval_config=None, gate_images=()):
  """(unit descriptors, gate norms) of a batch, `apply` being the model in
  inference mode on uint8 images. With `eval_config` (a run's config.eval;
  None: none of these): flip_average, the descriptor is the mean of the
  image's and its mirror image's unit descriptors (test-time augmentation:
  horizontal flips are a common copy edit); gate_flip_average, each gate
  norm is the geometric mean of the image's and its mirror image's;
  gate_sizes, the gate norm is the geometric mean of those of `gate_images`
  (the same images at each of eval.gate_sizes, `gate_sizes`), else the
  image's own."""
  flip_average = bool(eval_config and eval_config.flip_average)
  gate_flip_average = bool(eval_config and eval_config.gate_flip_average)
  if len(gate_images) != len(gate_sizes(eval_config)):
    raise ValueError(f"{len(gate_images)} gate inputs for eval.gate_sizes "
                     f"{gate_sizes(eval_config)}")
  unit = lambda d: d / jnp.maximum(jnp.linalg.norm(d, axis=-1, keepdims=True), 1e-12)
  norm = lambda aux: jnp.linalg.norm(aux["gate_feature"], axis=-1)

  def gate_norm(x, aux, mirror=None):
    g = norm(aux)
    if gate_flip_average:
      g = jnp.sqrt(g * norm(apply(x[:, :, ::-1]) if mirror is None else mirror))
    return g

  aux = apply(images)
  d = unit(aux["descriptor"])
  # One mirror pass serves both averages (XLA drops whichever output goes unused).
  mirror = apply(images[:, :, ::-1]) if flip_average or (
      gate_flip_average and not gate_images) else None
  if flip_average:
    d = unit(d + unit(mirror["descriptor"]))
  if gate_images:
    logs = [jnp.log(jnp.maximum(gate_norm(x, apply(x)), 1e-30)) for x in gate_images]
    g = jnp.exp(sum(logs) / len(logs))
  else:
    g = gate_norm(images, aux, mirror)
  return d, g


def make_embed_fn(model, mesh, eval_config=None):
  """The jitted (params, batch_stats, images, *gate_images) -> `outputs`
  (with `eval_config`'s flip averaging and gate sizes), sharded over `mesh`;
  its `gate_sizes` attribute says which gate inputs it takes (`gate_inputs`
  makes them from arrays, `embed_split` from records)."""
  sizes = gate_sizes(eval_config)

  def embed(params, batch_stats, images, *gate_images):
    apply = lambda x: model.apply({"params": params, "batch_stats": batch_stats},
                                  resnet.images_to_input(x), train=False)
    return outputs(apply, images, eval_config, gate_images)
  data_sharding = sharding.data_sharding(mesh)
  fn = jax.jit(embed, in_shardings=(None, None) + (data_sharding,) * (1 + len(sizes)),
               out_shardings=sharding.replicated(mesh))
  return EmbedFn(fn, sizes)


class EmbedFn:
  """A jitted embedding function and the gate sizes it takes inputs for."""

  def __init__(self, fn, gate_sizes=()):
    self.fn, self.gate_sizes = fn, tuple(gate_sizes)

  def __call__(self, params, batch_stats, images, *gate_images):
    return self.fn(params, batch_stats, images, *gate_images)

  def lower(self, *args):
    return self.fn.lower(*args)


def gate_inputs(images: np.ndarray, sizes) -> list[np.ndarray]:
  """uint8 images [n, h, w, 3] resized square to each of `sizes` (in-memory
  images: training views, the export's check), as `_LoadForEval` resizes."""
  return [np.stack([copy_edits.resize(x, (s, s)) for x in images]) if len(images)
          else np.zeros((0, s, s, 3), np.uint8) for s in sizes]


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
    rate = done / (time.time() - t0)  # Compilation included: a small split shows < 1/s.
    rate = f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"
    log(f"  embedded {name} {done}/{n} ({rate} images/s"
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
  gate = getattr(embed_fn, "gate_sizes", ())
  ds = grain.MapDataset.source(plan).map(_LoadForEval(source, shape, gate))
  ds = ds.batch(batch_size // processes).to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4))
  if num_workers > 0 and len(plan):
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=min(num_workers, -(-len(plan) // (batch_size // processes))),
        per_worker_buffer_size=2))
  desc, norms, t0 = [], [], time.time()
  for images in ds:
    images = sharding.global_batch(tuple(images) if gate else (images,), mesh)
    d, g = embed_fn(state.params["model"], state.batch_stats, *images)
    desc.append(np.asarray(d))
    norms.append(np.asarray(g))
    if timing is not None and len(desc) == 1:
      timing["first_batch_s"] = time.time() - t0
  if hasattr(ds, "close"):
    ds.close()
  return np.concatenate(desc)[:n], np.concatenate(norms)[:n]
