"""A trained run's model for inference: its config, its latest checkpoint,
and the embedding of folders and prepared splits exactly as the run's
evaluation embeds its queries and references (`evaluation/embedding.py`:
eval.image_size, eval.flip_average, the L2-normalised descriptor and the
gate feature's norm, eval.gate_flip_average).

The command lines `embed`, `find` and `export` stand on this module.
"""

import dataclasses
import functools
import json
import os
import types

import jax
import ml_collections
import numpy as np

from asl_jax import checkpointing, data, image_folder, run_config, sharding
from asl_jax.errors import UserError

SPLITS = ("queries", "references", "train")


@dataclasses.dataclass
class Run:
  """A run's config, model (Flax module) and variables of its latest step."""
  workdir: str
  config: ml_collections.ConfigDict
  model: object
  step: int
  params: dict
  batch_stats: dict

  @property
  def image_size(self) -> int:
    """The side images are embedded at (eval.image_size, else data.image_size)."""
    from asl_jax.evaluation import embedding
    return embedding.embedding_size(self.config)

  @property
  def flip_average(self) -> bool:
    return bool(self.config.eval.flip_average)

  @property
  def gate_flip_average(self) -> bool:
    return bool(self.config.eval.gate_flip_average)

  @functools.cached_property
  def _embed_fn(self):
    from asl_jax.evaluation import embedding
    return embedding.make_embed_fn(self.model, sharding.make_mesh(), self.config.eval)

  def embed(self, source, name: str = "", log=print) -> tuple[np.ndarray, np.ndarray]:
    """(descriptors [n, d], gate norms [n]) of every record of `source` (a
    prepared split or a `FolderSource`), with the evaluation's embedding."""
    from asl_jax.evaluation import embedding
    if not len(source):
      return (np.zeros((0, self.config.model.descriptor_dim), np.float32),
              np.zeros(0, np.float32))
    state = types.SimpleNamespace(params={"model": self.params}, batch_stats=self.batch_stats)
    return embedding.embed_split(self._embed_fn, state, source, self.image_size,
                                 self.config.eval.batch_size, sharding.make_mesh(), name, log,
                                 resize=self.config.eval.resize)

  @property
  def gate_sizes(self) -> tuple[int, ...]:
    from asl_jax.evaluation import embedding
    return embedding.gate_sizes(self.config.eval)

  def embed_batch(self, images: np.ndarray, gate_images=None) -> tuple[np.ndarray, np.ndarray]:
    """(descriptors, gate norms) of uint8 images [n, S, S, 3] already at the
    embedding side, in one call of the evaluation's embedding function. With
    eval.gate_sizes, `gate_images` are the same images at each gate size
    (default: `images` resized to them, embedding.gate_inputs)."""
    from asl_jax.evaluation import embedding
    if gate_images is None:
      gate_images = embedding.gate_inputs(images, self.gate_sizes)
    n, pad = len(images), (-len(images)) % jax.device_count()
    padded = tuple(np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
                   for x in [images, *gate_images])
    d, g = self._embed_fn(self.params, self.batch_stats,
                          *sharding.global_batch(padded, sharding.make_mesh()))
    return np.asarray(d)[:n], np.asarray(g)[:n]


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config.json, its missing fields filled (run_config.complete)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise UserError(f"{path} does not exist: --workdir must be an asl_jax run "
                    "(`python -m asl_jax.main ... --workdir RUN`) whose evaluation has "
                    "finished; the evaluation writes config.json next to the checkpoints.")
  with open(path) as f:
    return run_config.complete(json.load(f))


def load_run(workdir: str) -> Run:
  """The run in `workdir`: config.json and its latest checkpoint. A
  checkpoint whose shapes do not fit the config is an error naming them."""
  from asl_jax import train
  config = read_config(workdir)
  model, _ = train.build_modules(config, num_classes=1)
  step, params, batch_stats = checkpointing.restore_model_variables(workdir)
  size = config.data.image_size
  expected = jax.eval_shape(lambda: model.init(
      jax.random.key(0), np.zeros((1, size, size, 3), np.float32), train=False))
  got = {"params": params, "batch_stats": batch_stats}
  shapes = lambda tree: jax.tree_util.tree_map_with_path(
      lambda p, x: (jax.tree_util.keystr(p), tuple(x.shape)), tree)
  want, have = jax.tree.leaves(shapes(dict(expected))), jax.tree.leaves(shapes(got))
  if want != have:
    diff = sorted(set(map(str, want)) ^ set(map(str, have)))
    raise UserError(f"The checkpoint of step {step} in {workdir} does not fit the model of "
                    f"its config.json ({len(diff)} differing leaves, e.g. "
                    f"{'; '.join(diff[:4])}); was config.json written by another run?")
  # On the host: the embedding function places them on its mesh itself.
  return Run(workdir, config, model, step, jax.device_get(params),
             jax.device_get(batch_stats))


def split_source(run: Run, split: str, data_dir: str = ""):
  """(source, ids) of a split of the run's prepared data: queries and
  references of its evaluation set (eval.data_name, else data.name), train of
  its training set (the score-normalisation background)."""
  if split not in SPLITS:
    raise UserError(f"--split {split}: use one of {', '.join(SPLITS)}.")
  cfg = run.config.data
  if data_dir:
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.data_dir = data_dir
  name = cfg.name if split == "train" else (run.config.eval.data_name or cfg.name)
  builder = data.builder(cfg, name)
  if not builder.is_prepared():
    raise UserError(f"The run's dataset {name} is not prepared under {data.data_dir(cfg)} "
                    f"(looked for {builder.data_dir}); give --data_dir where it was "
                    "prepared, or embed its images as a folder with --images.")
  if split not in builder.info.splits:
    raise UserError(f"{builder.info.full_name} has no {split} split (it has "
                    f"{', '.join(builder.info.splits)}).")
  src = data.source(builder, split)
  return src, [data.text(src[i]["id"]) for i in range(len(src))]


def folder_source(folder: image_folder.Folder):
  """(source, ids) of a scanned folder; ids are file names without extension."""
  try:
    ids = image_folder.unique_ids(folder)
  except ValueError as e:
    raise UserError(f"{folder.root}: {e}; rename one of each pair.") from None
  return image_folder.FolderSource(folder, ids), ids
