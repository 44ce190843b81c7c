"""asl_jax/benchmark/torch_model.py and torch_step.py as the same step as the
JAX one: ghost BatchNorm and the norm-ratio loss (both pairings) against
asl_jax's on the same inputs, WaveBlock's band, and the paper recipe's step
(tiny) running with every component present."""

import jax
import numpy as np
import pytest

from conftest import load_config

torch = pytest.importorskip("torch", reason="the torch comparison needs torch ('.[bench]')")


def test_ghost_batch_norm_equals_the_jax_one_in_training():
  from asl_jax.benchmark import torch_model
  from asl_jax.models import resnet
  x = np.random.default_rng(0).normal(2.0, 3.0, (8, 5, 5, 6)).astype(np.float32)
  bn = resnet.GhostBatchNorm(groups=4)
  variables = bn.init(jax.random.key(0), x)
  scale = np.linspace(0.5, 1.5, 6).astype(np.float32)
  bias = np.linspace(-1, 1, 6).astype(np.float32)
  want, upd = bn.apply({"params": {"scale": scale, "bias": bias},
                        "batch_stats": variables["batch_stats"]}, x, mutable=["batch_stats"])
  tb = torch_model.GhostBatchNorm(6, 4).train()
  with torch.no_grad():
    tb.weight.copy_(torch.from_numpy(scale))
    tb.bias.copy_(torch.from_numpy(bias))
  got = tb(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
  np.testing.assert_allclose(got.detach().numpy(), np.asarray(want), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(tb.running_var.numpy(), np.asarray(upd["batch_stats"]["var"]),
                             rtol=1e-5)
  # Four groups are not one: plain BatchNorm differs on the same input.
  plain = torch.nn.functional.batch_norm(torch.from_numpy(x).permute(0, 3, 1, 2), None, None,
                                         training=True)
  assert not np.allclose(plain.permute(0, 2, 3, 1).numpy() * scale + bias, np.asarray(want),
                         atol=1e-2)


def test_norm_ratio_pairings_equal_the_jax_loss():
  from asl_jax import losses
  from asl_jax.benchmark import torch_step
  rs = np.random.default_rng(1)
  g = rs.normal(size=(12, 7)).astype(np.float32)
  amounts = np.concatenate([np.ones((3, 1)), rs.uniform(0.2, 1, (3, 3))], 1).astype(np.float32)
  want = float(losses.norm_ratio_loss(g, amounts))
  got = float(torch_step.norm_ratio(torch.from_numpy(g), torch.from_numpy(amounts)))
  assert got == pytest.approx(want, rel=1e-5)
  # Random pairing: every identity's views tie -> exactly 1; otherwise one of
  # the per-pair terms exp(1 - |more| / |less|) averaged over identities.
  ties = np.ones((3, 4), np.float32)
  assert float(torch_step.norm_ratio(torch.from_numpy(g), torch.from_numpy(ties),
                                          "random")) == 1.0
  two = np.array([[1.0, 0.5]], np.float32)
  g2 = np.array([[2.0, 0.0], [1.0, 0.0]], np.float32)  # |more| = 2, |less| = 1.
  got = float(torch_step.norm_ratio(torch.from_numpy(g2), torch.from_numpy(two), "random"))
  want = float(losses.norm_ratio_loss(g2, two, jax.random.key(0)))
  assert got == pytest.approx(np.exp(-1.0)) and want == pytest.approx(np.exp(-1.0))


def test_wave_block_keeps_one_band_per_chunk():
  from asl_jax.benchmark import torch_model
  wave = torch_model.WaveBlock(chunk=2).train()
  y = wave(torch.ones(4, 3, 10, 5))
  rows = y[:, 0, :, 0]
  assert ((rows == 1.0).sum(1) == 3).all() and ((rows == 1.5).sum(1) == 7).all()
  assert torch.equal(rows[0], rows[1]) and torch.equal(rows[2], rows[3])
  assert torch.equal(wave.eval()(torch.ones(4, 3, 10, 5)), torch.ones(4, 3, 10, 5))


def test_paper_recipe_step_runs_with_every_component():
  from asl_jax.benchmark import torch_model, torch_step
  c = load_config("ndec")
  c.model.update(variant="tiny", width=8, projector_dims=(32, 64), descriptor_dim=16)
  c.data.update(ids_per_batch=8, views_per_id=4, image_size=32)
  step = torch_step.Step(c, 20, "cpu")
  kinds = [type(m).__name__ for m in step.model.modules()]
  assert kinds.count("WaveBlock") == 2 and "BatchNorm2d" not in kinds
  assert all(m.groups == 4 for m in step.model.modules()
             if isinstance(m, torch_model.GhostBatchNorm))
  rs = np.random.default_rng(0)
  views = torch.from_numpy(rs.integers(0, 256, (8, 4, 32, 32, 3), dtype=np.uint8))
  amounts = torch.from_numpy(np.concatenate([np.ones((8, 1)), rs.uniform(0.2, 1, (8, 3))],
                                            1).astype(np.float32))
  before = [p.detach().clone() for p in step.params]
  loss, grad_norm = step(views, amounts, torch.arange(8))
  assert np.isfinite(loss.item()) and grad_norm.item() > 0
  assert any(not torch.equal(a, b) for a, b in zip(before, step.params))
  assert set(torch_step.COMPUTES) == {"asl_jax", "torch"}
