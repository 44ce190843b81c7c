"""How well a run's gate norm tells its evaluation set's copies from its
reverse crops, at several embedding sizes, with the image's own gate norm
and with the mirror-averaged one (eval.gate_flip_average), and averaged
over all the sizes as eval.gate_sizes averages (each image decoded once for
the largest and resized to each).

  python benchmarks/gate_separation.py --workdir RUN [--sizes 224,288] [--max_copy_drop 0.1]

RUN is a finished run (its config.json and checkpoint). The images are its
evaluation set (eval.data_name, else data.name) as prepared, decoded and
resized square as its evaluation does; the pairs are each copy with its
reference and each reverse-crop hard negative with the reference it
resembles (queries.csv's kinds). Per row: the AUC of the norm ratio
(decisions.separation; the run's own evaluation reports the same figure as
norm_diagnostics.set_pairs), the share of copy and of reverse-crop pairs
that the paper's threshold (|g(q)| > |g(r)|) removes, and the largest share
of reverse crops that any threshold removes while removing at most
--max_copy_drop of the copies. Nothing is written.
"""

import argparse
import dataclasses
import json

import ml_collections
import numpy as np

from asl_jax import cli, config_check, data, inference
from asl_jax.errors import UserError
from asl_jax.evaluation import decisions


def set_pairs(run):
  """(query ids, reference ids, is_copy) of the copy and reverse-crop pairs."""
  cfg = run.config
  meta = data.query_metadata(data.builder(cfg.data, cfg.eval.data_name or cfg.data.name))
  pairs = [(q, m["reference_id"], True) for q, m in meta.items() if m["kind"] == "copy"]
  pairs += [(q, m["resembles_id"], False) for q, m in meta.items()
            if m["hard_negative_kind"] == "reverse_crop"]
  if not any(c for *_, c in pairs) or all(c for *_, c in pairs):
    raise UserError(f"{run.workdir}: its evaluation set needs both copies and reverse-crop "
                    "hard negatives (queries.csv kinds copy and hard_negative/reverse_crop) "
                    "for this measurement.")
  return pairs


def log_norms(run, source, size: int, flip: bool, gate_sizes=()) -> np.ndarray:
  """log gate norms of every record, embedded square at `size` (with
  `gate_sizes`, averaged over those sides as eval.gate_sizes averages)."""
  config = ml_collections.ConfigDict(run.config.to_dict())
  config.eval.update(image_size=size, resize="square", gate_flip_average=flip,
                     gate_sizes=tuple(gate_sizes))
  return np.log(dataclasses.replace(run, config=config).embed(source, log=lambda *_: None)[1])


def row(name, log_ratio, is_copy, max_copy_drop) -> dict:
  c, r = log_ratio[is_copy], log_ratio[~is_copy]
  best = max(float(np.mean(r > t)) for t in np.concatenate([c, r, [np.inf]])
             if np.mean(c > t) <= max_copy_drop)
  return {"setting": name, "auc": decisions.separation(np.exp(c), np.exp(r)),
          "paper_removes_copies": float(np.mean(c > 0)),
          "paper_removes_reverse_crops": float(np.mean(r > 0)),
          "best_removes_reverse_crops": best}


def parse(argv=None) -> argparse.Namespace:
  p = cli.parser("benchmarks/gate_separation.py", __doc__)
  p.add_argument("--workdir", required=True, help="A finished asl_jax run.")
  p.add_argument("--sizes", type=cli.comma_list, default="224,288",
                 help="Embedding sides, comma-separated.")
  p.add_argument("--max_copy_drop", type=float, default=0.1)
  p.add_argument("--json", action="store_true", help="Print the rows as JSON too.")
  args = p.parse_args(argv)
  try:
    args.sizes = [int(s) for s in args.sizes]
  except ValueError:
    p.error(f"--sizes {','.join(args.sizes)}: give whole numbers of pixels, e.g. 224,288")
  valid_sides, _ = config_check.RULES["eval.gate_sizes"]  # The sides the evaluation takes.
  if not args.sizes or not valid_sides(tuple(args.sizes)):
    p.error(f"--sizes {','.join(map(str, args.sizes)) or '(none)'}: give one or more sides "
            "of 32-4096 pixels, comma-separated, e.g. 224,288 (as eval.gate_sizes takes)")
  if not 0 <= args.max_copy_drop < 1:
    p.error(f"--max_copy_drop {args.max_copy_drop}: give a share in [0, 1)")
  return args


def measure(args):
  run = inference.load_run(args.workdir)
  pairs = set_pairs(run)
  (q_src, q_ids), (r_src, r_ids) = (inference.split_source(run, s)
                                    for s in ("queries", "references"))
  qi, ri = {q: i for i, q in enumerate(q_ids)}, {r: i for i, r in enumerate(r_ids)}
  pairs = [p for p in pairs if p[0] in qi and p[1] in ri]
  q_idx = np.array([qi[q] for q, _, _ in pairs])
  r_idx = np.array([ri[r] for _, r, _ in pairs])
  is_copy = np.array([c for *_, c in pairs])
  rows = []
  for size in args.sizes:
    for flip in (False, True):
      lq, lr = log_norms(run, q_src, size, flip), log_norms(run, r_src, size, flip)
      rows.append(row(f"{size} px{', mirror-averaged' if flip else ''}",
                      lq[q_idx] - lr[r_idx], is_copy, args.max_copy_drop))
  if len(args.sizes) > 1:
    sizes = tuple(args.sizes)
    lq, lr = (log_norms(run, src, run.image_size, True, sizes) for src in (q_src, r_src))
    rows.append(row(f"{','.join(map(str, sizes))} px, mirror-averaged (eval.gate_sizes)",
                    lq[q_idx] - lr[r_idx], is_copy, args.max_copy_drop))
  print(f"{run.workdir} (step {run.step}): {int(is_copy.sum())} copy pairs, "
        f"{int((~is_copy).sum())} reverse-crop pairs")
  print(f"| setting | AUC | paper's threshold removes copies / reverse crops | most reverse "
        f"crops removed with <= {100 * args.max_copy_drop:.0f}% of copies |")
  print("|---|---|---|---|")
  for r in rows:
    print(f"| {r['setting']} | {r['auc']:.3f} | {100 * r['paper_removes_copies']:.1f}% / "
          f"{100 * r['paper_removes_reverse_crops']:.1f}% | "
          f"{100 * r['best_removes_reverse_crops']:.1f}% |")
  if args.json:
    print(json.dumps(rows))
  return 0


def main(argv=None) -> int:
  """Returns the exit status (cli.status: a bad input is one paragraph and 2)."""
  return cli.run_command(measure, parse, argv)


if __name__ == "__main__":
  cli.exit_process(main())
