"""Grain input pipelines over the TFDS `ndec` data sources.

Training batches hold N identities x K views, id-major (method.md §3.4):

  views               uint8   [N, K, S, S, 3]
  information_amount  float32 [N, K]   fraction of the source content kept
  label               int32   [N]      identity (train index; pairs after)

View 0 of each identity is the whole source image (information amount 1),
as in the baselines' generated sets; views 1..K-1 are a random crop of
`crop_area` of the image (amount: its area fraction, times the factor of
each edit in data.edit_information), resized, then the copy-edit chain; its
`paste_onto` edit pastes the view onto another training image (as DISC21's
overlays onto other photos), so that the model meets the same kind of
background as in the queries. Hard-negative
training pairs (NDEC) can take some of the N identity slots: each pair member
is its own identity and both members sit side by side in the same batch.

A batch never holds an identity twice: RS@k gathers each query's positives
into fixed slots (recall_surrogate.py), so a second copy of an identity would
change the loss. Batches are cut within each epoch's permutation
(`epoch_batches`), never across two epochs.
"""

import dataclasses
import sys

import grain
import numpy as np
from PIL import Image

from asl_jax import copy_edits
from asl_jax import views as views_lib
from asl_jax.data import decode_pil, worker_processes  # noqa: F401 (part of this API)
from asl_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class ViewSpec:
  num_views: int
  image_size: int
  crop_area: tuple[float, float]
  edit_probabilities: tuple[tuple[str, float], ...]  # Hashable for pickling.
  # Edit name -> its parameters as ((keyword, value), ...); see `view_spec`.
  edit_params: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()
  # Edit name -> information factor (data.edit_information; copy_edit_chain).
  edit_information: tuple[tuple[str, float], ...] = ()
  # Area range of the identity's source: a random crop of the image (data.source_crop_area;
  # (1, 1): the whole image).
  source_crop_area: tuple[float, float] = (1.0, 1.0)


def _frozen(value):
  if isinstance(value, (list, tuple)):
    return tuple(_frozen(v) for v in value)
  return value


def view_spec(cfg) -> ViewSpec:
  """The ViewSpec of `config.data` (views_per_id, image_size, crop_area,
  train_edits, edit_params, edit_information, source_crop_area)."""
  params = cfg.edit_params
  information = cfg.edit_information
  return ViewSpec(
      cfg.views_per_id, cfg.image_size, tuple(cfg.crop_area),
      tuple(sorted((k, float(v)) for k, v in cfg.train_edits.items())),
      tuple(sorted((name, tuple(sorted((k, _frozen(v)) for k, v in kw.items())))
                   for name, kw in params.items())),
      tuple(sorted((k, float(v)) for k, v in information.items())),
      tuple(float(a) for a in cfg.source_crop_area))


class Backgrounds:
  """Random other images of a source, to paste views onto (`paste_onto`) or
  to paste small copies of onto views (`underlay`)."""

  def __init__(self, source):
    if len(source) < 2:
      raise UserError("Pasting onto other training images needs at least 2 of them; "
                      "set data.paste_backgrounds='synthetic'.")
    self.source = source

  def __call__(self, rng: np.random.Generator, exclude: int = -1,
               min_size: int = 0) -> Image.Image:
    """A random image other than `exclude`, JPEGs decoded at the smallest
    1/2^k scale that keeps both sides at least `min_size` (0: full size)."""
    i = int(rng.integers(len(self.source) - 1))
    i += i >= exclude >= 0  # Never the image itself.
    record = self.source[i]
    return decode_pil(record["image"], record, min_size)


def make_views(image: np.ndarray | Image.Image, rng: np.random.Generator, spec: ViewSpec,
               background_fn=None) -> tuple[np.ndarray, np.ndarray]:
  """K views of one image and their information amounts.

  View 0 is the resized image; the others a crop, resized, then the edit
  chain, which works at most at the view size (`copy_edit_chain`'s
  work_size) and is resized to it at the end. With spec.source_crop_area
  below (1, 1) the image is first cut to a random crop of that area, which
  then stands for the source (information amount 1): each training image
  gives a different source at each visit.
  background_fn: (rng, min_size) -> image for `paste_onto` and `underlay`
  (None: synthetic gradients).
  """
  size = (spec.image_size, spec.image_size)
  probabilities = dict(spec.edit_probabilities)
  params = {name: dict(kw) for name, kw in spec.edit_params}
  image = copy_edits.to_pil(image)
  if spec.source_crop_area[0] < 1.0:
    box, _ = copy_edits.crop_box(image.height, image.width, rng, spec.source_crop_area)
    image = image.crop(box)
  views = [copy_edits.to_array(image.resize(size, Image.BILINEAR))]
  amounts = [1.0]
  for _ in range(spec.num_views - 1):
    box, amount = copy_edits.crop_box(image.height, image.width, rng, spec.crop_area)
    cropped = image.crop(box).resize(size, Image.BILINEAR)
    edited = copy_edits.copy_edit_chain(cropped, rng, probabilities, params=params,
                                        background_fn=background_fn, work_size=spec.image_size,
                                        information=dict(spec.edit_information))
    views.append(copy_edits.to_array(edited.image.resize(size, Image.BILINEAR)))
    amounts.append(amount * edited.information_amount)
  return np.stack(views), np.asarray(amounts, np.float32)


class AddLabel(grain.transforms.MapWithIndex):
  """Identity label = record index in the split (+ offset).

  Shuffled, repeated datasets read this map at index epoch * size + i (Grain's
  shuffle reseeds each epoch that way), so the index is taken modulo the
  split's `size`: without it an image's label grew by `size` every epoch, past
  the classifier's classes.
  """

  def __init__(self, size: int, offset: int = 0):
    self.size, self.offset = size, offset

  def map_with_index(self, index, record):
    return {**record, "label": np.int32(index % self.size + self.offset)}


class _EpochBatchOrder(grain.MapDataset):
  """The endless shuffled order with each epoch cut to whole batches.

  Position p of batch size B reads element e * n + j of `parent` (an epoch-
  reshuffled, repeated dataset of n elements per epoch), with
  e, j = divmod(p, n - n % B): the n % B elements left at the end of each
  epoch's permutation are skipped (different ones each epoch), so no batch
  spans two epochs and none holds an element twice. Random access, so the
  Grain iterator state (a position) resumes exactly.
  """

  def __init__(self, parent: grain.MapDataset, epoch_size: int, batch_size: int):
    super().__init__(parent)
    self._n = epoch_size
    self._per_epoch = epoch_size - epoch_size % batch_size

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f"_EpochBatchOrder(per_epoch={self._per_epoch})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, j = divmod(index, self._per_epoch)
    return self._parent[epoch * self._n + j]


def epoch_batches(ds: grain.MapDataset, batch_size: int, *, seed: int,
                  what: str = "training images") -> grain.MapDataset:
  """Endless batches of `batch_size` distinct elements of `ds`: each epoch's
  permutation (reshuffled every epoch) cut into whole batches, its remainder
  dropped (see `_EpochBatchOrder`). Raises UserError when `ds` holds fewer
  than `batch_size` elements (a batch could not be distinct)."""
  n = len(ds)
  if n < batch_size:
    raise UserError(
        f"A batch takes {batch_size} distinct {what} per process but this process has only "
        f"{n}: lower data.ids_per_batch (or data.pair_ids_per_batch), or use more data.")
  return _EpochBatchOrder(ds.shuffle(seed=seed).repeat(None), n, batch_size)


def background_fn(backgrounds: Backgrounds | None, exclude: int):
  """The (rng, min_size) -> image callable of `make_views`, never giving
  image `exclude`; None (synthetic gradients) without backgrounds."""
  if backgrounds is None:
    return None
  return lambda rng, min_size: backgrounds(rng, exclude, min_size)


class TrainViews(grain.transforms.RandomMap):
  """One training image -> its K views."""

  def __init__(self, spec: ViewSpec, backgrounds: Backgrounds | None = None):
    self.spec, self.backgrounds = spec, backgrounds

  def random_map(self, record, rng):
    views, amounts = make_views(decode_pil(record["image"], record), rng,
                                self.spec, background_fn(self.backgrounds, record["label"]))
    return {"views": views, "information_amount": amounts,
            "label": record["label"]}


class PairViews(grain.transforms.RandomMap):
  """One hard-negative pair -> two identities (labels 2i and 2i+1 + offset)."""

  def __init__(self, spec: ViewSpec, offset: int, backgrounds: Backgrounds | None = None):
    self.spec, self.offset, self.backgrounds = spec, offset, backgrounds

  def random_map(self, record, rng):
    partner = record["partner"]
    bg = background_fn(self.backgrounds, -1)
    a = make_views(decode_pil(record["image"], record), rng, self.spec, bg)
    b = make_views(decode_pil(partner["image"], partner), rng, self.spec, bg)
    label = self.offset + 2 * record["label"]
    return {"views": np.stack([a[0], b[0]]),
            "information_amount": np.stack([a[1], b[1]]),
            "label": np.array([label, label + 1], np.int32)}


class MergePairs(grain.transforms.Map):
  """(train batch [n, ...], pair batch [m, 2, ...]) -> one batch [n+2m, ...]."""

  def map(self, element):
    single, pairs = element
    return {k: np.concatenate(
        [single[k], pairs[k].reshape((-1,) + pairs[k].shape[2:])])
            for k in single}


def num_identities(train_size: int, pairs_size: int, use_pairs: bool) -> int:
  """Classes of the per-identity classifier."""
  return train_size + (2 * pairs_size if use_pairs else 0)


def train_dataset(train_source, pairs_source, cfg, *, seed: int,
                  process_index: int = 0, process_count: int = 1
                  ) -> grain.IterDataset:
  """The endless training pipeline of this process (its share of the batch).

  Args:
    train_source: random-access source of the `train` split.
    pairs_source: source of `train_negative_pairs`, or None.
    cfg: `config.data` (ids_per_batch, views_per_id, image_size, crop_area,
      train_edits, edit_params, paste_backgrounds, views_dir (pre-generated
      views: see asl_jax/pregenerate.py), pair_ids_per_batch, num_threads,
      num_workers: see `worker_processes`).
    seed: shuffling and augmentation seed.
    process_index, process_count: this host's shard of the data.
  """
  if cfg.ids_per_batch % process_count:
    raise ValueError(f"data.ids_per_batch={cfg.ids_per_batch} must divide "
                     f"over {process_count} processes.")
  local_ids = cfg.ids_per_batch // process_count
  pair_slots = cfg.pair_ids_per_batch // process_count if pairs_source else 0
  if pair_slots % 2 or pair_slots >= local_ids:
    raise ValueError(
        "data.pair_ids_per_batch must be even (two identities per pair), and "
        f"leave room for training images; got {cfg.pair_ids_per_batch} of "
        f"{cfg.ids_per_batch} identities over {process_count} processes.")
  if cfg.views_dir:
    if pair_slots:
      raise ValueError("Pre-generated views (data.views_dir) hold training images only; set "
                       "data.pair_ids_per_batch=0.")
    views, _ = views_lib.open_views(cfg.views_dir, cfg, len(train_source))
    ds = grain.MapDataset.source(views)[process_index::process_count]
    ds = epoch_batches(ds, local_ids, seed=seed)
    ds = ds.random_map(views_lib.PregeneratedViews(cfg.views_per_id, cfg.image_size), seed=seed)
    return _to_iter(ds.batch(local_ids, drop_remainder=True), cfg)
  spec = view_spec(cfg)
  # data.paste_backgrounds is checked with the rest of the config (train.py).
  paste = cfg.paste_backgrounds
  backgrounds = Backgrounds(train_source) if paste == "train" else None
  ds = grain.MapDataset.source(train_source).map_with_index(AddLabel(len(train_source)))
  ds = epoch_batches(ds[process_index::process_count], local_ids - pair_slots, seed=seed)
  ds = ds.random_map(TrainViews(spec, backgrounds), seed=seed)
  ds = ds.batch(local_ids - pair_slots, drop_remainder=True)
  if pair_slots:
    pairs = grain.MapDataset.source(pairs_source).map_with_index(AddLabel(len(pairs_source)))
    pairs = epoch_batches(pairs[process_index::process_count], pair_slots // 2, seed=seed + 1,
                          what="hard-negative pairs")
    pairs = pairs.random_map(
        PairViews(spec, offset=len(train_source), backgrounds=backgrounds), seed=seed + 1)
    pairs = pairs.batch(pair_slots // 2, drop_remainder=True)
    n = min(len(ds), len(pairs))  # Both endless; zip needs equal lengths.
    ds = grain.experimental.ZipMapDataset([ds[:n], pairs[:n]]).map(MergePairs())
  return _to_iter(ds, cfg)


def _to_iter(ds: grain.MapDataset, cfg) -> grain.IterDataset:
  it = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=cfg.num_threads, prefetch_buffer_size=max(4, cfg.num_threads)))
  if workers := worker_processes(cfg.num_workers):
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=2))
  return it
