"""The trivial floors of a copy-detection set in the DISC21 layout.

  python benchmarks/trivial_floors.py --set ~/photo_dev --out /tmp/floors

Two descriptors that learn nothing: a 16 x 16 grayscale thumbnail (mean
removed) and an 8 x 8 x 8 colour histogram (square-rooted: the Hellinger kernel), L2-normalised,
k = 10 nearest references by exact inner product (faiss). Prints the ISC
metrics of each and writes their candidates (`thumbnail.csv`,
`histogram.csv`) for `python -m asl_jax.gate`, which applies a run's decision
to another descriptor's candidates.
"""

import argparse
import json
import os

import numpy as np
from PIL import Image

from asl_jax.evaluation import io as eval_io
from asl_jax.evaluation import metrics
from asl_jax.evaluation import search


def thumbnail(image: Image.Image) -> np.ndarray:
  t = np.asarray(image.convert("L").resize((16, 16), Image.BILINEAR), np.float32).ravel()
  return t - t.mean()


def histogram(image: Image.Image) -> np.ndarray:
  a = np.asarray(image.convert("RGB"), np.int64) // 32
  h = np.bincount((a[..., 0] * 64 + a[..., 1] * 8 + a[..., 2]).ravel(), minlength=512)
  return np.sqrt(h / h.sum()).astype(np.float32)


def describe(folder: str, fn):
  files = eval_io.image_files(folder)
  ids = sorted(files)
  vectors = []
  for i in ids:
    with Image.open(files[i]) as im:
      vectors.append(fn(im))
  return ids, search.l2_normalize(np.stack(vectors))


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--set", required=True, help="references/, queries/, ground_truth.csv.")
  p.add_argument("--out", required=True, help="Where the candidate CSVs go.")
  p.add_argument("--k", type=int, default=10)
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  gt = eval_io.read_ground_truth(os.path.join(args.set, "ground_truth.csv"))
  results = {}
  for name, fn in (("thumbnail", thumbnail), ("histogram", histogram)):
    qids, q = describe(os.path.join(args.set, "queries"), fn)
    rids, r = describe(os.path.join(args.set, "references"), fn)
    c = search.search(q, r, k=args.k)
    qq = [qids[i] for i in c.query_index]
    rr = [rids[i] for i in c.reference_index]
    eval_io.write_predictions(os.path.join(args.out, f"{name}.csv"), qq, rr, c.score)
    m = metrics.evaluate_predictions(qq, rr, c.score, gt)
    results[name] = {k: m[k] for k in ("micro_ap", "recall_at_p90", "recall_at_rank_1")}
  print(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
