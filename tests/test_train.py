"""Training: sharded steps, resuming, and the end-to-end run of main."""

import json
import re
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from asl_jax import checkpointing, data, input_pipeline, train
from asl_jax.errors import UserError
from conftest import ROOT, tiny_config


def _losses(workdir):
  with open(os.path.join(workdir, "train_metrics.jsonl")) as f:
    return {r["step"]: r["loss/total"] for r in map(json.loads, f)}


@pytest.mark.parametrize("paper_parts", [False, True], ids=["demo", "sharded-head-ghost-bn-wave"])
def test_one_step_on_8_fake_devices_equals_1_device(tiny_builder, data_dir, paper_parts):
  """Same loss and gradients on 1 device and on 8 (BatchNorm sees the
  global batch in both). With the paper's parts on, the classifier (60
  classes, padded to 64) is split 8 ways along its classes, BatchNorm uses 2
  ghost groups and WaveBlock draws bands: still the same numbers."""
  script = textwrap.dedent(f"""
      import jax, numpy as np, sys
      sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
      from conftest import tiny_config
      from asl_jax import data, input_pipeline, sharding, train
      assert jax.device_count() == 8
      c = tiny_config({data_dir!r})
      if {paper_parts!r}:
        c.loss.update(classification=1.0, triplet=1.0)
        c.model.update(shard_classifier=True, bn_groups=2, wave_block=True, wave_chunk=4)
      b = data.prepare(c.data, log=lambda _: None)
      batch = next(iter(input_pipeline.train_dataset(
          data.source(b, "train"), data.source(b, "train_negative_pairs"), c.data, seed=0)))
      out = {{}}
      for n in (1, 8):
        mesh = sharding.make_mesh(jax.devices()[:n])
        model, cls = train.build_modules(c, 60, num_devices=8)
        tx, sched = train.make_optimizer(c.optim, 4)
        state = train.init_state(model, cls, tx, c, jax.random.key(0), mesh)
        if {paper_parts!r} and n == 8:
          kernel = state.params["classifier"]["kernel"]
          assert kernel.shape == (64, 64), kernel.shape
          assert {{s.data.shape for s in kernel.addressable_shards}} == {{(64, 8)}}
          moments = [x for x in jax.tree.leaves(state.opt_state) if x.shape == (64, 64)]
          assert len(moments) == 2  # Adam's mu and nu of the kernel, split the same way.
          assert all({{s.data.shape for s in x.addressable_shards}} == {{(64, 8)}}
                     for x in moments)
        update = train.make_update_fn(model, cls, tx, sched, c, mesh, state)
        g = sharding.global_batch(batch, mesh)
        assert len(g["views"].sharding.device_set) == n
        state, m = update(state, g, jax.random.key(1))
        out[n] = (float(m["loss/total"]), float(m["grad_norm"]),
                  np.asarray(jax.tree.leaves(state.params)[0]),
                  {{k: float(v) for k, v in m.items()}})
      np.testing.assert_allclose(out[1][0], out[8][0], rtol=2e-5)
      np.testing.assert_allclose(out[1][1], out[8][1], rtol=2e-4)
      np.testing.assert_allclose(out[1][2], out[8][2], rtol=1e-4, atol=1e-6)
      if {paper_parts!r}:
        assert "loss/classification" in out[8][3], out[8][3]
      print("OK", out[1][0], out[8][0])
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "OK" in r.stdout


@pytest.mark.parametrize("family", ["asl", "rs_two_pass"])
def test_killed_run_resumes_with_same_next_batch(tiny_builder, data_dir, tmp_path,
                                                 monkeypatch, family):
  """Also for RS@k (asymmetric, SiMix, ASL) in two passes of 2 chunks: one
  update per batch, its batch metrics logged."""
  c = tiny_config(data_dir)
  c.train.update(total_steps=4, log_every=1, checkpoint_every=2)
  if family == "rs_two_pass":
    c.loss.update(info_nce=0.0, rs_at_k=1.0, rs_design="asymmetric", simix=True,
                  rs_distractor_ids=1, rs_k=(1, 2, 4))
    c.train.num_chunks = 2
  full = str(tmp_path / "full")
  train.train(c, full, builder=tiny_builder)
  want = _losses(full)

  # Kill the second run while it fetches the batch of step 4.
  killed = str(tmp_path / "killed")
  calls = {"n": 0}
  real = train.sharding.global_batch

  def dying(batch, mesh):
    calls["n"] += 1
    if calls["n"] == 4:
      raise KeyboardInterrupt("simulated kill")
    return real(batch, mesh)

  monkeypatch.setattr(train.sharding, "global_batch", dying)
  with pytest.raises(KeyboardInterrupt):
    train.train(c, killed, builder=tiny_builder)
  monkeypatch.setattr(train.sharding, "global_batch", real)
  assert checkpointing.Checkpointer(killed, 2, 3).latest_step() == 2
  _, state, _ = train.train(c, killed, builder=tiny_builder)
  assert int(state.step) == 4
  got = _losses(killed)
  with open(os.path.join(killed, "train_metrics.jsonl")) as f:  # Step 3 logged once.
    assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4]
  for step in (1, 2, 3, 4):
    assert got[step] == pytest.approx(want[step], rel=1e-6), step
  if family == "rs_two_pass":
    with open(os.path.join(killed, "train_metrics.jsonl")) as f:
      last = [json.loads(line) for line in f][-1]
    for key in ("loss/rs_at_k", "loss/norm_ratio", "rs@k/soft_recall@1", "rs@k/hit@4",
                "norm_ratio/more_over_less"):
      assert np.isfinite(last[key]), key
    assert 0 <= last["rs@k/hit@1"] <= last["rs@k/hit@4"] <= 1


def test_pipeline_position_restores_through_checkpoint(tiny_builder, data_dir, tmp_path):
  c = tiny_config(data_dir)
  srcs = data.source(tiny_builder, "train"), data.source(tiny_builder, "train_negative_pairs")
  it = iter(input_pipeline.train_dataset(*srcs, c.data, seed=0))
  for _ in range(3):
    next(it)
  ckpt = checkpointing.Checkpointer(str(tmp_path), 1, 2)
  ckpt.save(3, {"x": np.zeros(2)}, it, {"fingerprint": {}}, force=True)
  ckpt.wait()
  want = next(it)
  it2 = iter(input_pipeline.train_dataset(*srcs, c.data, seed=0))
  ckpt.restore(3, {"x": np.zeros(2)}, it2)
  np.testing.assert_array_equal(next(it2)["views"], want["views"])
  ckpt.close()


def test_incompatible_checkpoint_is_refused_and_kept(tiny_builder, data_dir, tmp_path):
  c = tiny_config(data_dir)
  c.train.total_steps = 2
  workdir = str(tmp_path)
  train.train(c, workdir, builder=tiny_builder)
  c.model.width = 4
  with pytest.raises(UserError, match="model.width: 8 in the checkpoint, 4 now"):
    train.train(c, workdir, builder=tiny_builder)
  # The saved input position is laid out per Grain worker process.
  c.model.width, c.data.num_workers = 8, 2
  with pytest.raises(UserError, match="data.num_workers: 0 in the checkpoint, 2 now"):
    train.train(c, workdir, builder=tiny_builder)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))


def test_nan_loss_stops_with_step_and_checkpoint(tiny_builder, data_dir, tmp_path):
  c = tiny_config(data_dir)
  c.optim.learning_rate = 1e30
  c.train.update(total_steps=6, log_every=1, checkpoint_every=1)
  with pytest.raises(UserError, match=r"at step \d+; stopping. The last good checkpoint is step"):
    train.train(c, str(tmp_path), builder=tiny_builder)


def test_parameters_no_loss_reaches_are_refused_after_one_step(tiny_builder, data_dir,
                                                               tmp_path):
  """Only the separate gate head trains but the norm-ratio loss, the one loss
  that reaches it, is off: the first gradient is exactly zero and the run
  stops there, saying why, before any checkpoint. With that loss on, it trains."""
  c = tiny_config(data_dir)
  c.model.update(gate_feature="gate_head", gate_head_dims=(16,))
  c.optim.trainable = "model/gate_fc"
  c.train.update(checkpoint_every=1)
  c.loss.norm_ratio = 0.0
  with pytest.raises(UserError, match=r"exactly zero at step 1.*no active loss "
                     r"\(loss.info_nce=1.0\) reaches the parameters optim.trainable="
                     r"'model/gate_fc' selects"):
    train.train(c, str(tmp_path / "off"), builder=tiny_builder)
  assert not os.path.exists(tmp_path / "off" / "checkpoints" / "1")
  c.loss.norm_ratio = 1.0
  train.train(c, str(tmp_path / "on"), builder=tiny_builder)
  assert os.path.isdir(tmp_path / "on" / "checkpoints" / "4")


def test_corrupt_image_names_the_file(tiny_builder, data_dir):
  c = tiny_config(data_dir)
  c.data.pair_ids_per_batch = 0
  good = data.source(tiny_builder, "train")
  records = [good[i] for i in range(8)]
  records[5] = {**records[5], "image": b"not a jpeg", "filename": b"train_3/T000005.jpg"}
  it = iter(input_pipeline.train_dataset(records, None, c.data, seed=0))
  with pytest.raises(Exception, match="T000005.jpg"):
    for _ in range(2):
      next(it)


def _run_main(args, env_extra=None, timeout=600):
  env = dict(os.environ, **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", "asl_jax.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _tiny_flags(data_dir):
  c = tiny_config(data_dir)
  flags = []
  for section in ("data", "model", "train", "eval"):
    for key, value in c[section].items():
      if key == "crop_area" or hasattr(value, "keys"):  # Nested sections stay default.
        continue
      text = (",".join(map(str, value)) or "()") if isinstance(value, tuple) else value
      flags.append(f"--config.{section}.{key}={text}")
  for key, value in c.data.synthetic.items():
    flags.append(f"--config.data.synthetic.{key}={value}")
  return flags


def test_main_end_to_end_writes_metrics(tiny_builder, data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  r = _run_main(["--config", "configs/asl.py", f"--workdir={workdir}", *_tiny_flags(data_dir)])
  assert r.returncode == 0, r.stderr[-3000:]
  with open(os.path.join(workdir, "metrics.json")) as f:
    m = json.load(f)
  for name in ("without_gate", "with_gate"):
    assert 0.0 <= m[name]["micro_ap"] <= 1.0
    assert m[name]["num_ground_truth"] == 12
  assert m["without_gate"]["num_predictions"] == 30 * 5
  assert m["settings"]["image_size"] == 40  # eval.image_size, not data.image_size (32).
  counts = m["gate"]["counts"]
  assert sum(v["before"] for k, v in counts.items() if k != "hard_negative") == 150
  assert "μAP" in r.stdout and "ASL gate" in r.stdout
  assert set(m["breakdown"]) == {"copies_by_edit", "hard_negatives_by_kind", "distractors"}
  assert m["breakdown"]["distractors"]["queries"] == 6
  assert 0.0 <= m["soft_gate"]["micro_ap"] <= 1.0
  from PIL import Image
  for png in ("precision_recall.png", "gallery.png"):
    with Image.open(os.path.join(workdir, png)) as im:
      assert im.width > 100 and im.height > 30
  from asl_jax.evaluation import io
  ids, vecs = io.read_descriptors(os.path.join(workdir, "queries.h5"))
  assert len(ids) == 30 and vecs.shape == (30, 16)
  np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
  with open(os.path.join(workdir, "predictions.csv")) as f:
    lines = f.read().splitlines()
  assert lines[0] == "query_id,reference_id,score"
  assert len(lines) - 1 == m["with_gate"]["num_predictions"]


def test_unknown_config_field_is_named():
  r = _run_main(["--config", "configs/asl.py", "--config.train.totl_steps=3"], timeout=120)
  assert r.returncode == 2
  assert "unknown config field --config.train.totl_steps" in r.stderr
  assert "Did you mean total_steps" in r.stderr
  assert "Traceback" not in r.stderr


def test_unprepared_real_data_says_how_to_prepare(tmp_path):
  r = _run_main(["--config", "configs/asl.py:ndec", f"--workdir={tmp_path}",
                 f"--config.data.data_dir={tmp_path}"], timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  assert "ndec/full" in r.stderr and "Traceback" not in r.stderr
  assert "README" in r.stderr


def test_train_on_fake_ndec_full_and_evaluate_on_disc21_dev(tmp_path):
  """main's path on the real-data configs: ndec/full is prepared from the
  manual directory on first use, training reads its train split and pairs,
  and evaluation runs on another dataset (eval.data_name)."""
  from tfds_ndec import fake_layout
  layout = fake_layout.FakeLayout(num_train=24, num_references=12, num_queries=6, num_copies=3,
                                  num_pairs=4, num_dev_queries=8, num_dev_copies=5,
                                  width=40, height=32)
  fake_layout.write(str(tmp_path / "manual"), layout)
  c = tiny_config(str(tmp_path / "data"))
  c.data.update(name="ndec/full", manual_dir=str(tmp_path / "manual"), prepare_workers=1)
  c.eval.update(data_name="ndec/disc21_dev", k=3)
  m = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert m["settings"]["dataset"] == "ndec/disc21_dev/1.1.0"
  assert m["without_gate"]["num_ground_truth"] == 5
  assert m["without_gate"]["num_predictions"] == 8 * 3
  counts = m["gate"]["counts"]
  assert counts["negative"]["before"] == 3 * 3  # Three non-copy queries x k.
  assert os.path.isdir(tmp_path / "data/ndec/full/1.1.0")


@pytest.mark.parametrize("signame,status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_checkpoints_and_resumes_exactly_and_events_are_readable(
    tiny_builder, data_dir, tmp_path, signame, status):
  """SIGTERM (preemption) and SIGINT (Ctrl-C) stop after the current step
  with a checkpoint of it and one line on stderr (no traceback), exit status
  128 + the signal; rerunning the same command resumes from that step and
  logs every step once, with the losses of an uninterrupted run. The
  TensorBoard event file holds the logged scalars with valid CRCs."""
  import signal
  from asl_jax import tensorboard
  workdir, total = str(tmp_path / "run"), 40
  flags = [*_tiny_flags(data_dir), f"--config.train.total_steps={total}",
           "--config.train.log_every=1", "--config.train.checkpoint_every=1000"]
  p = subprocess.Popen([sys.executable, "-m", "asl_jax.main", "--config", "configs/asl.py",
                        f"--workdir={workdir}", *flags], cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
  for line in p.stdout:
    if line.startswith("step 2/"):
      p.send_signal(getattr(signal, signame))
      break
  out, err = p.communicate(timeout=300)
  assert p.returncode == status, err[-2000:]
  assert "Traceback" not in err, err[-2000:]
  stopped = int(re.search(rf"Stopped by {signame} \(\w+(?:-\w)?\) after step (\d+)",
                          err).group(1))
  assert 2 <= stopped < total
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps == [stopped]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["train"]["total_steps"] == total
  r = _run_main(["--config", "configs/asl.py", f"--workdir={workdir}", *flags])
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"Resumed from the checkpoint of step {stopped}" in r.stdout
  files = [f for f in os.listdir(workdir) if f.startswith("events.out.tfevents.")]
  assert len(files) == 2
  scalars = [s for f in files for s in tensorboard.read_scalars(os.path.join(workdir, f))]
  tags = {tag for _, tag, _ in scalars}
  assert {"loss/total", "learning_rate", "grad_norm", "images_per_second",
          "norm_ratio/more_over_less"} <= tags
  logged = sorted(step for step, tag, _ in scalars if tag == "loss/total")
  # The stopping step is logged before it is checkpointed; the rerun logs the next.
  assert logged == list(range(1, total + 1))
  with open(os.path.join(workdir, "train_metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records] == list(range(1, total + 1))  # Each step once.
  jsonl = {r["step"]: r["loss/total"] for r in records}
  for step, tag, value in scalars:
    if tag == "loss/total":
      assert value == pytest.approx(jsonl[step], rel=1e-6)
  # The same losses as a run that was not interrupted.
  c = tiny_config(data_dir)
  c.train.update(total_steps=total, log_every=1, checkpoint_every=1000)
  full = str(tmp_path / "full")
  train.train(c, full, builder=tiny_builder)
  want = _losses(full)
  for step in range(1, total + 1):
    assert jsonl[step] == pytest.approx(want[step], rel=1e-5), step


def test_resume_with_another_config_is_refused_or_says_what_changed(
    tiny_builder, data_dir, tmp_path, capsys):
  """A training-side change is refused with the field named and nothing
  changed; an eval.* change is accepted and said; config.json follows."""
  c = tiny_config(data_dir)
  c.train.total_steps = 2
  workdir = str(tmp_path)
  train.train(c, workdir, builder=tiny_builder)
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    before = f.read()
  assert json.loads(before)["loss"]["norm_ratio"] == 10.0
  c.loss.norm_ratio = 3.0
  with pytest.raises(UserError, match=r"loss.norm_ratio: 10.0 in the run, 3.0 now"):
    train.train(c, workdir, builder=tiny_builder)
  with open(path) as f:
    assert f.read() == before
  c.loss.norm_ratio, c.eval.k, c.train.log_every = 10.0, 3, 1
  capsys.readouterr()
  train.train(c, workdir, builder=tiny_builder)
  out = capsys.readouterr().out
  assert "Resumed from the checkpoint of step 2" in out
  assert "evaluation-side changes: eval.k: 5 in the run, 3 now" in out
  with open(path) as f:
    saved = json.load(f)
  assert saved["eval"]["k"] == 3 and saved["train"]["log_every"] == 1
  assert saved["loss"]["norm_ratio"] == 10.0


def test_every_nth_training_image():
  sub = data.EveryNth(list(range(25)), 10)
  assert len(sub) == 3 and [sub[i] for i in range(3)] == [0, 10, 20]
  with pytest.raises(IndexError):
    sub[3]
  with pytest.raises(UserError, match="train_every=0"):
    data.EveryNth([], 0)


def test_real_config_names(tmp_path):
  c = tiny_config(str(tmp_path)).data
  assert data.builder(c, "ndec/full_384_q85").builder_config.name == "full_384_q85"
  assert data.builder(c, "ndec/full_384_q85").builder_config.max_side == 384
  assert data.builder(c, "ndec/disc21_dev_512").builder_config.max_side == 512
  with pytest.raises(UserError, match="not a config of the ndec dataset"):
    data.builder(c, "ndec/fulll")
