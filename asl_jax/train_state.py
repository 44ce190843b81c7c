"""The training state and how it starts: the model and classifier of a config,
the state's sharding over the mesh, its initialisation, and the weights of
`model.init_from` (an ONNX copy detector, another run, or a torchvision/timm
file) loaded into it."""

import json
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from asl_jax import checkpointing, sharding
from asl_jax.models import resnet


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any        # {"model": ..., "classifier": ...}
  batch_stats: Any
  opt_state: Any


def build_modules(config, num_classes: int, num_devices: int | None = None):
  """The model and, when classification is on, the per-identity classifier;
  with model.shard_classifier its columns are padded to a multiple of the
  device count so that they split evenly."""
  model = resnet.build(config.model)
  classifier = None
  if config.loss.classification > 0:
    n = num_devices or jax.device_count()
    padded = -(-num_classes // n) * n if config.model.shard_classifier else 0
    classifier = resnet.Classifier(
        num_classes, cosine_scale=config.loss.cosine_scale or None,
        dtype=jnp.dtype(config.model.dtype), padded_classes=padded)
  return model, classifier


def state_shardings(shapes, mesh, classifier):
  """Everything replicated, except (with a sharded classifier) its kernel
  and the optimiser moments of it, split over `data` along the class axis."""
  columns = classifier.padded_classes if classifier is not None else 0

  def spec(path, leaf):
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    if columns and "classifier" in names and leaf.ndim == 2 and leaf.shape[-1] == columns:
      return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
    return sharding.replicated(mesh)

  return jax.tree_util.tree_map_with_path(spec, shapes)


def _init_fn(model, classifier, tx, config):
  """rng -> a fresh TrainState (the model's and the classifier's variables)."""
  size = config.data.image_size

  def init(rng):
    r_model, r_cls = jax.random.split(rng)
    images = jnp.zeros((2, size, size, 3), jnp.float32)
    variables = model.init(r_model, images, train=False)
    params = {"model": variables["params"]}
    if classifier is not None:
      params["classifier"] = classifier.init(
          r_cls, jnp.zeros((2, resnet.projected_dim(config.model))))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables["batch_stats"],
                      opt_state=tx.init(params) if tx is not None else None)
  return init


def init_state(model, classifier, tx, config, rng, mesh) -> TrainState:
  """Creates the state directly with its (replicated) sharding."""
  init = _init_fn(model, classifier, tx, config)
  shapes = jax.eval_shape(init, rng)
  return jax.jit(init, out_shardings=state_shardings(shapes, mesh, classifier))(rng)


def abstract_params(config):
  """The parameter tree's shapes (nothing computed, no data needed): what
  optim.trainable and optim.lr_mults are checked against before any work.
  The classifier, where there is one, has a single class here."""
  model, classifier = build_modules(config, num_classes=1, num_devices=1)
  return jax.eval_shape(_init_fn(model, classifier, None, config), jax.random.key(0)).params


def _host(tree):
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def _read_init(config, params, batch_stats):
  """(params, batch_stats, report) with `config.model.init_from` loaded into
  the given host trees: an ONNX copy detector (models/onnx_import.py),
  another run's workdir or checkpoint directory (its params and BatchNorm
  statistics, read without writing there), or a torchvision/timm file. The
  gate's own trunk (model.gate_feature=gate_trunk) starts as a copy of the
  file's trunk."""
  from asl_jax.models import onnx_import, pretrained
  path = os.path.expanduser(config.model.init_from)
  if os.path.isdir(path):
    return checkpointing.load_model_from(path, params, batch_stats, config)
  if path.endswith(".onnx"):
    params, batch_stats, report = onnx_import.load_into(
        params, batch_stats, onnx_import.read_onnx(path), config.model,
        strict=config.model.init_strict)
  else:
    params, batch_stats, report = pretrained.load_into(
        params, batch_stats, pretrained.read_state_dict(path),
        strict=config.model.init_strict, source=path)
  # A file holds one trunk: model.gate_feature=gate_trunk's own starts as its copy.
  report.seed_gate_trunk(params, batch_stats)
  return params, batch_stats, report


def check_init_from(config):
  """Loads `model.init_from` into a zero-filled model of the config's shapes,
  so that a file that does not fit (another variant, head or stride) is a
  UserError before any data is prepared."""
  if not config.model.init_from:
    return
  model = resnet.build(config.model)
  size = config.data.image_size
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((2, size, size, 3)), train=False))
  zeros = lambda tree: jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), tree)
  _read_init(config, zeros(shapes["params"]), zeros(shapes["batch_stats"]))


def load_pretrained(state: TrainState, config, workdir: str, log) -> TrainState:
  """The weights from `config.model.init_from` (`_read_init`); the load report
  is logged (`log`, on process 0) and written to the workdir."""
  path = os.path.expanduser(config.model.init_from)
  params, stats, report = _read_init(config, _host(state.params["model"]),
                                     _host(state.batch_stats))
  log(f"Initialised the model from {path}: {report.summary()}")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "pretrained_load.json"), "w") as f:
      json.dump({"file": path, **{k: [x if isinstance(x, str) else "/".join(x) for x in v]
                                  for k, v in report.__dict__.items()}}, f, indent=1)
  place = lambda new, old: jax.tree.map(lambda n, o: jax.device_put(n, o.sharding), new, old)
  return state.replace(params={**state.params, "model": place(params, state.params["model"])},
                       batch_stats=place(stats, state.batch_stats))


def pretrained_state(config, workdir: str, log):
  """(model, state) holding the weights of `model.init_from`, for evaluation
  without training (train.total_steps=0); no checkpoint is written."""
  os.makedirs(workdir, exist_ok=True)
  model = resnet.build(config.model)
  mesh = sharding.make_mesh()
  state = init_state(model, None, optax.identity(), config, jax.random.key(config.seed), mesh)
  return model, load_pretrained(state, config, workdir, log)
