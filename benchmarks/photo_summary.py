"""One table of the real-photo runs' `metrics.json` files in a folder (the
`<name>_metrics.json` files that benchmarks/gpu_checks.sh copies there).

  python benchmarks/photo_summary.py OUT_DIR

Per run: μAP without a decision, with the paper's norm gate, with the
calibrated gate and with the configured decision; the norm ratio's AUC on the
set's copy vs reverse-crop pairs; the share of true-copy and reverse-crop
pairs that the paper's and the calibrated gate remove (verification off).
"""

import glob
import json
import os
import sys


def _removed(decision: dict, kind: str) -> str:
  value = (decision or {}).get("removed_fraction", {}).get(kind)
  return "-" if value is None else f"{100 * value:.0f}%"


def row(name: str, m: dict) -> list[str]:
  ap = lambda key: f"{m[key]['micro_ap']:.3f}" if key in m else "-"
  auc = (m.get("norm_diagnostics") or {}).get("set_pairs")
  paper, calibrated = m.get("gate"), (m.get("decisions") or {}).get("calibrated_gate")
  return [name, str(m.get("settings", {}).get("steps", "-")), ap("without_gate"),
          ap("with_gate"), ap("calibrated_gate"), ap("decision"),
          "-" if auc is None else f"{auc:.3f}",
          f"{_removed(paper, 'true_copy')} / {_removed(paper, 'hard_negative:reverse_crop')}",
          f"{_removed(calibrated, 'true_copy')} / "
          f"{_removed(calibrated, 'hard_negative:reverse_crop')}"]


def main(folder: str) -> int:
  head = ["run", "steps", "μAP none", "paper gate", "calibrated", "decision", "AUC pairs",
          "paper gate removes copies / rev. crops", "calibrated removes"]
  rows = []
  for path in sorted(glob.glob(os.path.join(folder, "*_metrics.json"))):
    with open(path) as f:
      rows.append(row(os.path.basename(path)[:-len("_metrics.json")], json.load(f)))
  print("| " + " | ".join(head) + " |")
  print("|" + "---|" * len(head))
  for r in rows:
    print("| " + " | ".join(r) + " |")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
