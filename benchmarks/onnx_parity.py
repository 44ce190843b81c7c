"""An imported ONNX copy detector against onnxruntime running the same file,
on the same preprocessed images as an asl_jax evaluation.

Reads an evaluation workdir (its config.json, queries.h5, references.h5:
e.g. a `train.total_steps=0` run with `model.init_from=<file>.onnx`), embeds
the same queries and references with onnxruntime, resized exactly as the
evaluation resized them (eval.image_size, eval.resize), writes
ort_queries.h5 / ort_references.h5 to --out, and prints the cosine between
the two models' descriptors (mean, min) and the μAP of both descriptor sets
under the same exact k-NN inner-product search (`python -m asl_jax.evaluate`).

  python benchmarks/onnx_parity.py --workdir runs/sscd_eval --onnx sscd.onnx \\
      --ground_truth <photo_dev>/ground_truth.csv --out runs/sscd_ort
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from asl_jax import data, inference
from asl_jax.evaluation import embedding
from asl_jax.evaluation import io as eval_io

_WORKDIR = flags.DEFINE_string("workdir", None, "An asl_jax evaluation workdir.")
_ONNX = flags.DEFINE_string("onnx", None, "The ONNX file the evaluation imported.")
_GT = flags.DEFINE_string("ground_truth", None, "ISC ground-truth CSV of the set.")
_OUT = flags.DEFINE_string("out", None, "Where the onnxruntime descriptors go.")
_BATCH = flags.DEFINE_integer("batch", 16, "Images per onnxruntime call.")
_K = flags.DEFINE_integer("k", 10, "Nearest references per query.")


def ort_descriptors(session, source, size, resize, batch):
  """ids, L2-normalised descriptors of every record, resized as the evaluation does."""
  out = np.zeros((len(source), 0), np.float32)
  for shape, indices in embedding.shape_groups(source, size, resize).items():
    load = embedding._LoadForEval(source, shape)
    for start in range(0, len(indices), batch):
      chunk = indices[start:start + batch]
      images = np.stack([load.map(int(i)) for i in chunk])
      d = session.run(None, {session.get_inputs()[0].name: images})[0]
      if out.shape[1] == 0:
        out = np.zeros((len(source), d.shape[1]), np.float32)
      out[chunk] = d / np.linalg.norm(d, axis=1, keepdims=True)
  ids = [data.text(source[i]["id"]) for i in range(len(source))]
  return ids, out


def evaluate(queries, references, ground_truth, k):
  cmd = [sys.executable, "-m", "asl_jax.evaluate", f"--query_descriptors={queries}",
         f"--reference_descriptors={references}", f"--ground_truth={ground_truth}", f"--k={k}"]
  r = subprocess.run(cmd, capture_output=True, text=True, check=True)
  return " ".join(cmd[1:]), json.loads(r.stdout)["micro_ap"]


def main(argv):
  del argv
  import onnxruntime as ort
  config = inference.read_config(_WORKDIR.value)  # Completed as every command reads it.
  size = embedding.embedding_size(config)
  resize = config.eval.resize
  builder = data.prepare(config.data, log=lambda _: None)
  options = ort.SessionOptions()
  options.log_severity_level = 3
  session = ort.InferenceSession(_ONNX.value, options, providers=["CPUExecutionProvider"])
  os.makedirs(_OUT.value, exist_ok=True)
  cosines, t0 = [], time.time()
  for split in ("queries", "references"):
    ids, ort_desc = ort_descriptors(session, data.source(builder, split), size, resize,
                                    _BATCH.value)
    eval_io.write_descriptors(os.path.join(_OUT.value, f"ort_{split}.h5"), ids, ort_desc)
    jax_ids, jax_desc = eval_io.read_descriptors(os.path.join(_WORKDIR.value, f"{split}.h5"))
    order = {q: i for i, q in enumerate(ids)}
    cosines.append((jax_desc * ort_desc[[order[q] for q in jax_ids]]).sum(1))
  seconds = time.time() - t0
  cosines = np.concatenate(cosines)
  print(f"{len(cosines)} images at {size} ({resize}); onnxruntime embedded them in "
        f"{seconds:.0f} s")
  print(f"cosine(JAX, onnxruntime): mean {cosines.mean():.5f}, min {cosines.min():.5f}")
  for name, directory, prefix in (("JAX", _WORKDIR.value, ""), ("onnxruntime", _OUT.value,
                                                                   "ort_")):
    cmd, micro_ap = evaluate(os.path.join(directory, f"{prefix}queries.h5"),
                             os.path.join(directory, f"{prefix}references.h5"),
                             _GT.value, _K.value)
    print(f"μAP {name}: {micro_ap:.4f}   ({cmd})")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "onnx", "ground_truth", "out"])
  app.run(main)
