"""Two JAX processes on one machine (2 CPU devices each, gloo collectives)
run `main --multihost` as two hosts would: one coordinator from the
environment, each process reading its own shard of the data, one set of
checkpoints and logs, and the same final state on both."""

import json
import os
import socket
import subprocess
import sys

from conftest import ROOT
from test_train import _tiny_flags


# The words of Gloo's connection lines ("[Gloo] Rank 2 is connected to 3 peer
# ranks. Expected number of connected peer ranks is : 3"). Its threads write
# each line in pieces, concurrently, so pieces of several lines can interleave
# in any order, with or without a space between them ("2[Gloo]"); what is left
# once their words (longest first) and numbers are taken out is what the
# process itself printed.
_GLOO_WORDS = sorted(set("[Gloo] Rank is connected to peer ranks. Expected number of ranks :"
                         .split()), key=len, reverse=True)


def _without_gloo(text: str) -> list[str]:
  """What is left of `text` without Gloo's connection lines' words and numbers."""
  for word in _GLOO_WORDS:
    text = text.replace(word, " ")
  return [w for w in text.split() if not w.isdigit()]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_evaluate_and_checkpoint_once(tiny_builder, data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  port = _free_port()
  flags = [*_tiny_flags(data_dir), "--config.data.ids_per_batch=16",
           "--config.data.pair_ids_per_batch=4", "--config.train.total_steps=4",
           "--config.train.log_every=1", "--config.train.checkpoint_every=2"]
  procs = []
  for i in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i))
    # Files, not pipes: a full pipe would stall one process and with it both.
    out, err = open(tmp_path / f"out{i}", "w+"), open(tmp_path / f"err{i}", "w+")
    procs.append((subprocess.Popen(
        [sys.executable, "-m", "asl_jax.main", "--config", "configs/asl.py", "--multihost",
         f"--workdir={workdir}", *flags], cwd=ROOT, env=env, stdout=out, stderr=err), out, err))
  outs = []
  for p, out, err in procs:
    p.wait(timeout=600)
    out.seek(0)
    err.seek(0)
    outs.append((out.read(), err.read()))
    assert p.returncode == 0, outs[-1][1][-3000:]
  assert "2 process(es), 4 device(s)" in outs[0][0]
  assert "step 4/4" in outs[0][0] and "μAP" in outs[0][0]
  # Only process 0 logs (Gloo's own connection lines aside).
  assert _without_gloo(outs[1][0]) == []
  with open(os.path.join(workdir, "train_metrics.jsonl")) as f:
    assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4]  # Written once.
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps == [2, 4]
  with open(os.path.join(workdir, "metrics.json")) as f:
    m = json.load(f)
  assert m["without_gate"]["num_ground_truth"] == 12
  assert m["without_gate"]["num_predictions"] == 30 * 5  # Every query searched once.
