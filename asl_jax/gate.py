"""`python -m asl_jax.gate`: a run's decision (evaluation/decisions.py says
what each does) applied to anyone's predictions.

  python -m asl_jax.gate --predictions P.csv --workdir RUN \
      --queries DIR --references DIR --output OUT.csv [--ground_truth G.csv]
  python -m asl_jax.gate ... --dataset folder/photo_dev   (a prepared dataset)

reads another system's candidates (`query_id,reference_id,score`), applies
the run's decision (its gate norms come from RUN/queries.h5 and
RUN/references.h5, written by the run's evaluation of the same images; its
calibrated threshold and settings from RUN/gate.json) and writes the kept
pairs in the same format; with a ground truth it prints the ISC metrics
before and after. The work is evaluation/gate_apply.py's; this module
parses the flags, loads the files and prints.
"""

import json
import math
import os
import sys

from asl_jax import cli, paths
from asl_jax.errors import UserError
from asl_jax.evaluation import decisions, gate_apply
from asl_jax.evaluation import io as eval_io
from asl_jax.evaluation import metrics


def _prepared(name: str, data_dir: str):
  """The builder of a dataset already prepared (nothing is prepared here)."""
  import ml_collections

  from asl_jax import data
  cfg = ml_collections.ConfigDict({"name": name, "data_dir": data_dir, "manual_dir": "",
                                   "prepare_workers": 1, "skip_bad_images": False,
                                   "synthetic": {}})
  if name == "ndec/synthetic":
    raise UserError("--dataset ndec/synthetic: give its images as folders, or a set "
                    "prepared from a folder (folder/<name>) or a download (ndec/full).")
  b = data.builder(cfg, name)
  if not b.is_prepared():
    raise UserError(f"--dataset {name} is not prepared under {data.data_dir(cfg)} (looked "
                    f"for {b.data_dir}); prepare it first (README, 'Your own images').")
  return b


def parse(argv=None):
  p = cli.parser("python -m asl_jax.gate", __doc__)
  p.add_argument("--predictions", required=True, help="CSV query_id,reference_id,score.")
  p.add_argument("--workdir", required=True, help="The asl_jax run whose gate to apply.")
  p.add_argument("--queries", help="Folder of the query images.")
  p.add_argument("--references", help="Folder of the reference images.")
  p.add_argument("--dataset", help="Or a prepared dataset holding both (e.g. folder/photo_dev, "
                 "ndec/full), as config.data.name names it.")
  p.add_argument("--data_dir", default="", help="Where --dataset is prepared (default: "
                 "$TFDS_DATA_DIR or ~/tensorflow_datasets).")
  p.add_argument("--output", required=True, help="Where the kept predictions go (CSV).")
  p.add_argument("--overwrite", action="store_true",
                 help="Replace an existing --output (once the new file is complete).")
  p.add_argument("--ground_truth", help="CSV query_id,reference_id: print the metrics.")
  p.add_argument("--decision", choices=decisions.DECISIONS, help="Default: the run's (gate.json).")
  p.add_argument("--rescore", type=float, help="Default: the run's (gate.json).")
  p.add_argument("--workers", type=int, default=0, help="Verification threads (0: cores).")
  return p.parse_args(argv)


def run(args):
  """Applies the run's decision to the predictions `args` name; prints the report."""
  queries, references = args.queries, args.references
  if args.dataset:
    if queries or references:
      raise UserError("Give either --dataset or --queries and --references, not both.")
    builder = _prepared(args.dataset, args.data_dir)
    queries, references = (builder, "queries"), (builder, "references")
  elif not (queries and references):
    raise UserError("Give --queries DIR and --references DIR (folders of images), or "
                    "--dataset NAME (a prepared dataset).")
  else:
    for path in (queries, references):
      if not os.path.isdir(path):
        raise UserError(f"{path} is not a folder of images.")
  if args.workers < 0:
    raise UserError(f"--workers {args.workers}: give the verification threads, or 0 for "
                    "one per core.")
  if args.rescore is not None and not math.isfinite(args.rescore):
    raise UserError(f"--rescore {args.rescore}: give the finite amount added to the score "
                    "of a verified copy (0: none).")
  paths.new_output_file(args.output, "--output", args.overwrite, "the kept predictions")
  pred = eval_io.read_predictions(args.predictions)
  gt_rows = eval_io.read_ground_truth(args.ground_truth) if args.ground_truth else None
  result = gate_apply.apply((pred.query_ids, pred.reference_ids, pred.scores), args.workdir,
                            queries, references, args.decision, args.rescore, args.workers,
                            log=lambda m: print(m, file=sys.stderr))
  eval_io.write_predictions(args.output, result["query_ids"], result["reference_ids"],
                            result["scores"])
  report = {k: v for k, v in result.items()
            if k not in ("query_ids", "reference_ids", "scores")}
  if gt_rows is not None:
    report["before"] = metrics.evaluate_predictions(
        pred.query_ids, pred.reference_ids, pred.scores, gt_rows)
    report["after"] = metrics.evaluate_predictions(
        result["query_ids"], result["reference_ids"], result["scores"], gt_rows)
  print(json.dumps(report, indent=2))


def main(argv=None) -> int:
  """Returns the exit status (cli.status)."""
  return cli.run_command(run, parse, argv)


if __name__ == "__main__":
  cli.exit_process(main())
