"""Descriptors and gate norms of any folder of images, or of a split of the
run's prepared data, with a trained run's model:

  python -m asl_jax.embed --workdir RUN --images DIR --out D.h5
  python -m asl_jax.embed --workdir RUN --split queries|references|train --out D.h5

The file is in the ISC working layout (`vectors` float32 [n, d], L2-normalised;
`image_names`, the file names without extension) plus `gate_norms` float32
[n] (the norm of the gate feature, ASL's information amount), so that
`python -m asl_jax.evaluate --query_descriptors Q.h5 --reference_descriptors
R.h5 [--train_descriptors T.h5 --score_norm sscd]` and `asl_jax.gate` read
it. Images are embedded as the run's evaluation embeds them (eval.image_size,
eval.flip_average); folder images upright (EXIF orientation applied). Files
that are not images, or do not decode, are skipped and listed. Prints a
JSON summary.
"""

import os

from asl_jax import cli, paths
from asl_jax.errors import UserError


def parse(argv):
  p = cli.parser("python -m asl_jax.embed", __doc__)
  p.add_argument("--workdir", required=True, help="The trained asl_jax run.")
  p.add_argument("--images", help="A folder of images (sub-folders included).")
  p.add_argument("--split", help="Or a split of the run's prepared data: queries, "
                 "references (its evaluation set) or train (its training set: the "
                 "background for score normalisation).")
  p.add_argument("--data_dir", default="", help="Where the run's data is prepared "
                 "(default: the run's data.data_dir).")
  p.add_argument("--out", required=True, help="The descriptor file to write (.h5).")
  p.add_argument("--overwrite", action="store_true", help="Replace an existing --out.")
  return p.parse_args(argv)


def run(args, log=print) -> dict:
  """Embeds what `args` name and writes the file; returns the summary."""
  from asl_jax import image_folder, inference
  from asl_jax.evaluation import io as eval_io
  if bool(args.images) == bool(args.split):
    raise UserError("Give either --images DIR (a folder of images) or --split "
                    "queries|references|train (a split of the run's prepared data).")
  if args.images and not os.path.isdir(args.images):
    raise UserError(f"--images {args.images} is not a folder.")
  if args.split and args.split not in inference.SPLITS:
    raise UserError(f"--split {args.split}: use one of {', '.join(inference.SPLITS)}.")
  paths.new_output_file(args.out, "--out", args.overwrite)
  inference.read_config(args.workdir)  # A wrong --workdir shows before the scan.
  skipped = []
  if args.images:
    folder = image_folder.scan(args.images)
    skipped = folder.skipped
    if not folder.images:
      raise UserError(f"--images {args.images} holds no readable image "
                      f"({image_folder.skipped_summary(skipped)}; formats read: "
                      f"{', '.join(image_folder.IMAGE_EXTENSIONS)}).")
    source, ids = inference.folder_source(folder)
  model_run = inference.load_run(args.workdir)
  if args.split:
    source, ids = inference.split_source(model_run, args.split, args.data_dir)
  gate = ""
  if model_run.gate_sizes or model_run.gate_flip_average:
    sides = "/".join(map(str, model_run.gate_sizes or (model_run.image_size,)))
    gate = f"; gate norm at {sides} px{', mirror-averaged' if model_run.gate_flip_average else ''}"
  log(f"Embedding {len(ids)} images with {args.workdir} (step {model_run.step}) at "
      f"{model_run.image_size} px{', flip-averaged' if model_run.flip_average else ''}{gate}")
  vectors, gate_norms = model_run.embed(source, args.split or "images", log)
  tmp = args.out + ".partial"
  eval_io.write_descriptors(tmp, ids, vectors, gate_norms=gate_norms)
  os.replace(tmp, args.out)
  for s in skipped:
    log(f"  skipped {s.path}: {s.reason}")
  return {"out": args.out, "images": len(ids), "dimensions": int(vectors.shape[1]),
          "step": model_run.step, "image_size": model_run.image_size,
          "flip_average": model_run.flip_average,
          "gate_flip_average": model_run.gate_flip_average,
          "gate_sizes": list(model_run.gate_sizes),
          "skipped": len(skipped), "skipped_files": [vars(s) for s in skipped]}


def main(argv=None) -> int:
  """Returns the exit status (cli.status)."""
  return cli.run_json_command(run, parse, argv)


if __name__ == "__main__":
  cli.exit_process(main())
