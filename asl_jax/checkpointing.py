"""Orbax checkpoints of the train state and the input pipeline's position.

Each checkpoint holds `state` (params, BN statistics, optimiser state, step),
`data` (the Grain iterator state) and `meta` (the step and the config fields
that fix the shapes). A rerun in the same workdir restores the latest one;
one written by an incompatible config is refused with the differences named,
and left on disk.
"""

import json
import os

import grain
import jax
import orbax.checkpoint as ocp

from asl_jax import data
from asl_jax.errors import UserError


def fingerprint(config) -> dict:
  """The config fields a checkpoint's shapes and data order depend on."""
  d = config.data
  return {
      # Where the initial weights came from does not change what resumes.
      # model.head only when not the default, so that older checkpoints match.
      "model": {k: v for k, v in json.loads(config.model.to_json()).items()
                if k not in ("init_from", "init_strict") and (k, v) != ("head", "bot")},
      "loss.classification": float(config.loss.classification) > 0,
      "data.name": d.name,
      "data.image_size": d.image_size,
      "data.ids_per_batch": d.ids_per_batch,
      "data.views_per_id": d.views_per_id,
      "data.pair_ids_per_batch": d.pair_ids_per_batch,
      # The saved Grain position is laid out per worker process.
      "data.num_workers": data.worker_processes(d.num_workers),
      "data.synthetic": json.loads(d.synthetic.to_json()) if d.name == "ndec/synthetic" else None,
      # Only when set, so that checkpoints from before the field still match.
      **({"data.train_every": d.train_every} if d.train_every != 1 else {}),
      # Pre-generated views feed another pipeline (its saved position differs).
      **({"data.pregenerated_views": True} if d.views_dir else {}),
  }


def _differences(saved: dict, current: dict, prefix="") -> list[str]:
  out = []
  for key in sorted(set(saved) | set(current)):
    a, b = saved.get(key), current.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += _differences(a, b, f"{prefix}{key}.")
    elif a != b and key != "num_workers":
      out.append(f"{prefix}{key}: {a!r} in the checkpoint, {b!r} now")
  return out


class Checkpointer:
  """Saves every `every` steps (and when asked), keeping the last `keep`."""

  def __init__(self, workdir: str, every: int, keep: int):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.every = every
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator, meta: dict, force=False):
    if not force and step % self.every:
      return
    self.manager.save(step, force=force, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        meta=ocp.args.JsonSave(meta)))

  def check_compatible(self, step: int, current: dict):
    meta = self.manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta
    saved = {"data.num_workers": 0, **meta.get("fingerprint", {})}  # Older: no workers.
    diff = _differences(saved, current)
    if diff:
      raise UserError(
          f"The workdir holds a checkpoint (step {step}, in {self.directory}) "
          "written with an incompatible config: " + "; ".join(diff) + ". Use "
          "another --workdir for the new config, or rerun with the config "
          "that wrote it. The checkpoint was left untouched.")

  def restore(self, step: int, abstract_state, data_iterator):
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data=grain.checkpoint.CheckpointRestore(data_iterator)))
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(
          f"Could not restore the checkpoint of step {step} from "
          f"{self.directory}: {e}. It does not match the current model; use "
          "another --workdir. The checkpoint was left untouched.") from None
    return restored.state

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract(tree):
  """Shape/dtype/sharding structs to restore into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def restore_model_variables(workdir: str) -> tuple[int, dict, dict]:
  """(step, model params, batch_stats) of the latest checkpoint in
  `workdir`, for inference (the optimiser state and the input pipeline's
  position are read but not returned); nothing is written."""
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  steps = [int(d) for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(
      directory) else []
  if not steps:
    raise UserError(f"{directory} holds no checkpoint: --workdir must be a run that "
                    "trained at least to its first checkpoint (train.checkpoint_every).")
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      create=False, read_only=True, save_interval_steps=0)) as manager:
    step = manager.latest_step()
    try:
      state = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore())).state
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
      raise UserError(f"Could not read the checkpoint of step {step} in {directory}: "
                      f"{e}. The checkpoint was left untouched.") from None
  return step, state["params"]["model"], state["batch_stats"]


def _step_dir(path: str) -> str:
  """The step directory (holding `state`) that `path` names: a workdir (its
  latest checkpoint), its `checkpoints` directory (the latest) or one step's
  directory."""
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, "state")):
    return path
  for directory in (os.path.join(path, "checkpoints"), path):
    steps = [int(n) for n in os.listdir(directory) if n.isdigit()
             and os.path.isdir(os.path.join(directory, n, "state"))] if os.path.isdir(
                 directory) else []
    if steps:
      return os.path.join(directory, str(max(steps)))
  evaluate_only = os.path.isfile(os.path.join(path, "config.json"))
  raise UserError(
      f"model.init_from={path!r} is a directory without asl_jax checkpoints"
      + (" (a run that trained no step, such as an evaluation with train.total_steps=0, writes "
         "none: give the model.init_from that run was given, in its config.json)"
         if evaluate_only else "")
      + ". Give a run's --workdir that holds checkpoints, its checkpoints/ directory or one "
      "checkpoints/<step> directory (or an .onnx, .pth/.pt or .safetensors file).")


def load_model_from(path: str, params: dict, batch_stats: dict, config):
  """(params, batch_stats, report): the model's parameters and BatchNorm
  statistics restored from another run's checkpoint (`_step_dir`), read only
  (nothing there is written). Every leaf must match the model's shape; the
  optimiser state and the classifier are not read."""
  import numpy as np
  from asl_jax.models import pretrained
  step_dir = _step_dir(path)
  checkpointer = ocp.PyTreeCheckpointer()
  saved = checkpointer.metadata(os.path.join(step_dir, "state")).item_metadata.tree
  target = {"params": {"model": params}, "batch_stats": batch_stats}
  shape = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)
  mine = {"params": {"model": shape(params)}, "batch_stats": shape(batch_stats)}
  theirs = {"params": {"model": shape(saved.get("params", {}).get("model", {}))},
            "batch_stats": shape(saved.get("batch_stats", {}))}
  if mine != theirs:
    hint = ""
    meta_file = os.path.join(step_dir, "meta", "metadata")
    if os.path.isfile(meta_file):
      with open(meta_file) as f:
        saved_model = json.load(f).get("fingerprint", {}).get("model", {})
      now = json.loads(config.model.to_json())
      diff = [f"--config.model.{k}={v!r}" for k, v in saved_model.items()
              if k not in ("init_from", "init_strict") and now.get(k) != v]
      hint = f" The run was trained with {' '.join(diff)}." if diff else ""
    raise UserError(
        f"model.init_from: the checkpoint in {step_dir} holds a model of other shapes than "
        f"this config's.{hint} Evaluate it with the model settings it was trained with.")
  args = jax.tree.map(lambda x: ocp.RestoreArgs(restore_type=np.ndarray), target)
  restored = checkpointer.restore(os.path.join(step_dir, "state"), args=ocp.args.PyTreeRestore(
      item=target, restore_args=args, partial_restore=True))
  cast = lambda new, old: jax.tree.map(lambda n, o: np.asarray(n, np.asarray(o).dtype), new, old)
  loaded = [("params",) + p for p in pretrained._leaf_paths(params)] + [
      ("batch_stats",) + p for p in pretrained._leaf_paths(batch_stats)]
  report = pretrained.LoadReport(["/".join(p) for p in loaded], [], [], [], [], [])
  return (cast(restored["params"]["model"], params), cast(restored["batch_stats"], batch_stats),
          report)
