"""One command that measures a config on whatever devices JAX sees.

  python -m asl_jax.benchmark --config configs/asl.py:ndec \
      [--only train,input,e2e,embed,search] [--compare torch] [--json out.json]

Workloads:
  train   the config's jitted update on device-resident data (the number that
          compares across frameworks): images/s, step-time percentiles, the
          the step's FLOPs counted from its jaxpr (asl_jax/flops.py: model FLOPs,
          which MFU uses, and executed FLOPs with a two-pass recompute; XLA's
          cost analysis beside them), TFLOP/s and MFU;
  input   the Grain training pipeline alone (decode, crops, online edit chain;
          or pre-generated views with --config.data.views_dir) at 0, several
          and all worker processes;
  e2e     the update fed by that pipeline (config's data.num_workers), and its
          share of the in-memory rate (below 1: input-bound);
  embed   descriptor extraction at the evaluation size and batch;
  embed_files  evaluation embedding from JPEG files end to end (Grain decoding
          in 0 and W worker processes; embed_files.py;
          --embed_files_images N, --embed_workers);
  search  exact k-NN of Q x R x D float32 descriptors: the project's JAX search
          (bfloat16 shortlist, exact float32 re-ranking), the float32 scan it
          must agree with, and faiss where installed (search.py;
          --search Q,R,D; default 50000,1000000,256 on accelerators,
          2000,100000,256 on CPU).

--compare torch adds the same model and step in PyTorch (torch_model.py, torch_step.py)
eager and under torch.compile, timed by the same harness (train and embed), and
the table's ratio column is asl_jax / torch. torch is an optional extra
(`pip install -e '.[bench]'`). Data for input/e2e: the config's dataset
(the demo builds ndec/synthetic; for ndec/full*, --fake_train N writes and
prepares a fake download of N photo-like training images first).

This module is the command line: flags -> `Request` and `Options` -> `run` ->
the table, and the JSON with --json.
"""

import sys

from absl import flags

from asl_jax import cli
from asl_jax.benchmark import harness
from asl_jax.benchmark.runner import WORKLOADS, Options, Request, run

_CONFIG = cli.define_config_flag()
_ONLY = flags.DEFINE_list("only", list(WORKLOADS), f"Workloads, from {', '.join(WORKLOADS)}.")
_COMPARE = flags.DEFINE_list("compare", [], "Frameworks to compare with: torch.")
_JSON = flags.DEFINE_string("json", "", "Write the results here as JSON.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --json (once the "
                               "new file is complete).")
_SEARCH = flags.DEFINE_string("search", "", "Q,R,D of the search workload.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")
# The flags of `Options`, by field name.
_OPTIONS = {
    "steps": flags.DEFINE_integer("steps", 20, "Timed steps per train/embed/e2e row."),
    "warmup": flags.DEFINE_integer("warmup", 3, "Untimed steps first (compilation included)."),
    "num_classes": flags.DEFINE_integer("num_classes", 100_000,
                                        "Classifier width, when the config classifies."),
    "input_workers": flags.DEFINE_list("input_workers", [], "Worker processes for the input "
                                       "rows (default: 0, half the cores, all cores)."),
    "input_batches": flags.DEFINE_integer("input_batches", 20, "Timed batches per input row."),
    "k": flags.DEFINE_integer("k", 10, "Neighbours per query in the search workload."),
    "peak_override": flags.DEFINE_float(
        "peak_tflops", 0.0, "Peak TFLOP/s per device for the MFU (default: the table in "
        "asl_jax/flops.py for the dtype)."),
    "fake_train": flags.DEFINE_integer("fake_train", 0, "For ndec/full* configs: write and "
                                       "prepare a fake download of this many training images "
                                       "first."),
    "fake_root": flags.DEFINE_string("fake_root", "/tmp/asl_bench_data",
                                     "Where --fake_train goes."),
    "torch_compile": flags.DEFINE_bool("torch_compile", True, "With --compare torch, also time "
                                       "torch.compile (minutes of compilation on a CPU)."),
    "torch_max_autotune": flags.DEFINE_bool(
        "torch_max_autotune", False, "With --compare torch, also time "
        "torch.compile(mode='max-autotune') (many minutes)."),
    "embed_files_images": flags.DEFINE_integer(
        "embed_files_images", 0, "JPEGs of the embed_files workload (default 16,384 on "
        "accelerators, 512 on CPU)."),
    "embed_workers": flags.DEFINE_list("embed_workers", [], "Worker processes of the "
                                       "embed_files rows (default: 0 and all cores; -1 = all "
                                       "cores)."),
}


def check_counts_and_output(o: Options, json_path: str, overwrite: bool = False):
  """Before compiling anything: timed counts that can be timed, a --json that can be written."""
  from asl_jax import paths
  from asl_jax.errors import UserError
  for flag, value, low in (("--steps", o.steps, 1), ("--warmup", o.warmup, 0),
                           ("--input_batches", o.input_batches, 1)):
    if value < low:
      raise UserError(f"{flag}={value}: give at least {low} (a rate needs timed steps).")
  if o.k < 1:
    raise UserError(f"--k={o.k}: give the neighbours per query of the search, at least 1.")
  if json_path:
    paths.new_output_file(json_path, "--json", overwrite, "the results")


def check_search(o: Options, request):
  """The search's k fits its references (--search Q,R,D)."""
  from asl_jax.errors import UserError
  if request.search and "search" in request.workloads and o.k > request.search[1]:
    raise UserError(f"--k={o.k} is more than the {request.search[1]} references of "
                    f"--search={','.join(map(str, request.search))}; give --k <= R.")


def check_torch_model(config, request):
  """--compare torch times the PyTorch twin of models/resnet.CopyDetector with
  BoT's head (torch_model.py); a model it does not have would be timed as
  another one, so it is refused before any work."""
  from asl_jax.errors import UserError
  m = config.model
  if "torch" in request.compare and (m.variant not in torch_model_variants() or m.head != "bot"
                                     or m.gate_feature not in ("projector", "pooled")):
    raise UserError(
        f"--compare torch: the PyTorch side has the ResNets with BoT's head and the gate on "
        f"its projector or pooled feature, not model.variant={m.variant!r}, "
        f"model.head={m.head!r}, model.gate_feature={m.gate_feature!r}; it would time another "
        "model. Compare a BoT recipe (e.g. configs/asl.py:ndec), or leave out --compare.")


def torch_model_variants():
  from asl_jax.benchmark import torch_model
  return tuple(torch_model.STAGES)


def main(argv):
  del argv
  request = Request(_ONLY.value, _COMPARE.value, _SEARCH.value)
  options = Options(**{name: flag.value for name, flag in _OPTIONS.items()},
                    config_name=flags.FLAGS["config"].config_filename,
                    overrides=[a for a in sys.argv[1:] if a.startswith("--config.")])
  check_counts_and_output(options, _JSON.value, _OVERWRITE.value)
  check_search(options, request)
  check_torch_model(_CONFIG.value, request)
  import jax
  if _MULTIHOST.value:
    cli.initialize_multihost()
  result = run(_CONFIG.value, request, options,
               log=lambda m: print(m, file=sys.stderr, flush=True)
               if jax.process_index() == 0 else None)
  if jax.process_index() == 0:
    print(harness.format_table(result), flush=True)
    if _JSON.value:
      harness.write_json(result, _JSON.value)


def run_cli():
  """Parses the command line and runs `main`; it ends as `cli.status` says."""
  cli.run_config_command(main)


if __name__ == "__main__":
  run_cli()
