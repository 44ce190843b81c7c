"""TFDS builder for NDEC (Wang, Sun and Yang, AAAI 2023), the hard-negative
extension of the ISC2021/DISC21 image copy detection benchmark.

Configs:
* `synthetic` (default): a procedurally generated NDEC-like set, built in
  seconds on a CPU, deterministic for a seed (see `synthetic.py`). Other sizes
  come from `synthetic_config(...)`.

Build and read without TensorFlow:

  import tensorflow_datasets as tfds, tfds_ndec
  b = tfds.builder('ndec/synthetic', data_dir=...)
  b.download_and_prepare(file_format='array_record')
  queries = b.as_data_source(split='queries')
"""

import contextlib
import dataclasses
import hashlib
import multiprocessing

import numpy as np
import tensorflow_datasets as tfds

from tfds_ndec import synthetic

_DESCRIPTION = """NDEC: image copy detection with hard negatives. Queries are
edited copies of a reference, hard negatives (images that resemble a reference
but are not copies of it: reverse-direction crops, visually similar images,
another viewpoint, another time) or distractors."""


@dataclasses.dataclass(eq=False)
class NdecConfig(tfds.core.BuilderConfig):
  """Sizes of the synthetic set; the real configs ignore them."""
  seed: int = 0
  image_size: int = 128
  num_train: int = 2000
  num_train_negative_pairs: int = 400
  num_references: int = 1000
  num_copy_queries: int = 300
  num_hard_negative_queries: int = 300
  num_distractor_queries: int = 200

  def sizes(self) -> synthetic.Sizes:
    fields = {f.name for f in dataclasses.fields(synthetic.Sizes)}
    return synthetic.Sizes(**{k: getattr(self, k) for k in fields})


_DEFAULT_SYNTHETIC = NdecConfig(
    name="synthetic", description="Procedurally generated NDEC-like set.")


def synthetic_config(**sizes) -> NdecConfig:
  """A synthetic config with other sizes, named by a hash of them so that
  differently sized sets never share a directory."""
  config = dataclasses.replace(_DEFAULT_SYNTHETIC, **sizes)
  if config.sizes() == _DEFAULT_SYNTHETIC.sizes():
    return _DEFAULT_SYNTHETIC  # TFDS wants the registered object itself.
  digest = hashlib.sha1(repr(config.sizes()).encode()).hexdigest()[:8]
  return dataclasses.replace(config, name=f"synthetic_{digest}",
                             description=f"Synthetic NDEC-like set {sizes}.")


def _image():
  return tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")


def features() -> tfds.features.FeaturesDict:
  """One feature spec for every split (TFDS has one per dataset); fields a
  split does not use hold '' / 1.0 / [] and, for `partner`, a 1x1 image."""
  text = tfds.features.Text
  return tfds.features.FeaturesDict({
      "id": text(doc="Image id: T000000, R000000, Q00000, or P00000_a."),
      "image": _image(),
      "filename": text(doc="Source file the image was read from."),
      "reference_id": text(doc="queries: the reference this is a copy of."),
      "kind": text(doc="queries: copy | hard_negative | distractor."),
      "hard_negative_kind": text(
          doc="reverse_crop | similar | viewpoint | time (queries, pairs)."),
      "resembles_id": text(doc="hard-negative queries: the reference they "
                           "resemble without being a copy of it."),
      "edits": tfds.features.Sequence(text(), doc="copies: edits applied."),
      "information_amount": tfds.features.Scalar(
          np.float32, doc="copies: fraction of the reference content kept."),
      "pair_id": text(doc="train_negative_pairs: the pair's id."),
      "partner": tfds.features.FeaturesDict({
          "id": text(), "image": _image(), "filename": text()},
          doc="train_negative_pairs: the second image of the pair."),
  })


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for NDEC."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Synthetic config."}
  BUILDER_CONFIGS = [_DEFAULT_SYNTHETIC]
  DEFAULT_CONFIG_NAME = "synthetic"

  def __init__(self, *, num_workers: int = 1, config=None, **kwargs):
    """num_workers: processes that render synthetic images (0 = one per core).

    More than one uses spawned processes, which re-import the main module:
    call it from a module run with `python -m` or from a script guarded by
    `if __name__ == "__main__":`, as Python's multiprocessing requires.
    """
    if isinstance(config, NdecConfig):
      # An equal copy of a registered config (e.g. after unpickling in a
      # Grain worker) must be the registered object itself for TFDS.
      registered = {c.name: c for c in self.BUILDER_CONFIGS}.get(config.name)
      if registered is not None and registered.sizes() == config.sizes():
        config = registered
    super().__init__(config=config, **kwargs)
    self.num_workers = num_workers

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=_DESCRIPTION,
        features=features(),
        homepage="https://github.com/WangWenhao0716/ASL",
        disable_shuffling=True,  # Keep id order; Grain shuffles for training.
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    sizes = self.builder_config.sizes()
    sizes.check()
    counts = {split: getattr(sizes, attr)
              for split, (_, attr) in synthetic.EXAMPLE_FNS.items()}
    return {split: self._generate_examples(split, sizes, n)
            for split, n in counts.items()}

  def _generate_examples(self, split, sizes, count):
    workers = self.num_workers or multiprocessing.cpu_count()
    args = ((split, sizes, i) for i in range(count))
    if workers <= 1 or count < 64:
      yield from map(synthetic.make_example, args)
      return
    ctx = multiprocessing.get_context("spawn")  # Safe beside JAX's threads.
    with contextlib.closing(ctx.Pool(workers)) as pool:
      yield from pool.imap(synthetic.make_example, args, chunksize=16)
