"""A trained run's model as an ONNX graph (through jax2onnx), so that it
serves outside JAX (onnxruntime, TensorRT, a browser).

The graph takes uint8 RGB images [batch, S, S, 3] (NHWC, S = the run's
embedding side, eval.image_size or data.image_size; the batch is dynamic)
and does the rest inside, as SSCD's released ONNX models do: ImageNet
normalisation, the network in inference mode (BatchNorm's running
statistics), the mirror-image average when the run's evaluation uses it
(eval.flip_average), the L2 normalisation. Outputs: `descriptor` float32
[batch, d] (unit length) and `gate_norm` float32 [batch] (the norm of the
gate feature). Resizing stays outside, as the run's evaluation resizes:
bilinear to S x S, aspect not kept (`copy_edits.resize`); the side is in the
model's metadata (`image_size`). With eval.gate_sizes the graph takes the
same images resized to each gate size too (`gate_images_<S>`, metadata
`gate_sizes`), and `gate_norm` is the geometric mean of their gate norms, as
the run's evaluation computes it.

What is exported is the inference function, written for it: the model is
rebuilt with plain XLA convolutions (model.small_conv=xla, model.conv_grad=xla,
model.depthwise=xla: the CPU-only im2col form, the custom-VJP convolution
whose only purpose is faster gradients, and the depthwise convolutions
written as shifted multiply-adds for the CPU) and in float32 (a bfloat16
run's float32 parameters are used as they are). Same parameters, same function.
"""

import json
import logging

import jax
import jax.numpy as jnp
import ml_collections

from asl_jax import paths

INSTALL = ("pip install --no-deps jax2onnx==0.17.1 'onnx-ir>=1.1' (jax2onnx's own "
           "requirements pin orbax-checkpoint<0.11.37, which asl_jax's checkpoints "
           "cannot use; the exporter needs none of them)")


def inference_model(config):
  """The run's model, rebuilt for export (plain convolutions, float32)."""
  from asl_jax.models import resnet
  cfg = ml_collections.ConfigDict(config.model.to_dict())
  cfg.update(small_conv="xla", conv_grad="xla", depthwise="xla", dtype="float32")
  return resnet.build(cfg)


def inference_fn(run):
  """uint8 [B, S, S, 3] -> (descriptor [B, d] unit length, gate norm [B]),
  with the run's variables closed over; what the graph computes (the
  evaluation's `embedding.outputs`, with the run's flip averaging)."""
  from asl_jax.evaluation import embedding
  from asl_jax.models import resnet
  model = inference_model(run.config)
  variables = {"params": run.params, "batch_stats": run.batch_stats}

  def apply(images):
    return model.apply(variables, resnet.images_to_input(images), train=False)

  return lambda images, *gate_images: embedding.outputs(apply, images, run.config.eval,
                                                        gate_images)


def export(run, path: str, opset: int = 23):
  """Writes the run's model to `path` (ONNX); returns the ModelProto."""
  # Its bundled examples for libraries we do not use (dm_pix, equinox)
  # log an import traceback each; only errors matter here.
  logging.getLogger("jax2onnx").setLevel(logging.ERROR)
  try:
    import jax2onnx
  except ImportError:
    raise ImportError(f"Exporting to ONNX needs jax2onnx: {INSTALL}.") from None
  size = run.image_size
  (batch,) = jax.export.symbolic_shape("batch")
  proto = jax2onnx.to_onnx(
      inference_fn(run), [jax.ShapeDtypeStruct((batch, s, s, 3), jnp.uint8)
                          for s in (size,) + run.gate_sizes],
      model_name="asl_jax_copy_detector", opset=opset, input_names=input_names(run),
      output_names=["descriptor", "gate_norm"])
  # jax2onnx's intermediate shape annotations can carry its NCHW/NHWC
  # bookkeeping wrongly (onnxruntime then warns and merges leniently); the
  # runtime infers them itself.
  del proto.graph.value_info[:]
  meta = {"image_size": str(size), "input": f"uint8 RGB [batch, {size}, {size}, 3]",
          "resize": f"bilinear to {size}x{size}, aspect not kept (as the run's evaluation)",
          "flip_average": str(run.flip_average),
          "gate_flip_average": str(run.gate_flip_average),
          "gate_sizes": ",".join(map(str, run.gate_sizes)), "step": str(run.step),
          "config": run.config.to_json()}
  for key, value in meta.items():
    entry = proto.metadata_props.add()
    entry.key, entry.value = key, value
  with paths.replaced_when_written(path, "wb") as f:
    f.write(proto.SerializeToString())
  return proto


def input_names(run) -> list[str]:
  """The graph's inputs: `images` at the embedding side, then with
  eval.gate_sizes `gate_images_<S>`, the same images resized to S x S."""
  return ["images"] + [f"gate_images_{s}" for s in run.gate_sizes]


def metadata(proto) -> dict:
  """The metadata `export` wrote (values as strings; `config` as a dict)."""
  out = {p.key: p.value for p in proto.metadata_props}
  if "config" in out:
    out["config"] = json.loads(out["config"])
  return out
