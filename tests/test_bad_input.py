"""Bad input to every command: one paragraph and exit status 2 before any work
(output paths first), no traceback, nothing already written changed."""

import os
import subprocess
import sys

import pytest

from asl_jax import paths, pregenerate
from asl_jax.errors import UserError
from conftest import ROOT, tiny_config


def _run(module, *args, timeout=300):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, env=dict(os.environ, PYTHONPATH=ROOT))


def _one_paragraph(r, *needles):
  assert r.returncode == 2, r.stderr[-2000:]
  assert "Traceback" not in r.stderr, r.stderr[-2000:]
  for needle in needles:
    assert needle in r.stderr, r.stderr[-2000:]


# ----------------------------------------------------------- output paths --
def test_output_paths_are_checked(tmp_path):
  a_file = tmp_path / "f.txt"
  a_file.write_text("keep")
  with pytest.raises(UserError, match="is an existing file, not a folder"):
    paths.output_dir(str(a_file), "--workdir")
  with pytest.raises(UserError, match="is a file, not a folder"):
    paths.output_dir(str(a_file / "run"), "--workdir")
  with pytest.raises(UserError, match="its folder .*missing does not exist"):
    paths.output_file(str(tmp_path / "missing" / "o.json"), "--json")
  with pytest.raises(UserError, match="is a folder; give a file path"):
    paths.output_file(str(tmp_path), "--output")
  paths.output_dir(str(tmp_path / "new" / "deeper"), "--workdir")  # Creatable: fine.
  paths.output_file(str(tmp_path / "o.csv"), "--output")
  assert a_file.read_text() == "keep" and not (tmp_path / "new").exists()


def test_read_only_folder_is_refused(tmp_path):
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o555)
  try:
    try:
      (ro / "probe").write_text("x")
      pytest.skip("this user writes into a read-only folder (root): nothing to refuse")
    except PermissionError:
      pass
    with pytest.raises(UserError, match="the folder above it, .*ro, refuses new files"):
      paths.output_dir(str(ro / "run"), "--workdir")
    with pytest.raises(UserError, match="is not writable"):
      paths.output_file(str(ro / "o.csv"), "--output")
  finally:
    ro.chmod(0o755)


def test_read_only_filesystem_is_refused(tmp_path, monkeypatch):
  """As on a read-only mount, which refuses root too."""
  import errno

  def refuse(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))

  monkeypatch.setattr(paths.tempfile, "TemporaryFile", refuse)
  with pytest.raises(UserError, match="--workdir=.* is not writable: it refuses new files "
                     r"\(Read-only file system\)"):
    paths.output_dir(str(tmp_path), "--workdir")
  with pytest.raises(UserError, match="is not writable \\(Read-only file system\\)"):
    paths.output_file(str(tmp_path / "o.csv"), "--output")


def test_main_workdir_under_a_file_exits_2_before_any_work(tmp_path, data_dir):
  (tmp_path / "f").write_text("keep")
  r = _run("asl_jax.main", "--config", "configs/asl.py", f"--workdir={tmp_path / 'f' / 'run'}",
           f"--config.data.data_dir={tmp_path / 'data'}")
  _one_paragraph(r, "--workdir=", "is a file, not a folder")
  assert not (tmp_path / "data").exists()  # Nothing prepared.


def test_benchmark_json_in_a_missing_folder_and_zero_steps_exit_2_before_compiling(tmp_path):
  r = _run("asl_jax.benchmark", "--config", "configs/asl.py", "--only", "train",
           "--json", str(tmp_path / "missing" / "o.json"))
  _one_paragraph(r, "--json=", "does not exist")
  r = _run("asl_jax.benchmark", "--config", "configs/asl.py", "--only", "train", "--steps", "0")
  _one_paragraph(r, "--steps=0: give at least 1")
  for extra, needle in ((["--k", "0"], "--k=0: give the neighbours"),  # Were tracebacks.
                        (["--search", "20,5,16", "--k", "10"], "--k=10 is more than the 5")):
    r = _run("asl_jax.benchmark", "--config", "configs/asl.py", "--only", "search", *extra)
    _one_paragraph(r, needle)
  (tmp_path / "old.json").write_text("{}")  # An existing --json is kept without --overwrite.
  r = _run("asl_jax.benchmark", "--config", "configs/asl.py", "--only", "train",
           "--json", str(tmp_path / "old.json"))
  _one_paragraph(r, "old.json exists; give another path, or --overwrite")
  assert (tmp_path / "old.json").read_text() == "{}"


def test_gate_output_in_a_missing_folder_exits_2_before_reading(tmp_path, capsys):
  from asl_jax import gate
  for d in ("q", "r"):
    (tmp_path / d).mkdir()
  status = gate.main(["--predictions", str(tmp_path / "absent.csv"), "--workdir", str(tmp_path),
                      "--queries", str(tmp_path / "q"), "--references", str(tmp_path / "r"),
                      "--output", str(tmp_path / "missing" / "kept.csv")])
  assert status == 2
  err = capsys.readouterr().err
  assert "--output=" in err and "does not exist" in err and "absent.csv" not in err


def test_photos_and_pregenerate_out_that_is_a_file(tmp_path, data_dir):
  from tfds_ndec import manual, photos
  out = tmp_path / "out"
  out.write_text("keep")
  with pytest.raises(manual.NdecInputError, match="is an existing file, not a folder"):
    photos.generate(str(tmp_path / "no_photos_read"), str(out), log=lambda _: None)
  with pytest.raises(UserError, match="--out=.* is an existing file, not a folder"):
    pregenerate.generate(tiny_config(str(tmp_path / "data")), str(out), log=lambda _: None)
  assert out.read_text() == "keep" and not (tmp_path / "data").exists()


def test_evaluate_write_predictions_in_a_missing_folder(tmp_path):
  (tmp_path / "gt.csv").write_text("query_id,reference_id\nQ1,R1\n")
  (tmp_path / "p.csv").write_text("Q1,R1,0.5\n")
  r = _run("asl_jax.evaluate", "--predictions", str(tmp_path / "p.csv"), "--ground_truth",
           str(tmp_path / "gt.csv"), "--write_predictions", str(tmp_path / "no" / "p.csv"))
  _one_paragraph(r, "--write_predictions=", "does not exist")
  (tmp_path / "old.csv").write_text("keep")  # Replaced only with --overwrite.
  args = ["--predictions", str(tmp_path / "p.csv"), "--ground_truth", str(tmp_path / "gt.csv"),
          "--write_predictions", str(tmp_path / "old.csv")]
  _one_paragraph(_run("asl_jax.evaluate", *args), "old.csv exists; give another path")
  assert (tmp_path / "old.csv").read_text() == "keep"
  assert _run("asl_jax.evaluate", *args, "--overwrite").returncode == 0
  assert (tmp_path / "old.csv").read_text().splitlines() == ["query_id,reference_id,score",
                                                             "Q1,R1,0.5"]
  assert not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]


# -------------------------------------------------- asl_jax.evaluate inputs --
def _descriptor_files(tmp_path, nan_row=None, ref_dim=8):
  import numpy as np
  from asl_jax.evaluation import io, search
  rs = np.random.default_rng(0)
  refs = search.l2_normalize(rs.normal(size=(30, 8)))
  queries = search.l2_normalize(refs[:5] + 0.01 * rs.normal(size=(5, 8)))
  if nan_row is not None:
    queries[nan_row, 3] = np.nan
  qids, rids = [f"Q{i}" for i in range(5)], [f"R{i}" for i in range(30)]
  io.write_ground_truth(str(tmp_path / "gt.csv"), [(q, f"R{i}") for i, q in enumerate(qids)])
  io.write_descriptors(str(tmp_path / "q.h5"), qids, queries)
  io.write_descriptors(str(tmp_path / "r.h5"), rids, rs.normal(size=(30, ref_dim)) if
                       ref_dim != 8 else refs)
  return ["--query_descriptors", str(tmp_path / "q.h5"), "--reference_descriptors",
          str(tmp_path / "r.h5"), "--ground_truth", str(tmp_path / "gt.csv")]


def test_evaluate_bad_descriptor_inputs_are_one_paragraph(tmp_path):
  import h5py
  args = _descriptor_files(tmp_path)
  r = _run("asl_jax.evaluate", *args)
  assert r.returncode == 0, r.stderr  # The good files evaluate.
  for extra, needle in ((["--k", "0"], "--k=0: give the number"),
                        (["--global_budget", "abc"], "--global_budget='abc': give a positive"),
                        (["--index", "IVFbogus,Flat"], "--index='IVFbogus,Flat': faiss could not"),
                        (["--predictions", args[-1]], "--predictions was given together with"),
                        # PCA and score normalisation beyond the 30 x 8 training descriptors
                        # (library ValueErrors, tracebacks, before), a folder as a CSV.
                        (["--pca_dim", "-5"], "--pca_dim -5: give the dimensions"),
                        (["--train_descriptors", str(tmp_path / "r.h5"), "--pca_dim", "9"],
                         "30 of 8 dimensions, so it can give at most 8"),
                        (["--train_descriptors", str(tmp_path / "r.h5"), "--score_norm", "sscd",
                          "--score_norm_n", "50", "--score_norm_n_end", "60"],
                         "1 <= n <= n_end <= 30"),
                        (["--ground_truth", str(tmp_path)], "is a folder; a ground truth")):
    _one_paragraph(_run("asl_jax.evaluate", *args, *extra), needle)
  with h5py.File(tmp_path / "one.h5", "w") as f:  # 1-D vectors.
    f["vectors"], f["image_names"] = [0.1] * 8, [b"Q0"]
  _one_paragraph(_run("asl_jax.evaluate", *args[:1], str(tmp_path / "one.h5"), *args[2:]),
                 "has shape (8,); expected [n, d]")
  (tmp_path / "text.h5").write_text("query_id,vector\n")
  _one_paragraph(_run("asl_jax.evaluate", *args[:1], str(tmp_path / "text.h5"), *args[2:]),
                 "is not an HDF5 file")
  (tmp_path / "d").mkdir()
  _one_paragraph(_run("asl_jax.evaluate", *_descriptor_files(tmp_path / "d", ref_dim=6)),
                 "query descriptors have 8 dimensions, the references 6")
  _one_paragraph(_run("asl_jax.evaluate", *_descriptor_files(tmp_path, nan_row=2)),
                 "1 of the 5 descriptors in 'vectors' hold NaN or infinite values (e.g. Q2)")


def test_evaluate_silent_wrong_results_are_errors_or_counted_warnings(tmp_path):
  gt, p = tmp_path / "gt.csv", tmp_path / "p.csv"
  p.write_text("Q1,R1,0.9\nQ2,R9,0.5\n")
  gt.write_text("query,reference\nQ1,R1\nQ2,\n")
  r = _run("asl_jax.evaluate", "--predictions", str(p), "--ground_truth", str(gt))
  _one_paragraph(r, "line 1 'query,reference' looks like a header")
  gt.write_text("query_id,reference_id\nQ1,R1\nQ2,\n")
  (tmp_path / "empty.csv").write_text("")
  r = _run("asl_jax.evaluate", "--predictions", str(tmp_path / "empty.csv"), "--ground_truth",
           str(gt))
  _one_paragraph(r, "no prediction rows (0 bytes)")
  p.write_text("X1,S1,0.9\nX2,S9,0.5\n")  # Another set's ids.
  _one_paragraph(_run("asl_jax.evaluate", "--predictions", str(p), "--ground_truth", str(gt)),
                 "None of the 2 predictions' query ids appear in the ground truth")
  p.write_text("Q1,R1,0.9\nX2,R9,0.5\n")
  r = _run("asl_jax.evaluate", "--predictions", str(p), "--ground_truth", str(gt))
  assert r.returncode == 0 and "warning: 1 of 2 predictions name queries" in r.stderr, r.stderr


# ------------------------------------------------------------ asl_jax.gate --
def _gate_run(tmp_path, record_from=None, **gate_json):
  """A set of images, a run dir with norms for its ids, predictions."""
  import json

  import numpy as np
  from asl_jax.evaluation import gate_apply
  from asl_jax.evaluation import io as eval_io
  from test_folder import make_set
  root = tmp_path / "s"
  queries = sorted(make_set(root, kinds=False, train=False))
  refs = sorted(os.path.splitext(f)[0] for f in os.listdir(root / "references"))
  run = tmp_path / "run"
  run.mkdir()
  eval_io.write_descriptors(str(run / "queries.h5"), queries, np.zeros((5, 2)),
                            gate_norms=np.ones(5))
  eval_io.write_descriptors(str(run / "references.h5"), refs, np.zeros((5, 2)),
                            gate_norms=np.array([2, 2, 0.5, 2, 2]))
  src = record_from or root
  load = lambda split: gate_apply.image_loader(str(src / split))[0]
  record = gate_apply.images_record("folder/s", {"queries": (queries, load("queries")),
                                                 "references": (refs, load("references"))})
  (run / "gate.json").write_text(json.dumps({"decision": "verify", "rescore": 1.0,
                                             "verify": {}, "calibration": None,
                                             "images": record, **gate_json}))
  eval_io.write_predictions(str(tmp_path / "p.csv"), [q for q in queries for _ in refs],
                            refs * len(queries), np.linspace(1, 0, 25))
  return ["--predictions", str(tmp_path / "p.csv"), "--workdir", str(run), "--queries",
          str(root / "queries"), "--references", str(root / "references"), "--output",
          str(tmp_path / "out.csv"), "--workers", "1"]


def test_gate_decision_rescore_and_calibration_are_explicit(tmp_path, capsys):
  import json

  from asl_jax import gate
  args = _gate_run(tmp_path)
  assert gate.main([*args, "--decision", "calibrated_norm"]) == 2  # "calibration": null.
  assert "records no calibration" in capsys.readouterr().err
  assert gate.main([*args, "--decision", "norm"]) == 0
  # An existing --output (here the predictions themselves) is kept without --overwrite;
  # bad --rescore and --workers are refused before any work.
  out, pred = tmp_path / "out.csv", tmp_path / "p.csv"
  kept, before = out.read_bytes(), pred.read_bytes()
  for extra, needle in ((["--decision", "norm"], "--output " + str(out) + " exists"),
                        (["--decision", "norm", "--output", str(pred)], "p.csv exists"),
                        (["--rescore", "nan", "--overwrite"], "--rescore nan: give the finite"),
                        (["--workers", "-1", "--overwrite"], "--workers -1: give the")):
    capsys.readouterr()
    assert gate.main([*args, *extra]) == 2, extra
    assert needle in capsys.readouterr().err
  assert out.read_bytes() == kept and pred.read_bytes() == before
  args = [*args, "--overwrite"]
  capsys.readouterr()
  assert gate.main([*args, "--decision", "norm"]) == 0
  captured = capsys.readouterr()
  report = json.loads(captured.out)
  # The paper's gate alone: the run's +1 rescoring is not carried over, and it says so.
  assert report["rescore"] == 0 and report["dropped"] == 5
  assert "rescoring of verified copies: +0, from none with --decision norm" in captured.err
  assert gate.main([*args, "--decision", "norm", "--rescore", "0.5"]) == 0
  assert json.loads(capsys.readouterr().out)["rescore"] == 0.5


def test_gate_refuses_another_sets_images_and_names_a_corrupt_one(tmp_path, capsys):
  from asl_jax import gate
  from test_folder import make_set
  other = tmp_path / "other"
  make_set(other, kinds=False, train=False)
  # Same ids, other pictures: the run's record was taken from mirrored images.
  from PIL import Image
  for folder in ("queries", "references"):
    for name in os.listdir(other / folder):
      with Image.open(other / folder / name) as im:
        im.transpose(Image.Transpose.ROTATE_180).save(other / folder / name)
  args = _gate_run(tmp_path, record_from=other)
  assert gate.main([*args, "--decision", "norm"]) == 2
  assert "are not the images the run evaluated under the same ids" in capsys.readouterr().err
  args = _gate_run(tmp_path / "b")
  (tmp_path / "b" / "s" / "queries" / "q_crop.jpg").write_bytes(b"\xff\xd8 truncated")
  assert gate.main([*args, "--decision", "verify"]) == 2
  err = capsys.readouterr().err
  assert "q_crop.jpg could not be read as an image" in err and "Traceback" not in err


# ------------------------------------------------------- misleading messages --
def test_help_exits_0_and_lists_config():
  r = _run("asl_jax.main", "--help")
  assert r.returncode == 0 and "--config: Config file" in r.stdout, r.stderr[-2000:]
  assert _run("asl_jax.evaluate", "--help").returncode == 0


def test_dataset_typo_lists_the_valid_names_not_the_tfds_catalogue(tmp_path):
  from asl_jax import data
  c = tiny_config(str(tmp_path)).data
  with pytest.raises(UserError, match="Did you mean folder/photo_dev\\?") as e:
    data.builder(c, "folders/photo_dev")
  assert "ndec/synthetic" in str(e.value) and len(str(e.value)) < 800  # No catalogue.


def test_missing_folder_set_directory_is_named_without_ndec_instructions(tmp_path):
  from asl_jax import data
  c = tiny_config(str(tmp_path)).data
  c.name, c.manual_dir = "folder/mine", str(tmp_path / "absent")
  with pytest.raises(UserError, match="manual_dir=.*absent', is not a directory") as e:
    data.prepare(c, log=lambda _: None)
  assert "NDEC" not in str(e.value) and "download" not in str(e.value).lower()


def test_faiss_imports_without_loader_noise():
  """faiss's loader logs three ModuleNotFoundError lines for the CPU builds it
  could not load when logging is at INFO (as absl sets it); the search
  module's import of faiss silences them."""
  code = ("import logging; logging.basicConfig(level=logging.INFO);"
          "from asl_jax.evaluation import search; search._faiss()")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 0, r.stderr
  assert "ModuleNotFoundError" not in r.stderr and "Could not load" not in r.stderr


@pytest.mark.parametrize("raised,status,line", [
    ("KeyboardInterrupt()", 130, "asl_jax: interrupted; no output was replaced."),
    ("UserError('--out x is a folder')", 2, "asl_jax: error: --out x is a folder")])
def test_embed_export_find_end_ctrl_c_and_errors_in_one_line(raised, status, line):
  """The commands' shared entry (cli.run_json_command): Ctrl-C is one line and
  status 130, a UserError one paragraph and status 2, never a traceback."""
  code = ("import sys; from asl_jax import cli; from asl_jax.errors import UserError\n"
          "def run(args, log):\n"
          f"  raise {raised}\n"
          "sys.exit(cli.run_json_command(run, lambda argv: None))")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == status and r.stderr.strip() == line, r.stderr
  assert r.stdout == ""


# ------------------------------------------------------- CSVs not in UTF-8 --
def test_csv_files_that_are_not_utf8_are_one_paragraph(tmp_path):
  """A Latin-1 queries.csv, a ground truth that is an HDF5 file and an HDF5 file
  given as --predictions were UnicodeDecodeError tracebacks (status 1)."""
  from tfds_ndec import folder, manual
  latin = tmp_path / "queries.csv"
  latin.write_bytes("query_id,kind,reference_id,detail\nQ1,distractor,,café\n".encode("latin-1"))
  with pytest.raises(manual.NdecInputError, match=r"queries.csv is not UTF-8 text \(byte 52"
                     r".*a queries.csv \(query_id,kind.*save a CSV .* as UTF-8"):
    folder.read_query_kinds(str(latin))
  h5 = tmp_path / "gt.csv"
  h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)))
  with pytest.raises(manual.GroundTruthError, match=r"gt.csv, an HDF5 file \(descriptors\?\), "
                     r"is not UTF-8 text \(byte 0.*a ground truth \(query_id,reference_id"):
    manual.read_ground_truth(str(h5))
  good = tmp_path / "good.csv"
  good.write_text("query_id,reference_id\nQ1,R1\n")
  r = _run("asl_jax.evaluate", "--predictions", str(h5), "--ground_truth", str(good))
  _one_paragraph(r, "an HDF5 file (descriptors?), is not UTF-8 text",
                 "a predictions CSV (query_id,reference_id,score rows) was expected")
  assert r.stderr.count("\n") == 1


def test_prepare_refuses_bad_numbers_and_paths_before_creating_anything(tmp_path, capsys):
  """A negative --max_side or a --jpeg_quality of 500 named a variant of the set
  and prepared it; a --data_dir that is a file was a NotADirectoryError; a
  folder set's missing --manual_dir printed NDEC's download instructions."""
  from tfds_ndec import prepare
  from test_folder import make_set
  make_set(tmp_path / "mine", train=False)
  (tmp_path / "file").write_text("x")
  data_dir = tmp_path / "data"
  base = ["folder", "--manual_dir", str(tmp_path / "mine"), "--data_dir", str(data_dir)]
  for extra, needle in ((["--max_side", "-5"], "--max_side -5: give 0 (keep) or more"),
                        (["--max_side", "200", "--jpeg_quality", "500"],
                         "--jpeg_quality 500: give a JPEG quality, 1-100"),
                        (["--workers", "-2"], "--workers -2: give 0"),
                        (["--data_dir", str(tmp_path / "file")], "file is a file; give the"),
                        (["--manual_dir", str(tmp_path / "absent")],
                         "absent does not exist: give the folder of the set"),
                        (["--manual_dir", str(tmp_path / "file")], "file is a file: give the")):
    capsys.readouterr()
    assert prepare.main([*base, *extra]) == 2, extra
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Download" not in err, err
  assert not data_dir.exists()
