"""A trained run's model as ONNX, for serving outside JAX:

  python -m asl_jax.export --workdir RUN --out model.onnx

The graph takes uint8 RGB images [batch, S, S, 3] (S, the run's embedding
side, is printed and kept in the model's metadata as `image_size`; resize to
it bilinearly, aspect not kept, as the run's evaluation does) and outputs
`descriptor` (float32 [batch, d], unit length, mirror-averaged when the run's
evaluation is) and `gate_norm` (float32 [batch]); asl_jax/onnx_export.py says
how. A run with eval.gate_sizes takes the same images resized square to each
gate size too (inputs `gate_images_<S>`), whose gate norms are averaged.
Unless --nocheck, onnxruntime then runs the file on a few images and the
agreement with the JAX model is printed (and a disagreement is an error).
Needs jax2onnx, installed without its pinned dependencies (the error says how).
"""


import numpy as np

from asl_jax import cli
from asl_jax.errors import UserError

MIN_COSINE = 0.9999


def parse(argv):
  p = cli.parser("python -m asl_jax.export", __doc__)
  p.add_argument("--workdir", required=True, help="The trained asl_jax run.")
  p.add_argument("--out", required=True, help="The ONNX file to write.")
  p.add_argument("--overwrite", action="store_true", help="Replace an existing --out.")
  p.add_argument("--opset", type=int, default=23, help="ONNX opset.")
  p.add_argument("--nocheck", dest="check", action="store_false",
                 help="Skip running the file under onnxruntime against the JAX model.")
  return p.parse_args(argv)


def check(run, path: str, num_images: int = 4, seed: int = 0) -> dict:
  """Descriptors and gate norms of the file under onnxruntime against the
  JAX model's (embedding.make_embed_fn, what the run's evaluation embeds with), on
  random images of the run's side with smooth structure."""
  import onnxruntime as ort
  from PIL import Image
  rng = np.random.default_rng(seed)
  s = run.image_size
  coarse = rng.integers(0, 256, (num_images, 6, 6, 3), dtype=np.uint8)
  images = np.stack([np.asarray(Image.fromarray(c).resize((s, s), Image.BILINEAR))
                     for c in coarse])
  from asl_jax import onnx_export
  from asl_jax.evaluation import embedding
  gate_images = embedding.gate_inputs(images, run.gate_sizes)
  session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
  d_onnx, g_onnx = session.run(["descriptor", "gate_norm"], dict(
      zip(onnx_export.input_names(run), [images, *gate_images])))
  d_jax, g_jax = run.embed_batch(images, gate_images)
  cosine = np.sum(d_onnx * d_jax, axis=1)
  return {"images": num_images, "min_cosine": float(cosine.min()),
          "max_gate_norm_relative_difference": float(
              np.max(np.abs(g_onnx - g_jax) / np.maximum(np.abs(g_jax), 1e-12)))}


def run(args, log=print) -> dict:
  from asl_jax import inference, onnx_export, paths
  paths.new_output_file(args.out, "--out", args.overwrite)
  try:
    import jax2onnx  # noqa: F401
  except ImportError:
    raise UserError(f"Exporting to ONNX needs jax2onnx: {onnx_export.INSTALL}.") from None
  model_run = inference.load_run(args.workdir)
  log(f"Exporting {args.workdir} (step {model_run.step}) for uint8 images "
      f"[batch, {model_run.image_size}, {model_run.image_size}, 3]")
  onnx_export.export(model_run, args.out, args.opset)
  out = {"out": args.out, "step": model_run.step, "image_size": model_run.image_size,
         "flip_average": model_run.flip_average,
         "gate_flip_average": model_run.gate_flip_average,
         "gate_sizes": list(model_run.gate_sizes),
         "inputs": {name: f"uint8 [batch, {s}, {s}, 3]" for name, s in zip(
             onnx_export.input_names(model_run),
             (model_run.image_size,) + model_run.gate_sizes)},
         "outputs": {"descriptor": f"float32 [batch, {model_run.config.model.descriptor_dim}]",
                     "gate_norm": "float32 [batch]"}}
  if args.check:
    out["check"] = check(model_run, args.out)
    if out["check"]["min_cosine"] < MIN_COSINE:
      raise UserError(f"The exported model disagrees with the JAX model: {out['check']}. "
                      f"{args.out} was written; please report this with the run's "
                      "config.json.")
  return out


def main(argv=None) -> int:
  """Returns the exit status (cli.status)."""
  return cli.run_json_command(run, parse, argv)


if __name__ == "__main__":
  cli.exit_process(main())
