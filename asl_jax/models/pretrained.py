"""Pretrained ResNet initialisation from torchvision- and timm-format files.

Reads, without PyTorch:
* `.pth` / `.pt`: PyTorch's zip checkpoint format (torch >= 1.6, what
  torchvision and most self-supervised releases such as Barlow Twins ship),
  through a restricted unpickler that only rebuilds tensors and dicts, so a
  checkpoint cannot run code;
* `.safetensors` (timm, Hugging Face): the JSON header and raw buffers.

A state dict, or one nested under `state_dict` / `model` / `module`, with
optional `module.`, `backbone.` or `model.` prefixes, is mapped onto the trunk
of `CopyDetector`: convolutions [O, I, kh, kw] -> [kh, kw, I, O], BatchNorm
weight/bias -> scale/bias and running_mean/var -> batch statistics. SSCD's
torchvision layout (`sscd/models/model.py`: `backbone.*` a torchvision
ResNet whose `fc` is the 2048 -> 512 projection, GeM p = 3 a constant, not a
tensor) also fills the `model.head="sscd"` layer `embed_fc`; the GeM exponent
keeps its initial value 3. The
report says which tensors were loaded, which of the model's were new (GeM,
projector, descriptor head) and which of the file's were ignored (the `fc`
classifier, `num_batches_tracked`). A trunk tensor missing from the file, a
shape mismatch, or a file tensor that maps to nothing is an error unless
`strict=False`.
"""

import collections
import dataclasses
import io
import json
import os
import pickle
import re
import struct
import zipfile

import jax
import numpy as np

from asl_jax.errors import UserError

_TORCH_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_SAFETENSORS_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16,
                       "BF16": "bfloat16", "I64": np.int64, "I32": np.int32,
                       "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_TRUNK = re.compile(r"conv1|bn1|layer\d_\d+")  # Top-level Flax scopes of the trunk.
IGNORED = re.compile(r"(fc|head\.fc|classifier)\.(weight|bias)|.*num_batches_tracked")


def _dtype(name):
  if name == "bfloat16":
    import ml_dtypes
    return ml_dtypes.bfloat16
  return np.dtype(name)


# -------------------------------------------------------------- file readers --
@dataclasses.dataclass
class _StorageType:
  dtype: object


def _rebuild_tensor(storage, offset, size, stride, *unused):
  itemsize = storage.dtype.itemsize
  return np.lib.stride_tricks.as_strided(
      storage[offset:], shape=tuple(size),
      strides=tuple(s * itemsize for s in stride)).copy()


class _TorchUnpickler(pickle.Unpickler):
  """Rebuilds tensors as numpy arrays; refuses every other global."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self.archive, self.prefix = archive, prefix

  def find_class(self, module, name):
    if (module, name) in (("torch._utils", "_rebuild_tensor_v2"),
                          ("torch._utils", "_rebuild_tensor")):
      return _rebuild_tensor
    if module == "torch" and name in _TORCH_DTYPES:
      return _StorageType(_dtype(_TORCH_DTYPES[name]))
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_parameter"):
      return lambda data, requires_grad, hooks: data
    raise pickle.UnpicklingError(
        f"the checkpoint holds a {module}.{name} object; only tensors and "
        "(nested) dicts of them can be read (save model.state_dict()).")

  def persistent_load(self, pid):
    kind, storage_type, key, _, numel = pid[:5]
    if kind != "storage":
      raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
    dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else np.float32
    data = self.archive.read(f"{self.prefix}/data/{key}")
    return np.frombuffer(data, dtype=dtype, count=numel)


def read_torch(path: str) -> dict:
  if not zipfile.is_zipfile(path):
    raise UserError(
        f"{path} is not a PyTorch zip checkpoint (the format of torch >= 1.6). model.init_from "
        "takes an .onnx file, a torchvision-format .pth/.pt, a timm .safetensors or an asl_jax "
        "run's --workdir. If this is a checkpoint of an older torch, re-save it with a recent "
        "one: torch.save(torch.load(path), new_path).")
  with zipfile.ZipFile(path) as archive:
    pkl = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if not pkl:
      raise UserError(f"{path} has no data.pkl: not a PyTorch checkpoint.")
    prefix = pkl[0][: -len("/data.pkl")]
    try:
      return _TorchUnpickler(io.BytesIO(archive.read(pkl[0])), archive, prefix).load()
    except pickle.UnpicklingError as e:
      raise UserError(f"Cannot read {path}: {e}") from None


def read_safetensors(path: str) -> dict:
  with open(path, "rb") as f:
    (length,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(length))
    data = f.read()
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    start, end = info["data_offsets"]
    out[name] = np.frombuffer(data[start:end], _dtype(_SAFETENSORS_DTYPES[info["dtype"]])
                              ).reshape(info["shape"])
  return out


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """name -> float32 array, from a .pth/.pt or .safetensors file."""
  if not os.path.isfile(path):
    raise UserError(f"model.init_from={path!r}: no such file. Give the path of a "
                    "torchvision-format .pth/.pt or a timm .safetensors checkpoint, an "
                    "ONNX copy detector (.onnx), or an asl_jax run's --workdir.")
  raw = read_safetensors(path) if path.endswith(".safetensors") else read_torch(path)
  for key in ("state_dict", "model", "module"):  # Common wrappers.
    if isinstance(raw, dict) and isinstance(raw.get(key), dict):
      raw = raw[key]
  out = {}
  for name, value in raw.items():
    if not isinstance(value, np.ndarray):
      continue
    for prefix in ("module.", "backbone.", "model.", "encoder."):
      name = name.removeprefix(prefix)
    out[name] = value.astype(np.float32) if value.dtype != np.int64 else value
  return out


# ------------------------------------------------------------------ mapping --
def flax_path(name: str) -> tuple[str, tuple[str, ...]] | None:
  """torchvision name -> ('params' | 'batch_stats', Flax path), or None."""
  m = re.fullmatch(r"(?:layer(\d)\.(\d+)\.)?(conv\d|bn\d|downsample\.[01])\."
                   r"(weight|bias|running_mean|running_var)", name)
  if not m:
    return None
  stage, block, module, leaf = m.groups()
  module = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(
      module, module)
  scope = (f"layer{stage}_{block}", module) if stage else (module,)
  is_conv = module.startswith("conv") or module == "downsample_conv"
  if is_conv:
    return ("params", scope + ("kernel",)) if leaf == "weight" else None
  collection = "batch_stats" if leaf.startswith("running") else "params"
  flax_leaf = {"weight": "scale", "bias": "bias", "running_mean": "mean",
               "running_var": "var"}[leaf]
  return collection, scope + (flax_leaf,)


def _convert(value: np.ndarray) -> np.ndarray:
  return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value


def _get(tree, path):
  for p in path:
    if not isinstance(tree, dict) or p not in tree:
      return None
    tree = tree[p]
  return tree


def _leaf_paths(tree) -> list[tuple[str, ...]]:
  return [tuple(k.key for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


@dataclasses.dataclass
class LoadReport:
  loaded: list
  new: list
  ignored: list
  missing: list
  mismatched: list
  unused: list
  seeded: list = dataclasses.field(default_factory=list)  # Copied from another leaf.

  def summary(self) -> str:
    seeded = (f", {len(self.seeded)} leaves of the gate's own trunk copied from the "
              "trunk's" if self.seeded else "")
    return (f"{len(self.loaded)} tensors loaded, {len(self.new)} model leaves new "
            f"(not in the file: {', '.join(sorted({p[0] for p in self.new})) or '-'}), "
            f"{len(self.ignored)} file tensors ignored ({', '.join(self.ignored[:4])}"
            f"{'...' if len(self.ignored) > 4 else ''}), {len(self.missing)} missing, "
            f"{len(self.mismatched)} mismatched, {len(self.unused)} unused{seeded}")

  def seed_gate_trunk(self, params: dict, batch_stats: dict):
    """model.gate_feature="gate_trunk": the gate's own trunk (the modules
    named resnet.GATE_TRUNK_PREFIX + a trunk module's name) starts as a copy
    of the loaded trunk, in `params` and `batch_stats` (host dicts, changed
    in place); those leaves leave `new` for `seeded`."""
    from asl_jax.models import resnet
    prefix = resnet.GATE_TRUNK_PREFIX
    for tree in (params, batch_stats):
      for key in [k for k in tree if k.startswith(prefix)]:
        tree[key] = jax.tree.map(np.array, tree[key[len(prefix):]])
    self.seeded = [p for p in self.new if p[0].startswith(prefix)]
    self.new = [p for p in self.new if not p[0].startswith(prefix)]


# SSCD's linear head: `backbone.fc` in its torchvision layout (the prefix is
# stripped on reading), `embeddings.1` in its Classy Vision one.
HEAD_NAMES = {"fc.weight": "kernel", "fc.bias": "bias", "embeddings.1.weight": "kernel",
              "embeddings.1.bias": "bias"}


def _head_target(name, value, params):
  """('params', ('embed_fc', leaf)) when `name` is SSCD's linear head and the
  model has one of its shape (model.head="sscd"), else None: an ImageNet
  classifier `fc` (1000 outputs) stays ignored."""
  leaf = HEAD_NAMES.get(name)
  kernel = _get(params, ("embed_fc", "kernel"))
  if leaf is None or kernel is None or value.shape[0] != kernel.shape[1]:
    return None
  if leaf == "kernel" and value.shape != kernel.shape[::-1]:
    return None
  return "params", ("embed_fc", leaf)


def load_into(params: dict, batch_stats: dict, state_dict: dict, strict: bool = True,
              source: str = "the checkpoint"):
  """Returns (params, batch_stats, report) with the trunk taken from
  `state_dict` (torchvision names) and, for model.head="sscd", SSCD's linear
  head (`fc` / `embeddings.1`, as `HEAD_NAMES`) where the file has one of the
  model's shape. Arrays keep their dtypes; the caller places them on devices."""
  params = jax.tree.map(np.asarray, params)
  batch_stats = jax.tree.map(np.asarray, batch_stats)
  trees = {"params": params, "batch_stats": batch_stats}
  loaded, ignored, mismatched, unused, seen = [], [], [], [], set()
  for name, value in state_dict.items():
    head = _head_target(name, value, params)
    if head is not None:
      leaf = value.T if value.ndim == 2 else value  # Linear [out, in] -> kernel [in, out].
      trees["params"]["embed_fc"][head[1][1]] = leaf.astype(params["embed_fc"]["kernel"].dtype)
      loaded.append(name)
      seen.add(head)
      continue
    if IGNORED.fullmatch(name):
      ignored.append(name)
      continue
    target = flax_path(name)
    leaf = _get(trees[target[0]], target[1]) if target else None
    if leaf is None:
      unused.append(name)
      continue
    value = _convert(value)
    if value.shape != leaf.shape:
      mismatched.append(f"{name} {tuple(value.shape)} vs {'/'.join(target[1])} "
                        f"{tuple(leaf.shape)}")
      continue
    parent = _get(trees[target[0]], target[1][:-1])
    parent[target[1][-1]] = value.astype(leaf.dtype)
    loaded.append(name)
    seen.add(target)
  # The trunk is what a torchvision ResNet file holds; the rest is new.
  trunk = [(c, p) for c, tree in trees.items() for p in _leaf_paths(tree)
           if _TRUNK.fullmatch(p[0])]
  missing = ["/".join((c,) + p) for c, p in trunk if (c, p) not in seen]
  new = [p for p in _leaf_paths(params)
         if not _TRUNK.fullmatch(p[0]) and ("params", p) not in seen]
  report = LoadReport(loaded, new, ignored, missing, mismatched, unused)
  problems = [(report.missing, "model tensors missing from the file"),
              (report.mismatched, "tensors with mismatched shapes"),
              (report.unused, "file tensors that map to nothing in the model")]
  problems = [f"{len(items)} {what} ({'; '.join(items[:4])})" for items, what in problems
              if items]
  if problems and strict:
    raise UserError(
        f"model.init_from: {source} does not fit model.variant: " + "; ".join(problems)
        + ". Check that model.variant (and model.width) match the checkpoint's "
        "architecture, or set model.init_strict=False to load what fits.")
  return params, batch_stats, report

