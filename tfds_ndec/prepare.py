"""Prepare `ndec/full` or `ndec/disc21_dev` from a manual download, or your
own copy-detection set in the DISC21 layout as `ndec/folder_<name>`, without
TensorFlow (TFDS's own `tfds build` command imports TensorFlow).

  python -m tfds_ndec.prepare full --manual_dir ~/ndec_download \
      --data_dir ~/tensorflow_datasets --workers 0 --max_side 512
  python -m tfds_ndec.prepare folder --manual_dir ~/my_set [--name my_set]

A re-run after an interruption reuses the shards already written. Bad input
(a missing part, a malformed ground truth, an unreadable image) stops with a
message that names the files and says what to do, and exit status 2.
"""

import os
import time

import tensorflow_datasets as tfds

import tfds_ndec
from asl_jax import cli


def _peak_rss_mb() -> tuple[float, float]:
  """Peak resident memory of this process and of its largest worker, MB."""
  import resource
  own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  return own / 1024, children / 1024


def parse(argv=None):
  p = cli.parser("python -m tfds_ndec.prepare", __doc__)
  p.add_argument("source", choices=["full", "disc21_dev", "folder"])
  p.add_argument("--name", default="",
                 help="folder: the set's name (default: the folder's own name).")
  p.add_argument("--manual_dir", required=True, help="Where the download is.")
  p.add_argument("--data_dir", default=os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))
  p.add_argument("--workers", type=int, default=0, help="Processes (0: one per core).")
  p.add_argument("--max_side", type=int, default=0,
                 help="Re-encode images whose longer side exceeds this (0: keep originals).")
  p.add_argument("--jpeg_quality", type=int, default=90)
  p.add_argument("--skip_bad_images", action="store_true",
                 help="Leave out unreadable images and list them in the metadata.")
  p.add_argument("--max_shard_examples", type=int, default=0,
                 help="Images per shard (0: up to 4096 and 256 MiB of source files).")
  p.add_argument("--file_format", default="array_record", choices=["array_record", "tfrecord"],
                 help="tfrecord (needs TensorFlow) is what tfds.load reads.")
  p.add_argument("--beam_runner", default="",
                 help="Prepare on Apache Beam instead of local processes (e.g. DirectRunner).")
  p.add_argument("--beam_options", default="",
                 help="Beam pipeline options, space separated (e.g. '--direct_num_workers=8').")
  return p.parse_args(argv)


def check_flags(args):
  """The numbers and paths, before anything is created under --data_dir."""
  from asl_jax.errors import UserError
  for flag, value, allowed in (("--workers", args.workers, "0 (one per core) or more"),
                               ("--max_side", args.max_side, "0 (keep) or more"),
                               ("--max_shard_examples", args.max_shard_examples,
                                "0 (automatic) or more")):
    if value < 0:
      raise UserError(f"{flag} {value}: give {allowed}.")
  if not 1 <= args.jpeg_quality <= 100:
    raise UserError(f"--jpeg_quality {args.jpeg_quality}: give a JPEG quality, 1-100 "
                    "(90 by default; it is used only with --max_side).")
  manual_dir = os.path.expanduser(args.manual_dir)
  if args.source == "folder" and not os.path.isdir(manual_dir):
    what = "is a file" if os.path.exists(manual_dir) else "does not exist"
    raise UserError(f"--manual_dir {args.manual_dir} {what}: give the folder of the set "
                    "(references/, queries/, ground_truth.csv; optionally train/ and "
                    "queries.csv).")
  data_dir = os.path.expanduser(args.data_dir)
  if os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise UserError(f"--data_dir {args.data_dir} is a file; give the folder the prepared "
                    "sets go in (default $TFDS_DATA_DIR or ~/tensorflow_datasets).")


def run(args):
  """Prepares the set `args` name and prints what was written."""
  check_flags(args)
  if args.source == "folder":
    from tfds_ndec import folder
    config = tfds_ndec.folder_config(folder.set_name(args.manual_dir, args.name),
                                     args.max_side, args.jpeg_quality)
  else:
    config = tfds_ndec.real_config(args.source, args.max_side, args.jpeg_quality)
  builder = tfds_ndec.Builder(config=config, data_dir=os.path.expanduser(args.data_dir),
                              file_format=args.file_format, num_workers=args.workers,
                              skip_bad_images=args.skip_bad_images,
                              max_shard_examples=args.max_shard_examples)
  beam = {}
  if args.beam_runner:
    import apache_beam
    beam = dict(beam_runner=args.beam_runner,
                beam_options=apache_beam.options.pipeline_options.PipelineOptions(
                    args.beam_options.split()))
  download_config = tfds.download.DownloadConfig(
      manual_dir=os.path.expanduser(args.manual_dir), **beam)
  t0 = time.time()
  if args.source == "folder" and builder.is_prepared():
    tfds_ndec.check_folder_origin(builder, args.manual_dir)
  builder.download_and_prepare(download_config=download_config)
  seconds = time.time() - t0
  n = sum(s.num_examples for s in builder.info.splits.values())
  parent, worker = _peak_rss_mb()
  print(f"Prepared {builder.info.full_name} in {builder.data_dir}: " + ", ".join(
      f"{s}={builder.info.splits[s].num_examples}" for s in builder.info.splits)
        + f" ({n} examples, {seconds:.0f} s, peak RSS {parent:.0f} MB, largest "
        f"worker {worker:.0f} MB)")


def main(argv=None) -> int:
  """Returns the exit status (asl_jax.cli.status: bad input, an NdecInputError, is one
  paragraph and 2)."""
  return cli.run_command(run, parse, argv)


if __name__ == "__main__":
  cli.exit_process(main())
