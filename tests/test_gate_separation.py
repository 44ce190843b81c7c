"""benchmarks/gate_separation.py: its AUC at the run's own evaluation size,
and over several sizes, is the figure the run's evaluation reported with
that setting (norm_diagnostics.set_pairs)."""

import copy
import json
import os

import pytest

from conftest import load_module


def _module():
  return load_module("benchmarks", "gate_separation.py")


def test_separation_at_the_evaluation_size_is_the_runs_own(tiny_run, tmp_path, capsys):
  workdir, config = tiny_run
  with open(os.path.join(workdir, "metrics.json")) as f:
    reported = json.load(f)["norm_diagnostics"]["set_pairs"]
  size = config.eval.image_size
  assert _module().main(["--workdir", workdir, "--sizes", f"{size},{size + 8}", "--json"]) == 0
  out = capsys.readouterr().out
  rows = json.loads(out.strip().splitlines()[-1])
  assert [r["setting"] for r in rows] == [
      f"{size} px", f"{size} px, mirror-averaged", f"{size + 8} px",
      f"{size + 8} px, mirror-averaged", f"{size},{size + 8} px, mirror-averaged (eval.gate_sizes)"]
  assert rows[0]["auc"] == pytest.approx(reported, abs=1e-9)
  # The run evaluated again with the gate averaged over both sizes (and mirrored).
  from asl_jax import train
  e = copy.deepcopy(config)
  e.train.total_steps, e.model.init_from = 0, workdir
  e.eval.update(gate_sizes=(size, size + 8), gate_flip_average=True)
  e.eval.calibration.num_images = 4
  sized = train.train_and_evaluate(e, str(tmp_path / "sized"))["norm_diagnostics"]["set_pairs"]
  assert rows[-1]["auc"] == pytest.approx(sized, abs=1e-9)
  assert len({round(r["auc"], 9) for r in rows}) > 2  # The settings differ.
  for r in rows:
    assert 0 <= r["paper_removes_copies"] <= 1 and 0 <= r["best_removes_reverse_crops"] <= 1
    if r["paper_removes_copies"] <= 0.1:  # The paper's threshold is one of those tried.
      assert r["best_removes_reverse_crops"] >= r["paper_removes_reverse_crops"]


def test_a_workdir_that_is_no_run_is_one_paragraph(tmp_path, capsys):
  assert _module().main(["--workdir", str(tmp_path)]) == 2
  assert "config.json does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("sizes", ["0,-5", ",", "100000", "224,16"])
def test_sizes_outside_what_the_evaluation_takes_are_refused_first(tmp_path, capsys, sizes):
  # Refused before the workdir is read (it is no run here, which would be the error after).
  assert _module().main(["--workdir", str(tmp_path), "--sizes", sizes]) == 2
  err = capsys.readouterr().err
  assert "give one or more sides of 32-4096 pixels" in err and "config.json" not in err
