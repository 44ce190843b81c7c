"""`python -m asl_jax.export`: the run's model under onnxruntime gives the
descriptors and gate norms its evaluation computed."""

import json
import os

import numpy as np
import pytest

from asl_jax import copy_edits, data, export, inference
from asl_jax.evaluation import io
from conftest import copy_run_with_eval

pytest.importorskip("jax2onnx", reason="jax2onnx is not installed (pip install --no-deps "
                    "jax2onnx 'onnx-ir>=1.1'; asl_jax/onnx_export.py says why --no-deps)")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")


def test_onnx_descriptors_match_the_runs_evaluation(tiny_run, tiny_builder, tmp_path, capsys):
  workdir, config = tiny_run
  path = str(tmp_path / "model.onnx")
  assert export.main(["--workdir", workdir, "--out", path]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["check"]["min_cosine"] >= export.MIN_COSINE
  import onnx
  proto = onnx.load(path)
  (image_input,) = proto.graph.input
  dims = [d.dim_param or d.dim_value for d in image_input.type.tensor_type.shape.dim]
  assert image_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
  assert dims[1:] == [40, 40, 3] and isinstance(dims[0], str)  # eval.image_size; any batch.
  assert {p.key: p.value for p in proto.metadata_props}["image_size"] == "40"
  # The references as the evaluation embeds them: decoded, resized to 40 x 40.
  src = data.source(tiny_builder, "references")
  images = np.stack([copy_edits.resize(data.decode_image(src[i]["image"], src[i]), (40, 40))
                     for i in range(len(src))])
  session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
  ids, expected = io.read_descriptors(os.path.join(workdir, "references.h5"))
  norms = io.read_gate_norms(os.path.join(workdir, "references.h5"))
  assert ids == [data.text(src[i]["id"]) for i in range(len(src))]
  for batch in (1, 7, len(images)):  # The batch dimension is dynamic.
    d, g = session.run(["descriptor", "gate_norm"], {"images": images[:batch]})
    assert d.shape == (batch, config.model.descriptor_dim) and g.shape == (batch,)
  d, g = session.run(["descriptor", "gate_norm"], {"images": images})
  np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
  assert np.sum(d * expected, axis=1).min() >= 0.9999
  np.testing.assert_allclose(g, [norms[i] for i in ids], rtol=1e-4)


def test_a_flip_averaged_gate_norm_is_in_the_graph(tiny_run, tiny_builder, tmp_path, capsys):
  """eval.gate_flip_average: the gate norm is the geometric mean of the
  image's and its mirror's, in the evaluation's embedding and in the graph."""
  workdir = copy_run_with_eval(tiny_run[0], tmp_path / "run", gate_flip_average=True)
  path = str(tmp_path / "model.onnx")
  assert export.main(["--workdir", workdir, "--out", path]) == 0
  assert json.loads(capsys.readouterr().out)["gate_flip_average"] is True
  src = data.source(tiny_builder, "references")
  images = np.stack([copy_edits.resize(data.decode_image(src[i]["image"], src[i]), (40, 40))
                     for i in range(8)])
  plain = inference.load_run(tiny_run[0])
  d_plain, g_own = plain.embed_batch(images)
  _, g_mirror = plain.embed_batch(np.ascontiguousarray(images[:, :, ::-1]))
  d, g = inference.load_run(workdir).embed_batch(images)
  np.testing.assert_allclose(g, np.sqrt(g_own * g_mirror), rtol=1e-5)
  assert np.abs(g - g_own).max() > 1e-3 * g_own.mean()  # The mirror's norm differs.
  np.testing.assert_allclose(d, d_plain, atol=1e-6)  # The descriptor is untouched.
  session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
  _, g_onnx = session.run(["descriptor", "gate_norm"], {"images": images})
  np.testing.assert_allclose(g_onnx, g, rtol=1e-4)


def test_gate_sizes_are_graph_inputs_whose_gate_norms_are_averaged(tiny_run, tmp_path, capsys):
  """eval.gate_sizes: the graph takes the images at each gate side too (one
  input per side) and gives the gate norm the run's embedding gives
  (test_embed.py checks that one against the sides' geometric mean)."""
  workdir = copy_run_with_eval(tiny_run[0], tmp_path / "run", gate_sizes=[32, 56],
                               gate_flip_average=True)
  path = str(tmp_path / "model.onnx")
  assert export.main(["--workdir", workdir, "--out", path]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["gate_sizes"] == [32, 56]
  assert list(summary["inputs"]) == ["images", "gate_images_32", "gate_images_56"]
  rng = np.random.default_rng(0)
  at = {s: rng.integers(0, 256, (5, s, s, 3), dtype=np.uint8) for s in (40, 32, 56)}
  d_jax, g_jax = inference.load_run(workdir).embed_batch(at[40], [at[32], at[56]])
  _, g_plain = inference.load_run(tiny_run[0]).embed_batch(at[40])
  assert np.abs(g_jax / g_plain - 1).max() > 1e-3  # The sides change the gate norm.
  session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
  d_onnx, g_onnx = session.run(["descriptor", "gate_norm"], {
      "images": at[40], "gate_images_32": at[32], "gate_images_56": at[56]})
  np.testing.assert_allclose(g_onnx, g_jax, rtol=1e-4)
  assert np.sum(d_onnx * d_jax, axis=1).min() >= 0.9999


def test_existing_output_is_kept(tiny_run, tmp_path, capsys):
  out = tmp_path / "model.onnx"
  out.write_bytes(b"older model")
  assert export.main(["--workdir", tiny_run[0], "--out", str(out)]) == 2
  assert "--overwrite" in capsys.readouterr().err
  assert out.read_bytes() == b"older model"
