"""`--compare torch`: the train and embed rows of the same model and step in
PyTorch (`torch_model.py`, `torch_step.py`), eager and under torch.compile,
timed by the same harness, and the ratio of each to the asl_jax row."""

import time

from asl_jax.benchmark.harness import rates, time_each

TF32 = ("allowed on both sides: JAX's default matmul precision lets XLA use TF32 "
        "for float32 dots and convolutions on GPUs; torch sets "
        "backends.cuda.matmul.allow_tf32 and cudnn.allow_tf32 (most work is "
        "bf16 either way)")


def _torch_train(config, num_classes, device, compiled, steps, warmup, sync, flop, peak):
  import numpy as np
  import torch
  from asl_jax.benchmark import torch_step
  ids, k, size = config.data.ids_per_batch, config.data.views_per_id, config.data.image_size
  rs = np.random.default_rng(0)
  step = torch_step.Step(config, num_classes, device, compile=compiled)
  views = torch.from_numpy(rs.integers(0, 256, (ids, k, size, size, 3), dtype=np.uint8)
                           ).to(device)
  amounts = torch.from_numpy(np.concatenate(
      [np.ones((ids, 1)), rs.uniform(0.2, 1, (ids, k - 1))], 1).astype(np.float32)).to(device)
  labels = torch.from_numpy(rs.permutation(max(num_classes, ids))[:ids]).to(device)
  call = lambda: step(views, amounts, labels)
  t0 = time.perf_counter()
  for _ in range(warmup):
    sync(call())
  warm_s = time.perf_counter() - t0
  seconds = time_each(call, steps, sync)
  return {"batch": ids * k, "warmup_s": warm_s, **rates(ids * k, seconds, flop, peak)}


def _torch_embed(config, device, compiled, steps, warmup, sync, flop):
  import numpy as np
  import torch
  from asl_jax.benchmark import torch_step
  from asl_jax.evaluation import embedding
  size = embedding.embedding_size(config)
  n = config.eval.batch_size
  embed = torch_step.embedder(config, device, compile=compiled)
  images = torch.from_numpy(np.random.default_rng(0).integers(
      0, 256, (n, size, size, 3), dtype=np.uint8)).to(device)
  if config.eval.flip_average:  # The same work as the JAX side: the image and its mirror.
    call = lambda: (embed(images), embed(torch.flip(images, (2,))))
  else:
    call = lambda: embed(images)
  for _ in range(warmup):
    sync(call())
  seconds = time_each(call, steps, sync)
  return {"batch": n, "image_size": size, **rates(n, seconds, flop, None)}


def torch_rows(config, workloads, num_classes, steps, warmup, flops_train, flops_embed, peak,
               with_compile=True, max_autotune=False):
  """The train and embed rows of PyTorch, eager, (with_compile) under
  torch.compile's default mode and (max_autotune) its max-autotune mode; a
  failure is a row with its error, not the end of the run."""
  import torch
  device = "cuda" if torch.cuda.is_available() else "cpu"
  sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)
  rows = []
  modes = [False] + (["default"] if with_compile else []) + (
      ["max-autotune"] if max_autotune else [])
  for compiled in modes:
    name = {False: "torch eager", "default": "torch.compile",
            "max-autotune": "torch.compile max-autotune"}[compiled]
    jobs = []
    if "train" in workloads:
      jobs.append(("train", lambda c=compiled: _torch_train(
          config, num_classes, device, c, steps, warmup, sync, flops_train, peak)))
    if "embed" in workloads:
      jobs.append(("embed", lambda c=compiled: _torch_embed(
          config, device, c, steps, warmup, sync, flops_embed)))
    for workload, job in jobs:
      try:
        rows.append({"workload": workload, "framework": name, **job()})
      except Exception as e:  # noqa: BLE001 - reported in the table, not fatal.
        first = str(e).splitlines()[0] if str(e) else ""
        rows.append({"workload": workload, "framework": name,
                     "error": f"{type(e).__name__}: {first}"})
  return rows


def describe(result: dict):
  """What each side computes and how they differ, into the results' JSON."""
  import torch
  from asl_jax.benchmark import torch_step
  result["versions"]["torch"] = torch.__version__
  result["computes"] = torch_step.COMPUTES
  result["differences"] = torch_step.DIFFERENCES
  result["tf32"] = TF32
  result["grad_norm_computed"] = {"asl_jax": True, "torch": True}


def add_ratios(rows: list):
  """asl_jax_over_this on each timed torch row: the asl_jax rate of its workload over its own."""
  for row in rows:
    if row.get("framework", "").startswith("torch") and "images_per_s" in row:
      mine = next((r for r in rows if r["workload"] == row["workload"]
                   and r["framework"] == "asl_jax"), None)
      if mine:
        row["asl_jax_over_this"] = mine["images_per_s"] / row["images_per_s"]
