"""The copies within one folder of photos, and which way each goes:

  python -m asl_jax.find --workdir RUN --images DIR [--out OUT] [--threshold T] [--k K]

Embeds every image of DIR (sub-folders included, EXIF orientation applied)
with the run's model, pairs each with its nearest others above the score
threshold, and decides for each pair which image is the source and which the
edited copy, from the asymmetric pairwise verification run both ways, with
the gate norms as the second opinion (asl_jax/copies.py). Pairs reported:
those whose verification found a shared region (verdict crop, pasted, inside
or same_frame); --unverified adds the other candidates. Writes into OUT:

  pairs.csv          source,copy,score,verdict,decided_by,cover,inliers,
                     norm_ratio,norms_agree,source_size,copy_size (paths
                     relative to DIR, best score first)
  contact_sheet.png  the pairs, source -> copy (more pages: _2.png, ...)
  skipped.csv        path,reason of the files not read (not an image format
                     read here, or not decodable)

and prints a JSON summary.
"""

import collections
import dataclasses
import glob
import os
import re

from asl_jax import cli
from asl_jax.errors import UserError

# The lowest descriptor cosine of a candidate pair. The verification, not this
# threshold, tells copies from look-alikes; the threshold only bounds its work.
# On a real-photo set (441 photos, 139 copy pairs among them) with the :photos
# recipe's model, the copy pairs among each image's 10 nearest had cosines of
# 0.60 and more (5th percentile 0.72), the other pairs a median of 0.70: 0.5
# keeps every copy the neighbours find, with a margin for weaker models.
DEFAULT_THRESHOLD = 0.5
OUTPUTS = ("pairs.csv", "skipped.csv", "contact_sheet.png")


def parse(argv):
  p = cli.parser("python -m asl_jax.find", __doc__)
  p.add_argument("--workdir", required=True, help="The trained asl_jax run.")
  p.add_argument("--images", required=True, help="The folder of photos.")
  p.add_argument("--out", default="copies", help="Output folder (default: ./copies).")
  p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                 help="Lowest descriptor cosine of a candidate pair (default %(default)s).")
  p.add_argument("--k", type=int, default=10, help="Nearest others per image (default 10).")
  p.add_argument("--unverified", action="store_true",
                 help="Also report candidates without shared geometry (no_geometry, "
                 "conflicting), their direction from the gate norms alone.")
  p.add_argument("--workers", type=int, default=0, help="Verification threads (0: cores).")
  p.add_argument("--overwrite", action="store_true", help="Replace the outputs in --out.")
  return p.parse_args(argv)


def _check_out(out: str, overwrite: bool):
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f"--out {out} is a file; give a folder for pairs.csv and the sheets.")
  parent = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(parent):
    raise UserError(f"--out {out}: the folder {parent} does not exist; create it first.")
  present = [f for f in OUTPUTS if os.path.exists(os.path.join(out, f))]
  if present and not overwrite:
    raise UserError(f"--out {out} already holds {', '.join(present)}; give another folder, "
                    "or --overwrite to replace them.")


def run(args, log=print) -> dict:
  """Finds the copies and writes the outputs; returns the summary."""
  from asl_jax import contact_sheet, copies, image_folder, inference
  from asl_jax.evaluation import decisions
  if not os.path.isdir(args.images):
    raise UserError(f"--images {args.images} is not a folder.")
  if args.k < 1:
    raise UserError(f"--k {args.k}: give the number of neighbours to verify, at least 1.")
  if not -1.0 <= args.threshold <= 1.0:
    raise UserError(f"--threshold {args.threshold}: give a cosine between -1 and 1.")
  if args.workers < 0:
    raise UserError(f"--workers {args.workers}: give the verification threads, or 0 for "
                    "one per core.")
  _check_out(args.out, args.overwrite)
  config = inference.read_config(args.workdir)
  folder = image_folder.scan(args.images)
  if len(folder.images) < 2:
    raise UserError(f"--images {args.images} holds {len(folder.images)} readable images "
                    f"({image_folder.skipped_summary(folder.skipped)}); copies need at least "
                    "two.")
  model_run = inference.load_run(args.workdir)
  log(f"Embedding {len(folder.images)} images of {args.images} ({len(folder.skipped)} "
      f"files skipped) with {args.workdir} (step {model_run.step})")
  vectors, gate_norms = model_run.embed(image_folder.FolderSource(folder, folder.images),
                                        "images", log)
  pairs = copies.candidate_pairs(vectors, args.k, args.threshold)
  log(f"  {len(pairs)} candidate pairs with cosine >= {args.threshold}; verifying both ways")
  load = lambda i: image_folder.load(folder.path(i))
  ab, ba = copies.verify_both_ways(pairs, load, decisions.verify_config(config.eval.verify),
                                   args.workers or config.eval.verify.workers)
  decided = copies.decide(pairs, gate_norms, ab, ba)
  found = [p for p in decided if args.unverified or p.verdict in copies.VERIFIED]
  os.makedirs(args.out, exist_ok=True)
  copies.write_pairs(os.path.join(args.out, "pairs.csv"), found, folder)
  copies.write_skipped(os.path.join(args.out, "skipped.csv"), folder.skipped)
  prefix = contact_sheet.default_prefix(args.out)
  sheets = contact_sheet.write(prefix, found, folder, image_folder.load)
  for stale in glob.glob(glob.escape(prefix) + "_*.png"):  # Pages of an earlier, longer run.
    if stale not in sheets and re.fullmatch(r"_\d+\.png", stale[len(prefix):]):
      os.remove(stale)
  for s in folder.skipped:
    log(f"  skipped {s.path}: {s.reason}")
  verdicts = collections.Counter(p.verdict for p in decided)
  return {"images": len(folder.images), "skipped": len(folder.skipped),
          "skipped_files": [dataclasses.asdict(s) for s in folder.skipped],
          "threshold": args.threshold, "k": args.k, "candidates": len(decided),
          "candidate_verdicts": dict(sorted(verdicts.items())), "pairs": len(found),
          "direction_from_geometry": sum(p.decided_by == "geometry" for p in found),
          "outputs": [os.path.join(args.out, f) for f in ("pairs.csv", "skipped.csv")] + sheets}


def main(argv=None) -> int:
  """Returns the exit status (cli.status)."""
  return cli.run_json_command(run, parse, argv)


if __name__ == "__main__":
  cli.exit_process(main())
