"""The optimizer of `config.optim`: Adam(W) with warmup and a cosine or step
schedule, gradient clipping, the regular expression (optim.trainable) that
picks the parameters that train, and per-parameter learning-rate factors
(optim.lr_mults)."""

import re

import jax
import numpy as np
import optax

from asl_jax.errors import UserError


def make_optimizer(cfg, total_steps: int):
  """Adam(W) with linear warmup, then a cosine decay (optim.schedule=cosine)
  or steps (optim.schedule=steps: x optim.decay at each of optim.milestones,
  fractions of the run, as the RS@k paper's schedule), from `config.optim`."""
  if cfg.schedule == "steps":
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
  if cfg.lr_mults:
    parts.append(scale_by_path(cfg.lr_mults))
  tx = optax.chain(*parts)
  if cfg.trainable:
    # The other leaves get no update at all (no weight decay either).
    tx = optax.multi_transform(
        {True: tx, False: optax.set_to_zero()},
        lambda params: trainable_mask(params, cfg.trainable))
  return tx, schedule


def lr_mult(path: str, lr_mults) -> float:
  """The factor of optim.lr_mults whose regular expression first matches
  `path` (re.search), 1 where none does."""
  return next((float(f) for pattern, f in lr_mults if re.search(pattern, path)), 1.0)


def scale_by_path(lr_mults) -> optax.GradientTransformation:
  """Each update times its parameter's `lr_mult`, after Adam(W): the same as
  that parameter's learning rate (and decoupled weight decay) times the
  factor, as big_vision's `lr_mults`."""
  def scale(updates, params=None):
    del params
    return jax.tree_util.tree_map_with_path(
        lambda p, u: u * lr_mult(_path(p), lr_mults), updates)
  return optax.stateless(scale)


def _path(key_path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in key_path)


def trainable_mask(params, pattern: str):
  """The tree of `params` with True where a leaf trains: its path
  ("model/embed_fc/kernel", "classifier/kernel") matches the regular
  expression `pattern` (optim.trainable; re.search), all when it is ''."""
  if not pattern:
    return jax.tree.map(lambda _: True, params)
  regex = re.compile(pattern)
  return jax.tree_util.tree_map_with_path(lambda p, _: bool(regex.search(_path(p))), params)


def _example_paths(params, count: int = 3) -> str:
  """A few of this model's parameter paths, spread over it, for an error message."""
  paths = [_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  picks = [paths[i] for i in sorted({round(k * (len(paths) - 1) / max(count - 1, 1))
                                     for k in range(count)})] if paths else []
  return ", ".join(repr(p) for p in picks)


def check_trainable(params, pattern: str, log=print):
  """optim.trainable must name at least one parameter; logs what trains."""
  if not pattern:
    return
  mask = trainable_mask(params, pattern)
  paths = [_path(p) for p, t in jax.tree_util.tree_leaves_with_path(mask) if t]
  if not paths:
    raise UserError(f"optim.trainable={pattern!r} matches no parameter, so nothing would "
                    f"train. This model's parameter paths look like {_example_paths(params)}; "
                    "give a regular expression that finds the ones to train, or '' for all.")
  count = sum(int(np.prod(x.shape)) for x, t in zip(jax.tree.leaves(params),
                                                    jax.tree.leaves(mask), strict=True) if t)
  log(f"optim.trainable={pattern!r}: {len(paths)} parameter arrays ({count} values) train, "
      "the others stay as they are")


def check_lr_mults(params, lr_mults, log=print, trainable: str = ""):
  """Each optim.lr_mults pattern must match a parameter that trains
  (optim.trainable) and that it reaches (an earlier pattern takes a path
  first); logs how many values each scales."""
  if not lr_mults:
    return
  leaves = [(_path(p), int(np.prod(x.shape)))
            for p, x in jax.tree_util.tree_leaves_with_path(params)
            if not trainable or re.search(trainable, _path(p))]
  for i, (pattern, factor) in enumerate(lr_mults):
    hit = [(path, n) for path, n in leaves
           if re.search(pattern, path) and not any(re.search(q, path) for q, _ in lr_mults[:i])]
    if not hit:
      raise UserError(f"optim.lr_mults: {pattern!r} matches no parameter that trains "
                      "(optim.trainable), or only ones an earlier pattern takes, so its factor "
                      "would change nothing. This model's parameter paths look like "
                      f"{_example_paths(params)}.")
    log(f"optim.lr_mults: {pattern!r} x{factor}: {len(hit)} parameter arrays "
        f"({sum(n for _, n in hit)} values)")
