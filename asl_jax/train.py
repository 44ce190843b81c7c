"""ASL training: one jitted update over a data-parallel mesh, then evaluation.

`train_and_evaluate(config, workdir)` is what `python -m asl_jax.main` runs
and what the tests call. The loss reads like the paper: embed the N x K views
-> base metric-learning losses -> ASL norm-ratio loss -> weighted total.
"""

import functools
import json
import os
import signal
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from asl_jax import (checkpointing, config_check, copy_edits, data, input_pipeline, losses,
                     recall_surrogate, run_config, sharding, tensorboard)
from asl_jax.errors import UserError
from asl_jax.models import resnet


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any        # {"model": ..., "classifier": ...}
  batch_stats: Any
  opt_state: Any


def log(msg: str):
  if jax.process_index() == 0:
    print(msg, flush=True)


# ------------------------------------------------------------------ setup --
def make_optimizer(cfg, total_steps: int):
  """Adam(W) with linear warmup, then a cosine decay (optim.schedule=cosine)
  or steps (optim.schedule=steps: x optim.decay at each of optim.milestones,
  fractions of the run, as the RS@k paper's schedule), from `config.optim`."""
  if cfg.get("schedule", "cosine") == "steps":
    boundaries = {int(round(f * total_steps)): cfg.decay for f in cfg.milestones}
    schedule = optax.join_schedules(
        [optax.linear_schedule(cfg.learning_rate * cfg.warmup_init_factor, cfg.learning_rate,
                               max(cfg.warmup_steps, 1)),
         optax.piecewise_constant_schedule(
             cfg.learning_rate, {b - cfg.warmup_steps: v for b, v in boundaries.items()
                                 if b > cfg.warmup_steps})],
        [cfg.warmup_steps])
  else:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=cfg.learning_rate * cfg.warmup_init_factor,
        peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
        decay_steps=max(total_steps, cfg.warmup_steps + 1),
        end_value=cfg.learning_rate * cfg.end_factor)
  parts = []
  if cfg.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if cfg.weight_decay:
    # No decay on biases, BN parameters and the GeM exponent (1-D leaves).
    mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2,
                             weight_decay=cfg.weight_decay, mask=mask))
  else:
    parts.append(optax.adam(schedule, b1=cfg.b1, b2=cfg.b2))
  tx = optax.chain(*parts)
  if cfg.get("trainable", ""):
    # The other leaves get no update at all (no weight decay either).
    tx = optax.multi_transform(
        {True: tx, False: optax.set_to_zero()},
        lambda params: trainable_mask(params, cfg.trainable))
  return tx, schedule


def _path(key_path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)


def trainable_mask(params, pattern: str):
  """The tree of `params` with True where a leaf trains: its path
  ("model/embed_fc/kernel", "classifier/kernel") matches the regular
  expression `pattern` (optim.trainable; re.search), all when it is ''."""
  import re
  if not pattern:
    return jax.tree.map(lambda _: True, params)
  regex = re.compile(pattern)
  return jax.tree_util.tree_map_with_path(lambda p, _: bool(regex.search(_path(p))), params)


def build_modules(config, num_classes: int, num_devices: int | None = None):
  """The model and, when classification is on, the per-identity classifier;
  with model.shard_classifier its columns are padded to a multiple of the
  device count so that they split evenly."""
  model = resnet.build(config.model)
  classifier = None
  if config.loss.classification > 0:
    n = num_devices or jax.device_count()
    padded = -(-num_classes // n) * n if config.model.get("shard_classifier") else 0
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


def init_state(model, classifier, tx, config, rng, mesh) -> TrainState:
  """Creates the state directly with its (replicated) sharding."""
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
                      opt_state=tx.init(params))

  shapes = jax.eval_shape(init, rng)
  return jax.jit(init, out_shardings=state_shardings(shapes, mesh, classifier))(rng)


def _host(tree):
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def _read_init(config, params, batch_stats):
  """(params, batch_stats, report) with `config.model.init_from` loaded into
  the given host trees: an ONNX copy detector (models/onnx_import.py),
  another run's workdir or checkpoint directory (its params and BatchNorm
  statistics, read without writing there), or a torchvision/timm file."""
  from asl_jax.models import onnx_import, pretrained
  path = os.path.expanduser(config.model.init_from)
  if path.endswith(".onnx"):
    return onnx_import.load_into(params, batch_stats, onnx_import.read_onnx(path),
                                 config.model, strict=config.model.init_strict)
  if os.path.isdir(path):
    return checkpointing.load_model_from(path, params, batch_stats, config)
  return pretrained.load_into(params, batch_stats, pretrained.read_state_dict(path),
                              strict=config.model.init_strict, source=path)


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


def load_pretrained(state: TrainState, config, workdir: str) -> TrainState:
  """The weights from `config.model.init_from` (`_read_init`); the load report
  is logged and written to the workdir."""
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


# ------------------------------------------------------------------- loss --
def needed_outputs(cfg) -> tuple[str, ...]:
  """The model outputs the losses of `config.loss` read (the gate feature
  always: its norm ratio is logged)."""
  keys = {"gate_feature"}
  if cfg.classification > 0:
    keys.add("projected")
  if cfg.triplet > 0:
    keys.add(cfg.triplet_feature)
  if cfg.info_nce > 0 or cfg.koleo > 0 or cfg.get("rs_at_k", 0) > 0:
    keys.add("descriptor")
  return tuple(sorted(keys))


def model_outputs(params, batch_stats, images, rng, *, model, keys, frozen_bn=False):
  """The model on uint8 images [B, H, W, 3]: ({key: [B, ...]}, new batch_stats).

  frozen_bn: BatchNorm uses (and keeps) its running statistics, and the
  model runs in inference mode (no WaveBlock); otherwise batch statistics.
  """
  x = resnet.images_to_input(images)
  variables = {"params": params, "batch_stats": batch_stats}
  if frozen_bn:
    aux = model.apply(variables, x, train=False)
    new_stats = batch_stats
  else:
    aux, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                               rngs={"wave": jax.random.fold_in(rng, 0x3A7E)})
    new_stats = updates["batch_stats"]
  return {key: aux[key] for key in keys}, new_stats


def loss_from_outputs(outputs, classifier_params, batch, rng, *, classifier, cfg, mesh=None):
  """Total loss and metrics of one N x K batch from the model's outputs.

  mesh: given when the classifier is sharded over classes: its input is then
  gathered on every device and its logits stay split along the class axis,
  so that the 100k-way head is never replicated.
  """
  n, k = batch["information_amount"].shape
  labels = jnp.repeat(batch["label"], k)
  terms, extra = {}, {}
  if cfg.classification > 0:
    features = outputs["projected"]
    if mesh is not None and classifier.padded_classes:
      P = jax.sharding.PartitionSpec
      features = jax.lax.with_sharding_constraint(features, sharding.replicated(mesh))
    logits = classifier.apply({"params": classifier_params}, features)
    if mesh is not None and classifier.padded_classes:
      logits = jax.lax.with_sharding_constraint(
          logits, jax.sharding.NamedSharding(mesh, P(None, "data")))
    terms["classification"] = losses.label_smoothed_cross_entropy(
        logits, labels, cfg.label_smoothing, classifier.num_classes)
  if cfg.triplet > 0:
    terms["triplet"] = losses.soft_triplet_loss(outputs[cfg.triplet_feature], labels)
  if cfg.info_nce > 0:
    terms["info_nce"] = losses.info_nce_loss(outputs["descriptor"], labels, cfg.temperature)
  if cfg.koleo > 0:
    terms["koleo"] = losses.koleo_loss(outputs["descriptor"], labels)
  if cfg.get("rs_at_k", 0) > 0:
    terms["rs_at_k"], extra = recall_surrogate.rs_term(
        outputs["descriptor"], batch["label"], k, cfg, jax.random.fold_in(rng, 0x5171))
  if cfg.norm_ratio > 0:
    terms["norm_ratio"] = losses.norm_ratio_loss(
        outputs["gate_feature"], batch["information_amount"],
        rng if cfg.norm_ratio_pairing == "random" else None)
  total = sum(getattr(cfg, name) * value for name, value in terms.items())
  metrics = {f"loss/{name}": value for name, value in terms.items()}
  metrics.update(extra)
  metrics["loss/total"] = total
  metrics["norm_ratio/more_over_less"] = losses.mean_norm_ratio(
      outputs["gate_feature"], batch["information_amount"])
  return total, metrics


def _flat_views(batch):
  views = batch["views"]
  return views.reshape((-1,) + views.shape[2:])


def loss_fn(params, batch_stats, batch, rng, *, model, classifier, cfg, mesh=None,
            frozen_bn=False):
  """The one-pass loss: model, then `loss_from_outputs`; returns
  (total, (metrics, new batch_stats))."""
  outputs, new_stats = model_outputs(params["model"], batch_stats, _flat_views(batch), rng,
                                     model=model, keys=needed_outputs(cfg),
                                     frozen_bn=frozen_bn)
  total, metrics = loss_from_outputs(outputs, params.get("classifier"), batch, rng,
                                     classifier=classifier, cfg=cfg, mesh=mesh)
  return total, (metrics, new_stats)


def two_pass_gradients(params, batch_stats, batch, rng, *, model, classifier, cfg, mesh,
                       num_chunks: int, frozen_bn=False):
  """Gradient caching (recall_surrogate.md A.4): the gradient of the whole
  batch's loss with the activations of one chunk at a time.

  Pass 1 embeds the batch chunk by chunk, keeping only the outputs; the loss
  and its gradient G with respect to the outputs (and the classifier) are
  taken on the whole, all-gathered batch; pass 2 recomputes each chunk and
  accumulates its vector-Jacobian product with G. Each chunk is spread over
  the `data` axis (every device holds 1/devices of it); BatchNorm sees the
  statistics of the chunk (the same in both passes) or is frozen; chunk c
  draws the same random keys in both passes. Returns
  (total, (metrics, new batch_stats)), grads, like `value_and_grad(loss_fn)`.
  """
  keys = needed_outputs(cfg)
  devices = mesh.devices.size
  images = _flat_views(batch)
  b = images.shape[0] // (devices * num_chunks)
  P = jax.sharding.PartitionSpec
  spread = jax.sharding.NamedSharding(mesh, P(None, "data"))

  def to_chunks(x):  # [B, ...] -> [C, B/C, ...]: chunk c takes b rows of each device.
    rest = x.shape[1:]
    y = x.reshape((devices, num_chunks, b) + rest).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(
        y.reshape((num_chunks, devices * b) + rest), spread)

  def from_chunks(y):
    rest = y.shape[2:]
    x = y.reshape((num_chunks, devices, b) + rest).swapaxes(0, 1)
    return x.reshape((devices * num_chunks * b,) + rest)

  chunk_rngs = (rng[None] if num_chunks == 1 else
                jax.vmap(lambda c: jax.random.fold_in(rng, c))(jnp.arange(num_chunks)))
  embed = functools.partial(model_outputs, model=model, keys=keys, frozen_bn=frozen_bn)
  xs = to_chunks(images)
  # Pass 1: outputs only (nothing here is differentiated, so nothing is kept).
  outputs = jax.lax.map(lambda a: embed(params["model"], batch_stats, *a)[0], (xs, chunk_rngs))
  outputs = jax.tree.map(from_chunks, outputs)
  outputs = jax.lax.with_sharding_constraint(outputs, sharding.replicated(mesh))
  # The loss on the whole batch; G = d loss / d outputs.
  (total, metrics), (g_outputs, g_classifier) = jax.value_and_grad(
      functools.partial(loss_from_outputs, classifier=classifier, cfg=cfg, mesh=mesh),
      argnums=(0, 1), has_aux=True)(outputs, params.get("classifier"), batch, rng)
  g_chunks = jax.tree.map(to_chunks, g_outputs)

  # Pass 2: each chunk again, its J^T G summed into the parameters' gradient.
  def backward(carry, a):
    x, r, g = a
    _, vjp, new_stats = jax.vjp(lambda p: embed(p, batch_stats, x, r), params["model"],
                                has_aux=True)
    grads, stats = carry
    return (jax.tree.map(jnp.add, grads, vjp(g)[0]),
            jax.tree.map(jnp.add, stats, new_stats)), None

  zeros = lambda t: jax.tree.map(jnp.zeros_like, t)
  (g_model, stats_sum), _ = jax.lax.scan(
      backward, (zeros(params["model"]), zeros(batch_stats)), (xs, chunk_rngs, g_chunks))
  new_stats = jax.tree.map(lambda s: s / num_chunks, stats_sum)
  grads = {"model": g_model}
  if "classifier" in params:
    grads["classifier"] = g_classifier
  return (total, (metrics, new_stats)), grads


def make_update_fn(model, classifier, tx, schedule, config, mesh, state):
  """The jitted `update(state, batch, rng) -> (state, metrics)`: one update
  per batch, in one pass or (train.num_chunks > 1) two."""
  num_chunks = config.train.get("num_chunks", 1)
  pattern = config.optim.get("trainable", "")
  trainable = trainable_mask(state.params, pattern) if pattern else None
  frozen_bn = config.train.get("batch_norm", "batch") == "frozen"
  common = dict(model=model, classifier=classifier, cfg=config.loss, mesh=mesh,
                frozen_bn=frozen_bn)
  if num_chunks > 1:
    grad_fn = functools.partial(two_pass_gradients, num_chunks=num_chunks, **common)
  else:
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, **common), has_aux=True)

  def update(state, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    (_, (metrics, batch_stats)), grads = grad_fn(
        state.params, state.batch_stats, batch, rng)
    if trainable is not None:  # Frozen leaves: no gradient is computed (XLA drops it).
      grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = schedule(state.step)
    return state.replace(step=state.step + 1, params=params,
                         batch_stats=batch_stats, opt_state=opt_state), metrics

  state_sharding = jax.tree.map(lambda x: x.sharding, state)
  return jax.jit(update, in_shardings=(state_sharding, sharding.data_sharding(mesh),
                                       sharding.replicated(mesh)),
                 out_shardings=(state_sharding, sharding.replicated(mesh)),
                 donate_argnums=0)


# ------------------------------------------------------------------ train --
def _check_config(config):
  """config_check's checks, then those of the training data's settings."""
  config_check.validate(config, num_devices=jax.device_count())
  d = config.data
  if "crop" in d.train_edits:
    raise UserError("data.train_edits names 'crop', but the views are already cropped: "
                    "set the crop's area range with data.crop_area instead.")
  try:
    copy_edits.check_edits(d.train_edits, d.get("edit_params") or {})
  except ValueError as e:
    raise UserError(f"data.train_edits / data.edit_params: {e}") from None
  try:
    copy_edits.check_information(dict(d.get("edit_information") or {}))
  except ValueError as e:
    raise UserError(f"data.edit_information: {e}") from None
  if d.get("views_dir") and d.pair_ids_per_batch > 0:
    raise UserError("Pre-generated views (data.views_dir) hold training images only; set "
                    "data.pair_ids_per_batch=0, or data.views_dir='' to mix in NDEC pairs.")
  workers = d.get("num_workers", 0)
  if not isinstance(workers, int) or workers < -1:
    raise UserError(f"data.num_workers={workers!r}: give 0 (no worker processes, the "
                    "reader's threads), a number of Grain worker processes, or -1 for "
                    "one per CPU core.")


def _check_trainable(params, pattern: str):
  """optim.trainable must name at least one parameter; logs what trains."""
  if not pattern:
    return
  mask = trainable_mask(params, pattern)
  paths = [_path(p) for p, t in jax.tree_util.tree_leaves_with_path(mask) if t]
  if not paths:
    raise UserError(f"optim.trainable={pattern!r} matches no parameter, so nothing would "
                    "train. Parameter paths look like 'model/embed_fc/kernel', "
                    "'model/gate_fc1/kernel', 'model/layer4_2/conv3/kernel'; give a regular "
                    "expression that finds the ones to train, or '' for all.")
  count = sum(int(np.prod(x.shape)) for x, t in zip(jax.tree.leaves(params),
                                                    jax.tree.leaves(mask), strict=True) if t)
  log(f"optim.trainable={pattern!r}: {len(paths)} parameter arrays ({count} values) train, "
      "the others stay as they are")


def train(config, workdir: str, builder=None):
  """Trains (or resumes) in `workdir`; returns (model, state, builder)."""
  _check_config(config)
  os.makedirs(workdir, exist_ok=True)
  builder = builder or data.prepare(config.data, log=log)
  mesh = sharding.make_mesh()
  splits = builder.info.splits
  if "train" not in splits:
    raise UserError(
        f"{builder.info.full_name} has no training images (its folder has no train/). "
        "Train on a set that has them and evaluate on this one with "
        f"--config.eval.data_name={config.data.name}, or add a train/ folder and "
        "prepare it again under another name.")
  train_src = data.train_source(builder, config.data)
  use_pairs = config.data.pair_ids_per_batch > 0
  if use_pairs and "train_negative_pairs" not in splits:
    if data.folder_set(config.data.name) is None:
      raise UserError(
          f"data.pair_ids_per_batch={config.data.pair_ids_per_batch} asks for NDEC's "
          f"hard-negative training pairs, but {builder.info.full_name} has none (its "
          "download had no negative_pair/ folder). Set --config.data.pair_ids_per_batch=0, "
          "or unpack negative_pair.tar.* into the download and prepare it again.")
    log(f"Note: {builder.info.full_name} has no hard-negative training pairs; training "
        f"on its images alone (data.pair_ids_per_batch={config.data.pair_ids_per_batch} "
        "is not used).")
    use_pairs = False
  pairs_src = data.source(builder, "train_negative_pairs") if use_pairs else None
  num_classes = input_pipeline.num_identities(
      len(train_src), len(pairs_src) if use_pairs else 0, use_pairs)
  total = config.train.total_steps
  model, classifier = build_modules(config, num_classes, mesh.devices.size)
  tx, schedule = make_optimizer(config.optim, total)
  rng = jax.random.key(config.seed)
  state = init_state(model, classifier, tx, config, rng, mesh)
  dataset = input_pipeline.train_dataset(
      train_src, pairs_src, config.data, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  it = iter(dataset)
  ckpt = checkpointing.Checkpointer(workdir, config.train.checkpoint_every,
                                    config.train.keep_checkpoints)
  meta = {"fingerprint": checkpointing.fingerprint(config)}
  start = ckpt.latest_step()
  if start is not None:
    ckpt.check_compatible(start, json.loads(json.dumps(meta["fingerprint"])))
  run_config.check_resume(workdir, config, start is not None, log,
                          writer=jax.process_index() == 0)
  if start is not None:
    state = ckpt.restore(start, checkpointing.abstract(state), it)
    log(f"Resumed from the checkpoint of step {start} in {ckpt.directory}")
    _drop_lines_after(os.path.join(workdir, "train_metrics.jsonl"), start)
  elif config.model.init_from:
    state = load_pretrained(state, config, workdir)
  start = int(start or 0)
  _check_trainable(state.params, config.optim.get("trainable", ""))
  update = make_update_fn(model, classifier, tx, schedule, config, mesh, state)
  step_rng = jax.random.fold_in(rng, 1)
  images_per_step = config.data.ids_per_batch * config.data.views_per_id
  log(f"Training {config.model.variant} on {jax.device_count()} "
      f"{jax.devices()[0].platform} device(s), {num_classes} identities, "
      f"steps {start}..{total}, {images_per_step} images per step")
  last_good, t0, seen = start, time.time(), 0
  events = tensorboard.EventWriter(workdir) if jax.process_index() == 0 else None
  preemption = PreemptionWatch()
  try:
    for step in range(start + 1, total + 1):
      batch = sharding.global_batch(next(it), mesh)
      state, metrics = update(state, batch, step_rng)
      seen += 1
      if step % config.train.log_every == 0 or step == total:
        metrics = jax.device_get(metrics)
        if not np.isfinite(metrics["loss/total"]):
          raise UserError(
              f"The loss became {metrics['loss/total']} at step {step}; stopping. "
              f"The last good checkpoint is step {last_good} in {ckpt.directory} "
              "(lower optim.learning_rate or set optim.grad_clip_norm).")
        rate = seen * images_per_step / (time.time() - t0)
        eta = (total - step) * images_per_step / max(rate, 1e-9)
        log(f"step {step}/{total} " + " ".join(
            f"{k}={float(v):.4g}" for k, v in sorted(metrics.items()))
            + f" images/s={rate:.1f} eta={eta:.0f}s")
        _append_jsonl(os.path.join(workdir, "train_metrics.jsonl"),
                      {"step": step, "images_per_second": rate,
                       **{k: float(v) for k, v in metrics.items()}})
        if events:
          events.scalars(step, {"images_per_second": rate, **metrics})
        t0, seen = time.time(), 0
      if step % config.train.checkpoint_every == 0 or step == total:
        ckpt.save(step, state, it, meta, force=True)
        last_good = step
      # After the step's log line and checkpoint, so that a resume logs the next step.
      if preemption.reached(step):
        if last_good != step:
          ckpt.save(step, state, it, meta, force=True)
        raise Preempted(
            f"Stopped by {preemption.signal_name} after step {step}; its checkpoint is in "
            f"{ckpt.directory}. Run the same command again to resume.", preemption.signum)
  finally:  # Also on errors and interrupts: finish the checkpoints in flight.
    preemption.close()
    if events:
      events.close()
    ckpt.close()
    if hasattr(it, "close"):
      it.close()
  return model, state, builder


class Preempted(Exception):
  """Training stopped on SIGTERM or SIGINT after checkpointing; rerunning resumes.
  `signum` is the signal (the exit status is 128 + it)."""

  def __init__(self, message: str, signum: int = signal.SIGTERM):
    super().__init__(message)
    self.signum = int(signum)


class PreemptionWatch:
  """Notices SIGTERM (what SLURM, Kubernetes and Cloud TPU send before
  preempting) and SIGINT (Ctrl-C). On one process a signal handler sets a flag
  and training stops after the current step with a checkpoint; a second Ctrl-C
  stops at once (without one). On several processes JAX's coordination service
  makes every process stop at the same step on SIGTERM, so that the checkpoint
  they write together is consistent (SIGINT keeps its default there)."""

  _NAMES = {signal.SIGTERM: "SIGTERM (preemption)", signal.SIGINT: "SIGINT (Ctrl-C)"}

  def __init__(self):
    self.requested, self.signum, self._previous = False, signal.SIGTERM, {}
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)

  @property
  def signal_name(self) -> str:
    return self._NAMES.get(self.signum, f"signal {self.signum}")

  def _handle(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt  # The second Ctrl-C: stop now, without a checkpoint.
    self.requested, self.signum = True, signum
    # os.write, not print: the handler may run while the main thread is printing.
    os.write(2, f"{self.signal_name} received: stopping after this step with a checkpoint "
                "(press Ctrl-C again to stop at once, without one).\n".encode())

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def close(self):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}


def _drop_lines_after(path: str, step: int):
  """Removes the metrics a stopped run logged after its last checkpoint: the
  resumed run logs those steps again (the same values), once."""
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  keep = [line for line in lines if _logged_step(line) <= step]
  if len(keep) != len(lines):
    with open(path + ".tmp", "w") as f:
      f.writelines(keep)
    os.replace(path + ".tmp", path)


def _logged_step(line: str) -> float:
  """A jsonl line's step; a line cut short by a kill counts as after every step."""
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError, TypeError):
    return float("inf")


def _append_jsonl(path: str, record: dict):
  if jax.process_index() == 0:
    with open(path, "a") as f:
      f.write(json.dumps(record) + "\n")


def pretrained_state(config, workdir: str):
  """(model, state) holding the weights of `model.init_from`, for evaluation
  without training (train.total_steps=0); no checkpoint is written."""
  os.makedirs(workdir, exist_ok=True)
  model = resnet.build(config.model)
  mesh = sharding.make_mesh()
  state = init_state(model, None, optax.identity(), config, jax.random.key(config.seed), mesh)
  return model, load_pretrained(state, config, workdir)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains, then evaluates on the queries and references; returns metrics.
  With train.total_steps=0 it evaluates `model.init_from` as it is. The
  config, the init file, the workdir and both datasets are checked before
  training."""
  from asl_jax.evaluation import icd
  config_check.validate(config, workdir, jax.device_count())
  check_init_from(config)
  builder = data.prepare(config.data, log=log)
  eval_builder = builder
  if config.eval.data_name and config.eval.data_name != config.data.name:
    eval_builder = data.prepare(config.data, log=log, name=config.eval.data_name)
  config_check.check_reference_count(
      config, eval_builder.info.splits["references"].num_examples, eval_builder.info.full_name)
  if config.train.total_steps == 0:
    model, state = pretrained_state(config, workdir)
  else:
    model, state, builder = train(config, workdir, builder=builder)
  return icd.evaluate_model(model, state, eval_builder, config, workdir, log=log,
                            background_builder=builder)
