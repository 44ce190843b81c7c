"""The config a workdir's model was trained with (`config.json`), and what a
resume may change.

A fresh run writes `config.json` before its first step. A resume compares it
with the new config: a difference in a training-side field (anything that
shapes the model, the data order, the losses or the optimiser) is refused with
the fields named, because the checkpoint was trained with the saved values;
evaluation-side changes (`eval.*`) and where-things-are / how-often-to-log
fields are accepted and said. `config.json` is then rewritten with the
accepted changes only, so that it never disagrees with the checkpoint.
"""

import json
import os

from asl_jax import paths
from asl_jax.errors import UserError

FILE = "config.json"

# Fields a resume may change without changing what was trained: where the data
# lies, how often to log and checkpoint, how many reader threads.
LOGISTICS = ("data.data_dir", "data.manual_dir", "data.num_threads", "data.prepare_workers",
             "train.log_every", "train.checkpoint_every", "train.keep_checkpoints")
# Values that are maps a recipe chooses whole (edit -> probability, ...), not sections:
# `complete` keeps a saved one as it is rather than adding the demo's keys.
MAPS = ("data.train_edits", "data.edit_params", "data.edit_information")
# Read only by a fresh run; a resume restores the weights instead, so the saved
# value (where the checkpoint's weights came from) stays in config.json.
FRESH_ONLY = ("model.init_from", "model.init_strict")


def flatten(tree: dict, prefix: str = "") -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _side(field: str) -> str:
  if field.startswith("eval."):
    return "evaluation"
  if field in LOGISTICS:
    return "logistics"
  if field in FRESH_ONLY:
    return "fresh_only"
  return "training"


def differences(saved: dict, current: dict) -> dict[str, list[str]]:
  """The fields that differ, by side: {'training': ['x: a in the run, b now'], ...}.
  Fields one of the two lacks (a config from another version) are not compared."""
  a, b = flatten(saved), flatten(current)
  out = {"training": [], "evaluation": [], "logistics": [], "fresh_only": []}
  for field in sorted(set(a) & set(b)):
    if a[field] != b[field]:
      out[_side(field)].append(f"{field}: {a[field]!r} in the run, {b[field]!r} now")
  return out


def complete(saved: dict):
  """A saved config (config.json) as a ConfigDict holding every field the code
  reads: those it lacks (a run from before they existed) come from the
  recipes' defaults (configs/common.py, the demo's values). The one place
  where a config from another version is filled in."""
  import ml_collections

  from configs import common

  def fill(defaults: dict, given: dict, prefix: str) -> dict:
    out = dict(given)
    for key, value in defaults.items():
      if key not in given:
        out[key] = value
      elif (isinstance(value, dict) and isinstance(given[key], dict)
            and prefix + key not in MAPS):
        out[key] = fill(value, given[key], f"{prefix}{key}.")
    return out
  return ml_collections.ConfigDict(fill(as_dict(common.demo()), saved, ""))


def as_dict(config) -> dict:
  """The config as config.json holds it (tuples as lists)."""
  return json.loads(config.to_json())


def write(workdir: str, record: dict):
  """Writes config.json atomically (a kill leaves the old one or the new one)."""
  path = os.path.join(workdir, FILE)
  with paths.replaced_when_written(path, suffix=".tmp") as f:
    json.dump(record, f, indent=2)


def check_resume(workdir: str, config, resuming: bool, log=print, writer=True) -> dict:
  """Refuses a resume whose training-side fields differ from config.json's,
  says which evaluation-side changes it accepts, and writes config.json (the
  new config, with the saved values of the fresh-only fields when resuming).
  Returns what it wrote (writer=False: the other processes of a multi-host
  run, which only check)."""
  path = os.path.join(workdir, FILE)
  current = as_dict(config)
  if not resuming or not os.path.exists(path):
    if resuming:
      log(f"Note: {path} is missing (a run from before it was written); only the fields "
          "the checkpoint records were compared.")
    if writer:
      write(workdir, current)
    return current
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{path} could not be read as JSON ({e}). It records the config the "
                    "checkpoint was trained with; restore it, or use another --workdir. "
                    "Nothing was changed.") from None
  diff = differences(saved, current)
  if diff["training"]:
    raise UserError(
        f"The workdir's checkpoint was trained with another config ({path}): "
        + "; ".join(diff["training"]) + ". A resume must keep the training-side fields "
        "(only eval.* and where-things-are / logging fields may change): rerun with the "
        "saved values, or use another --workdir for the new config. Nothing was changed.")
  if diff["evaluation"]:
    log("Resuming with evaluation-side changes: " + "; ".join(diff["evaluation"]))
  if diff["logistics"]:
    log("Resuming with changed run settings: " + "; ".join(diff["logistics"]))
  if diff["fresh_only"]:
    log("Note: " + "; ".join(diff["fresh_only"]) + " (read only by a fresh run; the "
        "checkpoint's weights are resumed, and config.json keeps the saved value).")
  record = json.loads(json.dumps(current))
  flat_saved = flatten(saved)
  for field in FRESH_ONLY:
    section, key = field.split(".")
    if field in flat_saved and key in record.get(section, {}):
      record[section][key] = flat_saved[field]
  if writer:
    write(workdir, record)
  return record
