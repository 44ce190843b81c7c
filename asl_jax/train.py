"""ASL training: one jitted update over a data-parallel mesh, then evaluation.

`train_and_evaluate(config, workdir)` is what `python -m asl_jax.main` runs
and what the tests call. The parts live apart: the loss in objective.py, the
two-pass gradient in two_pass.py, the optimizer in optim.py, the state and its
initialisation in train_state.py, preemption in preemption.py, and every check
of the config alone in config_check.py (run before any data is prepared).
"""

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from asl_jax import (checkpointing, config_check, data, input_pipeline, optim, paths,
                     run_config, sharding, tensorboard)
from asl_jax.errors import UserError
# Also reached as train.<name> by main (Preempted), benchmarks, flops and tests.
from asl_jax.objective import loss_fn
from asl_jax.optim import make_optimizer, trainable_mask
from asl_jax.preemption import Preempted, PreemptionWatch
from asl_jax.train_state import (abstract_params, build_modules, check_init_from, init_state,
                                 load_pretrained, pretrained_state)
from asl_jax.two_pass import two_pass_gradients


def log(msg: str):
  if jax.process_index() == 0:
    print(msg, flush=True)


def make_update_fn(model, classifier, tx, schedule, config, mesh, state):
  """The jitted `update(state, batch, rng) -> (state, metrics)`: one update
  per batch, in one pass or (train.num_chunks > 1) two."""
  num_chunks = config.train.num_chunks
  pattern = config.optim.trainable
  trainable = trainable_mask(state.params, pattern) if pattern else None
  frozen_bn = config.train.batch_norm == "frozen"
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
def _training_sources(config, builder):
  """(training images, hard-negative pairs or None, number of identities) of
  the prepared set; a set without what the config asks for is a UserError."""
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
  return train_src, pairs_src, num_classes


def train(config, workdir: str, builder=None):
  """Checks the config, then trains (or resumes) in `workdir`; returns
  (model, state, builder)."""
  config_check.validate(config, num_devices=jax.device_count())
  return _train(config, workdir, builder)


def _train(config, workdir: str, builder=None):
  """`train` once the config is checked (train_and_evaluate checks it first)."""
  # optim.trainable / lr_mults name parameters: checked before data is prepared.
  params = abstract_params(config)
  optim.check_trainable(params, config.optim.trainable, log=lambda *_: None)
  optim.check_lr_mults(params, config.optim.lr_mults, lambda *_: None, config.optim.trainable)
  os.makedirs(workdir, exist_ok=True)
  builder = builder or data.prepare(config.data, log=log)
  mesh = sharding.make_mesh()
  train_src, pairs_src, num_classes = _training_sources(config, builder)
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
    state = load_pretrained(state, config, workdir, log)
  start = int(start or 0)
  optim.check_trainable(state.params, config.optim.trainable, log)
  optim.check_lr_mults(state.params, config.optim.lr_mults, log, config.optim.trainable)
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
      if step == start + 1:
        _check_gradient(metrics, config, step)
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


def _check_gradient(metrics: dict, config, step: int):
  """A first update whose gradient is exactly zero means nothing would ever
  train: the parameters optim.trainable selects lie outside every active
  loss's reach (in sscd_photos the only loss is the gate's norm-ratio loss,
  which reaches model/gate_* alone), or no pair of views can be ordered.
  The active losses are the step's own terms (objective: loss/<config.loss field>)."""
  if float(jax.device_get(metrics["grad_norm"])) != 0.0:
    return
  names = [k.removeprefix("loss/") for k in metrics if k.startswith("loss/") and k != "loss/total"]
  active = ", ".join(f"loss.{k}={config.loss[k]}" for k in names)
  what = (f"the parameters optim.trainable={config.optim.trainable!r} selects"
          if config.optim.trainable else "the model's parameters")
  raise UserError(
      f"The gradient of the training loss is exactly zero at step {step}, so training would "
      f"change nothing: no active loss ({active or 'none'}) reaches {what}, or the norm-ratio "
      "loss found no two views of an image whose information amounts differ (data.crop_area, "
      "data.edit_information). Choose parameters an active loss reaches with optim.trainable "
      "(where the norm-ratio loss on model.gate_feature=gate_head or gate_trunk is the only "
      "loss, those are the model/gate_ ones), or switch on a loss that reaches them. No "
      "checkpoint of this step was written.")


def _drop_lines_after(path: str, step: int):
  """Removes the metrics a stopped run logged after its last checkpoint: the
  resumed run logs those steps again (the same values), once."""
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  keep = [line for line in lines if _logged_step(line) <= step]
  if len(keep) != len(lines):
    with paths.replaced_when_written(path, suffix=".tmp") as f:
      f.writelines(keep)


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
    model, state = pretrained_state(config, workdir, log)
  else:
    model, state, builder = _train(config, workdir, builder=builder)
  return icd.evaluate_model(model, state, eval_builder, config, workdir, log=log,
                            background_builder=builder)
