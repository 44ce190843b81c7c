"""Evaluation files, search backends, score normalisation, gates and the CLI."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from asl_jax.evaluation import decisions, io, search
from conftest import ROOT


# ------------------------------------------------------------------ files --
def test_ground_truth_accepts_bom_crlf_no_header_and_blank_lines(tmp_path):
  p = tmp_path / "gt.csv"
  p.write_bytes("\ufeffquery_id,reference_id\r\nQ1,R1\r\nQ2,\r\n\r\n\r\n".encode())
  assert io.read_ground_truth(str(p)) == [("Q1", "R1"), ("Q2", "")]
  p.write_text("Q1,R1\nQ2\n")
  assert io.read_ground_truth(str(p)) == [("Q1", "R1"), ("Q2", "")]
  # Columns named after the two in a header are read past, as when a set is prepared
  # (asl_jax.evaluate refused the ground truth that asl_jax.main had prepared from).
  p.write_text("query_id,reference_id,note\nQ1,R1,x\nQ2,,\nQ3,R3\n")
  assert io.read_ground_truth(str(p)) == [("Q1", "R1"), ("Q2", ""), ("Q3", "R3")]


def test_ground_truth_errors_name_the_line(tmp_path):
  p = tmp_path / "gt.csv"
  p.write_text("query_id,reference_id\nQ1,R1\nQ1,R2\nQ3,R3,extra\n")
  with pytest.raises(io.FormatError) as e:
    io.read_ground_truth(str(p))
  assert "line 3: query Q1 already on line 2" in str(e.value)
  assert "line 4" in str(e.value) and str(p) in str(e.value)


@pytest.mark.parametrize("body,message", [
    ("Q1,R1\n", "line 1: expected 3 columns"),
    ("query_id,reference_id,score\nQ1,R1,0.5\nQ2,R2,high\n",
     "line 3: score 'high' is not a number"),
    ("Q1,R1,0.5\nQ1,R1,0.4\n", "line 2: duplicate pair Q1,R1 (first on line 1)"),
    ("Q1,R1,nan\n", "line 1: score 'nan' is not finite"),
])
def test_malformed_predictions(tmp_path, body, message):
  p = tmp_path / "p.csv"
  p.write_text(body)
  with pytest.raises(io.FormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
    io.read_predictions(str(p))


def test_predictions_round_trip(tmp_path):
  p = str(tmp_path / "p.csv")
  io.write_predictions(p, ["Q1", "Q2"], ["R7", "R8"], [0.123456789, -2.0])
  got = io.read_predictions(p)
  assert got.query_ids == ["Q1", "Q2"] and got.reference_ids == ["R7", "R8"]
  np.testing.assert_array_equal(got.scores, [0.123456789, -2.0])  # Full precision.


def test_descriptor_files_round_trip(tmp_path):
  rs = np.random.default_rng(0)
  v = rs.normal(size=(5, 8)).astype(np.float32)
  io.write_descriptors(str(tmp_path / "a.h5"), ["dir/R000001.jpg", "R000002", "R3.png",
                                                 "R4", "R5"], v)
  io.write_descriptors(str(tmp_path / "b.h5"), ["R6"], v[:1])
  ids, got = io.read_descriptors([str(tmp_path / "a.h5"), str(tmp_path / "b.h5")])
  assert ids == ["R000001", "R000002", "R3", "R4", "R5", "R6"]
  np.testing.assert_array_equal(got[:5], v)
  sub = str(tmp_path / "sub.h5")
  io.write_submission(sub, ["Q2", "Q1"], v[:2], ["R9", "R1", "R5"], v[2:5])
  qi, q, ri, r = io.read_submission(sub)
  assert qi == ["Q1", "Q2"] and ri == ["R1", "R5", "R9"]      # Sorted by id.
  np.testing.assert_array_equal(q, v[[1, 0]])
  np.testing.assert_array_equal(r, v[[3, 4, 2]])
  assert io.is_submission_file(sub) and not io.is_submission_file(str(tmp_path / "a.h5"))
  with pytest.raises(io.FormatError, match="track-2 submission layout"):
    io.read_submission(str(tmp_path / "a.h5"))


# ----------------------------------------------------------------- search --
def _data(nq=60, nr=500, d=24, seed=0):
  rs = np.random.default_rng(seed)
  return (search.l2_normalize(rs.normal(size=(nq, d))),
          search.l2_normalize(rs.normal(size=(nr, d))))


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_jax_search_equals_faiss(metric):
  q, r = _data()
  a = search.search(q, r, k=7, metric=metric)
  b = search.search(q, r, k=7, metric=metric, backend="jax")
  brute = q.astype(np.float64) @ r.T.astype(np.float64)
  if metric == "l2":
    brute = -((q[:, None].astype(np.float64) - r[None]) ** 2).sum(-1)
  np.testing.assert_allclose(np.sort(brute, 1)[:, ::-1][:, :7].reshape(-1), a.score, atol=1e-5)
  np.testing.assert_allclose(a.score, b.score, atol=1e-5)
  # Same neighbours, up to references whose exact scores tie within 1e-5.
  differ = a.reference_index != b.reference_index
  assert differ.mean() < 0.05
  qi = a.query_index[differ]
  np.testing.assert_allclose(brute[qi, a.reference_index[differ]],
                             brute[qi, b.reference_index[differ]], atol=1e-5)


def test_jax_search_blocks_and_padding():
  from asl_jax.evaluation import jax_search
  q, r = _data(nq=10, nr=103)
  want = np.argsort(-(q @ r.T), 1, kind="stable")[:, :5]
  for ref_block, chunk in ((16, 0), (64, 16)):  # One-stage, and two-stage top-k.
    index = jax_search.ReferenceIndex(r, "ip", ref_block=ref_block, chunk=chunk)
    s, i = index.search(q, 5, query_block=4)
    np.testing.assert_array_equal(i, want)
    np.testing.assert_allclose(s, np.take_along_axis(q @ r.T, want, 1), atol=1e-6)
    assert i.max() < 103


def test_jax_search_sharded_over_8_devices_equals_faiss():
  script = textwrap.dedent("""
      import jax, numpy as np
      from asl_jax.evaluation import jax_search, search
      assert jax.device_count() == 8
      rs = np.random.default_rng(1)
      q = search.l2_normalize(rs.normal(size=(33, 16)))
      r = search.l2_normalize(rs.normal(size=(1001, 16)))
      index = jax_search.ReferenceIndex(r, "ip", ref_block=32)
      assert len(index.refs.sharding.device_set) == 8
      s, i = index.search(q, 10, query_block=16)
      f = search.search(q, r, k=10)
      np.testing.assert_array_equal(i.reshape(-1), f.reference_index)
      print("OK")
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]


def test_global_budget_is_the_best_pairs_overall():
  q, r = _data(nq=20, nr=200)
  # Make query 0 match many references strongly, so it takes > 10 slots.
  r[:40] = search.l2_normalize(q[0] + 0.05 * np.random.default_rng(3).normal(size=(40, 24)))
  got = search.search(q, r, global_budget=60)
  s = q @ r.T
  want = np.sort(s.reshape(-1))[::-1][:60]
  np.testing.assert_allclose(np.sort(got.score)[::-1], want, atol=1e-6)
  assert np.bincount(got.query_index).max() > 16  # More than one K round.


def test_ivf_pq_with_exact_reranking_finds_exact_neighbours():
  rs = np.random.default_rng(0)
  centres = rs.normal(size=(64, 32))
  r = search.l2_normalize(centres[rs.integers(64, size=4000)] + 0.1 * rs.normal(size=(4000, 32)))
  q = search.l2_normalize(r[:50] + 0.02 * rs.normal(size=(50, 32)))
  exact = search.search(q, r, k=5)
  approx = search.search(q, r, k=5, index="IVF64,PQ8x4fs", nprobe=16, rerank=20)
  hits = np.mean(exact.reference_index.reshape(50, 5)[:, 0] ==
                 approx.reference_index.reshape(50, 5)[:, 0])
  assert hits >= 0.95
  np.testing.assert_allclose(approx.score.reshape(50, 5)[:, 0],
                             exact.score.reshape(50, 5)[:, 0], atol=1e-5)


def test_pca_whitening_learned_on_training_descriptors():
  rs = np.random.default_rng(0)
  train = rs.normal(size=(500, 16)) * np.linspace(5, 0.1, 16)
  whiten = search.pca_whitening(train, 4)
  out = whiten(train)
  assert out.shape == (500, 4)
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
  with pytest.raises(ValueError, match="at least 32"):
    search.pca_whitening(train, 32)


def test_score_normalization_hand_computed():
  q = np.array([[1.0, 0.0]], np.float32)
  background = np.array([[1, 0], [0.6, 0.8], [0, 1], [-1, 0]], np.float32)
  # Similarities to the background, sorted: 1.0, 0.6, 0.0, -1.0.
  sscd = search.score_normalization_bias(q, background, "sscd", 1, 3, 1.0)
  np.testing.assert_allclose(sscd, [(1.0 + 0.6 + 0.0) / 3], rtol=1e-6)
  isc = search.score_normalization_bias(q, background, "isc", 2, 2, 2.0)
  np.testing.assert_allclose(isc, [1.2], rtol=1e-6)
  with pytest.raises(ValueError, match="n_end"):
    search.score_normalization_bias(q, background, "sscd", 1, 9, 1.0)


def test_gates_hand_computed():
  c = search.Candidates(np.array([0, 0, 1]), np.array([0, 1, 1]), np.array([0.9, 0.8, 0.5],
                                                                            np.float32))
  qn, rn = np.array([2.0, 1.0]), np.array([3.0, 1.0])
  np.testing.assert_array_equal(decisions.asl_gate(c, qn, rn), [True, False, True])
  soft = decisions.soft_gate_scores(c, qn, rn, temperature=0.5)
  want = 0.9 / (1 + np.exp(-np.log(3 / 2) / 0.5))
  np.testing.assert_allclose(soft[0], want, rtol=1e-6)
  np.testing.assert_allclose(soft[2], 0.25, rtol=1e-6)  # Equal norms halve.


def test_soft_gate_demotes_for_either_sign_of_score():
  """After score normalisation scores can be negative: a pair whose query
  norm exceeds the reference's must still fall, never rise toward 0."""
  c = search.Candidates(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]),
                        np.array([-0.2, -0.2, 0.3, 0.3], np.float32))
  qn, rn = np.array([1.0, 1.0]), np.array([0.5, 2.0])  # Reference 0: the query holds more.
  soft = decisions.soft_gate_scores(c, qn, rn, temperature=0.5)
  assert soft[0] < soft[1] and soft[0] < -0.2 and soft[2] < soft[3]
  np.testing.assert_allclose(soft[0], -0.2 * (1 + np.exp(np.log(2) / 0.5)), rtol=1e-6)
  # Monotone in the score for a fixed norm ratio, through 0.
  grid = search.Candidates(np.zeros(5, int), np.zeros(5, int),
                           np.array([-1, -0.1, 0, 0.1, 1], np.float32))
  assert np.all(np.diff(decisions.soft_gate_scores(grid, qn, rn, 0.5)) > 0)


# -------------------------------------------------------------------- CLI --
def _cli(*args):
  return subprocess.run([sys.executable, "-m", "asl_jax.evaluate", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def _cli_on_csvs(tmp_path, predictions: str, ground_truth: str):
  (tmp_path / "p.csv").write_text(predictions)
  (tmp_path / "gt.csv").write_text(ground_truth)
  return _cli("--predictions", str(tmp_path / "p.csv"), "--ground_truth",
              str(tmp_path / "gt.csv"))


def test_cli_predictions(tmp_path):
  r = _cli_on_csvs(tmp_path, "Q1,R1,.95\nQ2,R2,.9\nQ3,R3,.8\nQ5,R7,.7\nQ4,R4,.6\n",
                   "query_id,reference_id\nQ1,R1\nQ2,R2\nQ3,R3\nQ4,R4\nQ5,\n")
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout)
  assert out["micro_ap"] == pytest.approx(0.95)
  assert out["recall_at_p90"] == pytest.approx(0.75)
  assert out["num_predictions"] == 5 and out["num_ground_truth"] == 4
  assert out["num_queries_in_ground_truth"] == 5


def test_cli_malformed_file_exits_nonzero_naming_the_line(tmp_path):
  r = _cli_on_csvs(tmp_path, "query_id,reference_id,score\nQ1,R1,0.4\nQ1,R1,0.3\n",
                   "Q1,R1\n")
  assert r.returncode == 2
  assert "line 3: duplicate pair Q1,R1" in r.stderr and "Traceback" not in r.stderr


def test_cli_descriptors_both_layouts(tmp_path):
  rs = np.random.default_rng(0)
  refs = search.l2_normalize(rs.normal(size=(40, 8)))
  queries = search.l2_normalize(refs[:5] + 0.01 * rs.normal(size=(5, 8)))
  qids = [f"Q{i}" for i in range(5)]
  rids = [f"R{i}" for i in range(40)]
  gt = tmp_path / "gt.csv"
  io.write_ground_truth(str(gt), [(q, f"R{i}") for i, q in enumerate(qids)])
  sub = str(tmp_path / "sub.h5")
  io.write_submission(sub, qids, queries, rids, refs)
  r = _cli("--descriptors", sub, "--ground_truth", str(gt), "--metric", "l2",
           "--global_budget", "auto")
  assert r.returncode == 0, r.stderr
  out = json.loads(r.stdout)
  assert out["micro_ap"] == pytest.approx(1.0) and out["num_predictions"] == 50
  io.write_descriptors(str(tmp_path / "q.h5"), qids, queries)
  io.write_descriptors(str(tmp_path / "r.h5"), rids, refs)
  r = _cli("--query_descriptors", str(tmp_path / "q.h5"), "--reference_descriptors",
           str(tmp_path / "r.h5"), "--ground_truth", str(gt), "--k", "3")
  assert json.loads(r.stdout)["num_predictions"] == 15


def test_per_kind_breakdown_hand_case():
  from asl_jax.evaluation import report
  meta = {"Q0": {"kind": "copy", "reference_id": "R0", "edits": ["crop", "blur"],
                 "hard_negative_kind": "", "resembles_id": ""},
          "Q1": {"kind": "hard_negative", "reference_id": "", "edits": [],
                 "hard_negative_kind": "reverse_crop", "resembles_id": "R1"},
          "Q2": {"kind": "distractor", "reference_id": "", "edits": [],
                 "hard_negative_kind": "", "resembles_id": ""}}
  pairs = search.Candidates(np.array([0, 0, 1, 2, 2]), np.array([1, 0, 1, 0, 1]),
                            np.array([0.9, 0.8, 0.7, 0.5, 0.4], np.float32))
  keep = np.array([True, True, False, True, False])
  out = report.per_kind_breakdown(meta, ["Q0", "Q1", "Q2"], ["R0", "R1"], pairs, keep,
                                  {("Q0", "R0")})
  assert out["copies_by_edit"]["crop"] == {"queries": 1, "found": 1, "rank_1": 0,
                                           "removed_by_gate": 0}
  assert out["hard_negatives_by_kind"]["reverse_crop"] == {
      "queries": 1, "predicted": 1, "removed_by_gate": 1}
  assert out["distractors"] == {"queries": 1, "predictions": 2, "removed_by_gate": 1}


@pytest.mark.parametrize("metric,stream,chunk", [("ip", False, 0), ("ip", True, 8),
                                                 ("l2", True, 0)])
def test_bf16_shortlist_with_exact_reranking_is_the_float32_search(metric, stream, chunk):
  """Random data: the shortlist alone finds the float32 top-k (no query sent
  back), blocks streamed from the host or kept on the device."""
  from asl_jax.evaluation import jax_search
  q, r = _data(nq=40, nr=700, d=32, seed=3)
  want_s, want_i = jax_search.ReferenceIndex(r, metric, precision="highest").search(q, 5)
  index = jax_search.ReferenceIndex(r, metric, ref_block=128, precision="bf16", chunk=chunk,
                                    stream=stream)
  assert index.streamed == stream and index.num_blocks == 6
  s, i = index.search(q, 5, query_block=16)
  np.testing.assert_array_equal(i, want_i)
  np.testing.assert_allclose(s, want_s, atol=1e-6)  # Exact float32 scores, not bf16's.
  assert index.last_recomputed == 0


def test_bf16_search_near_ties_are_caught_by_the_certificate():
  """Adversarial: clusters of 30 references whose scores against a query lie
  closer together than bfloat16 resolves, so a bf16 shortlist of 4 cannot order
  them (the shortlist alone misses for 19 of the 50 queries); the certificate
  sends those queries to the float32 scan, and the result is the exact top-k
  (float64 brute force, up to float32 ties)."""
  from asl_jax.evaluation import jax_search
  rs = np.random.default_rng(4)
  centres = search.l2_normalize(rs.normal(size=(20, 64)))
  r = search.l2_normalize(np.repeat(centres, 30, 0) + 0.003 * rs.normal(size=(600, 64)))
  q = search.l2_normalize(centres[rs.integers(0, 20, 50)] + 0.06 * rs.normal(size=(50, 64)))
  brute = q.astype(np.float64) @ r.T.astype(np.float64)
  want = np.sort(brute, 1)[:, ::-1][:, :3]
  index = jax_search.ReferenceIndex(r, "ip", ref_block=200, precision="bf16", shortlist=4)
  s, i = index.search(q, 3, query_block=32)
  assert index.last_recomputed > 0
  np.testing.assert_allclose(np.take_along_axis(brute, i, 1), want, atol=2e-7)
  np.testing.assert_allclose(s, want, atol=2e-7)


def test_short_side_resize_groups_by_shape_and_keeps_order():
  """eval.resize=short_side: each image embedded with its short side at the
  size and its long side rounded to a multiple of 32, images of one shape
  batched together, results back in record order."""
  import io as stdio
  import types
  import jax
  from PIL import Image
  from asl_jax import sharding
  from asl_jax.evaluation import embedding
  assert embedding.eval_shape(300, 400, 288) == (288, 288)  # square is the default.
  assert embedding.eval_shape(300, 400, 288, "short_side") == (288, 384)
  assert embedding.eval_shape(512, 341, 288, "short_side") == (448, 288)  # 432.4 -> 448.
  assert embedding.eval_shape(120, 100, 64, "short_side") == (64, 64)  # 76.8 -> 64.
  rng = np.random.default_rng(0)
  sizes = [(300, 400), (512, 341), (200, 200), (330, 440), (90, 60)]
  source = []
  for h, w in sizes:
    buf = stdio.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(buf, "PNG")
    source.append({"image": buf.getvalue(), "id": b"x"})
  groups = embedding.shape_groups(source, 96, "short_side")
  assert {k: list(v) for k, v in groups.items()} == {
      (96, 128): [0, 3], (96, 96): [2], (160, 96): [1], (128, 96): [4]}

  def embed(params, stats, images):  # Each row: its image's height, width and mean.
    b, h, w = images.shape[:3]
    means = images.reshape(b, -1).astype(np.float32).mean(1)
    return np.stack([np.full(b, h), np.full(b, w), means], 1), means

  mesh = sharding.make_mesh()
  state = types.SimpleNamespace(params={"model": None}, batch_stats=None)
  desc, norms = embedding.embed_split(embed, state, source, 96, 2, mesh, log=lambda _: None,
                                      resize="short_side")
  assert desc.shape == (5, 3) and jax.device_count() >= 1
  for i, (h, w) in enumerate(sizes):
    shape = embedding.eval_shape(h, w, 96, "short_side")
    image = np.asarray(Image.open(stdio.BytesIO(source[i]["image"])).convert("RGB"))
    resized = embedding.copy_edits.resize(image, shape)
    np.testing.assert_allclose(desc[i], [*shape, resized.mean()], rtol=1e-5)
    assert norms[i] == pytest.approx(resized.mean(), rel=1e-5)


def test_training_view_norms_take_the_gate_sizes_from_views_made_at_the_largest(
    tiny_builder, data_dir, monkeypatch):
  """eval.gate_sizes in the calibration's and diagnostics' view norms
  (icd.view_norms): the views are made at the largest of the embedding side
  and the gate sizes, and each size's input is that view resized to it."""
  import types
  from asl_jax import data, sharding
  from asl_jax.evaluation import embedding, icd
  from conftest import tiny_config
  from asl_jax import input_pipeline
  seen, made = [], []
  make_views = input_pipeline.make_views

  def spy(image, rng, spec, *args, **kwargs):
    made.append(spec.image_size)
    return make_views(image, rng, spec, *args, **kwargs)
  monkeypatch.setattr(input_pipeline, "make_views", spy)

  def fn(params, stats, images, *gate_images):
    seen.append([x.shape for x in (images, *gate_images)])
    # The gate "norm": the mean of the largest input (the view as made).
    return np.zeros((len(images), 1)), np.asarray(gate_images[-1]).reshape(
        len(images), -1).mean(1) + 1.0
  embed_fn = embedding.EmbedFn(fn, (24, 64))
  config = tiny_config(data_dir)
  state = types.SimpleNamespace(params={"model": None}, batch_stats=None)
  norms = icd.view_norms(embed_fn, state, data.source(tiny_builder, "train"), config, 40,
                         sharding.make_mesh(), 6)
  assert norms.shape == (6, 2) and np.all(norms > 1.0) and set(made) == {64}
  assert {tuple(tuple(s[1:]) for s in shapes) for shapes in seen} == {
      ((40, 40, 3), (24, 24, 3), (64, 64, 3))}
  assert np.abs(norms[:, 0] - norms[:, 1]).max() > 1.0  # Sources and their views differ.


def test_the_printed_table_keeps_its_columns_for_long_kind_names():
  """`hard_negative:reverse_crop` was longer than the label column and pushed
  its row's numbers out of line."""
  from asl_jax.evaluation import report as report_lib
  cats = ["distractor", "hard_negative:reverse_crop", "hard_negative:same_scene", "true_copy"]
  metrics = {"micro_ap": 0.5, "recall_at_p90": 0.25, "recall_at_rank_1": 0.75}
  counts = {c: {"before": 10 + i, "after": i} for i, c in enumerate(cats)}
  removed = {"true_copy": 0.1, "hard_negative:reverse_crop": 1.0,
             "hard_negative:same_scene": 0.5}
  rep = {n: metrics for n in ("without_gate", "with_gate", "soft_gate", "calibrated_gate",
                              "decision")}
  rep.update(decision_settings={"decision": "verify_else_norm"},
             gate={"counts": counts, "removed_fraction": removed},
             decisions={"decision": {"counts": counts, "removed_fraction": removed}})
  lines = report_lib.format_table(rep).splitlines()
  metric_rows, pair_rows = lines[1:5], lines[5:5 + 1 + len(cats)]
  assert pair_rows[0].startswith("predicted pairs:")
  assert len({len(x) for x in metric_rows}) == 1, "\n".join(metric_rows)
  assert len({len(x) for x in pair_rows}) == 1, "\n".join(pair_rows)
  row = next(x for x in pair_rows if "reverse_crop" in x)
  assert row.split() == ["hard_negative:reverse_crop", "11", "1", "1"]
  assert row.index("11") + 2 == pair_rows[0].index("before") + len("before")
  assert metric_rows[0].index("no gate") + 7 == pair_rows[0].index("before") + 6  # One grid.
