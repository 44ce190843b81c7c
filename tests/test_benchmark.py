"""`python -m asl_jax.benchmark`: every workload at a tiny size, the JSON it
writes, the MFU arithmetic, the PyTorch model against the Flax one, and the
bad-request errors."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from asl_jax import benchmark
from asl_jax.errors import UserError
from conftest import ROOT, load_config, tiny_config

torch = pytest.importorskip("torch", reason="the torch comparison needs torch ('.[bench]')")


def test_mfu_and_peaks_hand_computed():
  achieved, util = benchmark.mfu(2e12, 0.5, 8.0)  # 2 TFLOP in 0.5 s on an 8 TFLOP/s chip.
  assert achieved == pytest.approx(4.0) and util == pytest.approx(0.5)
  assert benchmark.mfu(2e12, 0.5, None) == (pytest.approx(4.0), None)
  assert benchmark.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4
  assert benchmark.peak_tflops("NVIDIA H200", "float32") == 66.9
  assert benchmark.peak_tflops("TPU v4", "bfloat16") == 275.0
  assert benchmark.peak_tflops("cpu", "float32") is None
  assert benchmark.peak_tflops("cpu", "float32", override=1.5) == 1.5
  p = benchmark.percentiles([0.001 * i for i in range(1, 12)])  # 1..11 ms.
  assert p == {"p10_ms": pytest.approx(2.0), "p50_ms": pytest.approx(6.0),
               "p90_ms": pytest.approx(10.0)}


def test_bad_requests_are_one_paragraph_errors(monkeypatch):
  with pytest.raises(UserError, match=r"--only=train,trian names \['trian'\]: the workloads"):
    benchmark.Request(["train", "trian"], [])
  with pytest.raises(UserError, match="the one framework compared with is torch"):
    benchmark.Request(["train"], ["tensorflow"])
  with pytest.raises(UserError, match="--search='1,2': give three positive integers"):
    benchmark.Request(["search"], [], "1,2")
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "torch" else real(name, *a))
  with pytest.raises(UserError, match=r"needs PyTorch, which is not installed.*\[bench\]"):
    benchmark.Request(["train"], ["torch"])


def test_a_config_that_does_not_fit_the_devices_exits_2_before_any_work(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  r = subprocess.run(
      [sys.executable, "-m", "asl_jax.benchmark", "--config", "configs/asl.py",
       "--config.data.ids_per_batch=3", "--config.data.pair_ids_per_batch=0", "--only", "train",
       "--json", str(tmp_path / "o.json")],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  err = r.stderr.strip().splitlines()[-1]
  assert err.startswith("asl_jax: error: The batch of data.ids_per_batch x") and "8" in err
  assert not (tmp_path / "o.json").exists()
  r = subprocess.run([sys.executable, "-m", "asl_jax.benchmark", "--config", "configs/asl.py",
                      "--only", "train,embedd"], cwd=ROOT, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 2
  assert "the workloads are train, input, e2e, embed, embed_files, search" in r.stderr


@pytest.mark.parametrize("variant", ["tiny", "r50"])
def test_the_torch_model_is_the_flax_model(variant):
  """Same parameters (count, and the trunk loads name for name through the
  pretrained-weight converter) and the same pooled feature in eval mode."""
  from asl_jax import train
  from asl_jax.benchmark import torch_model, torch_step
  from asl_jax.models import pretrained, resnet
  c = tiny_config("/unused")
  c.model.update(variant=variant, width=8, last_stride=2 if variant == "tiny" else 1)
  c.loss.update(classification=1.0)
  model, cls = train.build_modules(c, 10)
  variables = jax.jit(lambda k: model.init(k, np.zeros((2, 32, 32, 3), np.float32)))(
      jax.random.key(0))
  flax_count = sum(x.size for x in jax.tree.leaves(variables["params"])) + 10 * 64
  assert torch_step.parameter_count(c, 10) == flax_count  # With the 64 x 10 classifier.
  torch.manual_seed(0)
  tm = torch_model.CopyDetector(c.model).eval()
  for m in tm.modules():  # Non-trivial BatchNorm statistics and scales.
    if isinstance(m, torch.nn.BatchNorm2d):
      m.running_mean.uniform_(-0.5, 0.5)
      m.running_var.uniform_(0.5, 1.5)
      torch.nn.init.uniform_(m.weight, 0.5, 1.5)
  sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
  host = lambda t: jax.tree.map(np.asarray, t)
  params, stats, report = pretrained.load_into(host(variables["params"]),
                                               host(variables["batch_stats"]), sd, strict=False)
  assert not report.mismatched and not report.missing and report.loaded, report.summary()
  assert all(n.split(".")[0].startswith(("gem", "proj_", "desc_")) for n in report.unused)
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  want = tm(torch_model.to_input(torch.from_numpy(images), False))["pooled"]
  got = model.apply({"params": params, "batch_stats": stats}, resnet.images_to_input(images),
                    train=False)["pooled"]
  np.testing.assert_allclose(np.asarray(got), want.detach().numpy(), rtol=2e-4, atol=1e-5)


def test_every_workload_at_a_tiny_size_writes_the_promised_json(tiny_builder, data_dir):
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # Grain's worker processes read their flags.
  c = tiny_config(data_dir)
  c.loss.update(classification=1.0)  # The classifier's width comes from --num_classes.
  request = benchmark.Request(list(benchmark.WORKLOADS), ["torch"], "64,500,16")
  options = benchmark.Options(
      steps=2, warmup=1, num_classes=50, input_workers=[0, 1], input_batches=2,
      peak_override=2.0, config_name="configs/asl.py", overrides=["--config.x=1"],
      torch_compile=False, embed_files_images=40, embed_workers=[0, 1])
  result = benchmark.run(c, request, options, log=lambda _: None)
  json.dumps(result)  # JSON-able.
  for field in ("device_kind", "device_count", "host_cores", "config", "overrides", "batch",
                "image_size", "dtype", "peak_tflops_per_device"):
    assert field in result, field
  assert set(result["versions"]) == {"python", "jax", "jaxlib", "flax", "torch"}
  assert result["batch"] == 32 and result["image_size"] == 32 and result["num_classes"] == 50
  rows = {(r["workload"], r["framework"], r.get("workers")): r for r in result["rows"]}
  train_row = rows[("train", "asl_jax", None)]
  for field in ("images_per_s", "p10_ms", "p50_ms", "p90_ms", "tflops_per_s", "mfu",
                "flops_per_step_per_device"):
    assert train_row[field] > 0, field
  assert train_row["p10_ms"] <= train_row["p50_ms"] <= train_row["p90_ms"]
  assert train_row["mfu"] == pytest.approx(train_row["tflops_per_s"] / 2.0)
  assert train_row["images_per_s"] == pytest.approx(32 / (train_row["p50_ms"] / 1e3))
  assert rows[("embed", "asl_jax", None)]["image_size"] == 40
  files = [r for r in result["rows"] if r["workload"] == "embed_files"]
  assert [(r["workers"], r["images"]) for r in files] == [(0, 40), (1, 40)]
  assert all(r["images_per_s"] > 0 and r["same_descriptors_as_first_row"] for r in files)
  assert train_row["model_flops_per_step_per_device"] == train_row["flops_per_step_per_device"]
  assert train_row["executed_flops_per_step_per_device"] == pytest.approx(
      train_row["model_flops_per_step_per_device"])
  assert train_row["xla_cost_analysis_flops_per_step_per_device"] > 0
  assert {w for (kind, _, w) in rows if kind == "input"} == {0, 1}
  assert 0 < rows[("e2e", "asl_jax", 0)]["share_of_in_memory"] < 5
  search = [r for r in result["rows"] if r["workload"] == "search"]
  assert len(search) == 3 and all(r["top_k_agreement"] == 1.0 for r in search)
  assert search[0]["recomputed_queries"] >= 0 and search[0]["framework"].startswith("asl_jax")
  for kind in ("train", "embed"):
    eager = rows[(kind, "torch eager", None)]
    assert eager["images_per_s"] > 0 and eager["asl_jax_over_this"] > 0, eager
  table = benchmark.format_table(result)
  assert "torch eager" in table and "agree 1.0000" in table


def test_the_embed_row_feeds_and_counts_the_gate_sizes():
  """With eval.gate_sizes the embed row passes the images at each gate side
  too, and counts the model once more per side (the tiny model's gate is its
  own feature, so FLOPs scale with the pixels: 1 + (32² + 48²) / 40²)."""
  from asl_jax.benchmark import workloads
  c = tiny_config("/unused")
  plain = workloads.bench_embed(c, 1, 1)
  c.eval.gate_sizes = (32, 48)
  sized = workloads.bench_embed(c, 1, 1)
  assert sized["images_per_s"] > 0
  assert sized["flops_per_step_per_device"] == pytest.approx(
      plain["flops_per_step_per_device"] * (1 + (32 ** 2 + 48 ** 2) / 40 ** 2), rel=0.02)


def test_compare_torch_refuses_a_model_the_torch_side_lacks():
  from asl_jax.benchmark import __main__ as bench
  from asl_jax.benchmark.runner import Request
  pytest.importorskip("torch", reason="torch (a test dependency) is not installed")
  request = Request(["train"], ["torch"])
  bench.check_torch_model(load_config("ndec"), request)  # BoT's head: the same model.
  for variant in ("sscd_photos", "ndec_sscd_asl"):
    with pytest.raises(UserError, match="--compare torch: the PyTorch side"):
      bench.check_torch_model(load_config(variant), request)
  bench.check_torch_model(load_config("sscd_photos"), Request(["train"], []))
