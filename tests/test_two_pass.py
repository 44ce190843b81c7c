"""The two-pass step (gradient caching) against the one-pass gradient of the
same batch, on 1 device and on 8 fake CPU devices, with BatchNorm in the
model: frozen, and with the statistics of each chunk."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, load_config

HERE = os.path.dirname(os.path.abspath(__file__))


def rs_config(design="asymmetric", simix=True, asl=True):
  c = load_config()
  c.data.update(ids_per_batch=8, views_per_id=4, pair_ids_per_batch=0, image_size=32)
  c.model.update(width=8, projector_dims=(32, 64), descriptor_dim=16)
  c.loss.update(info_nce=0.0, rs_at_k=1.0, rs_design=design, simix=simix,
                rs_distractor_ids=2 if design == "asymmetric" else 0,
                norm_ratio=10.0 if asl else 0.0, rs_k=(1, 2, 4))
  return c


def a_batch(c, seed=0):
  rs = np.random.default_rng(seed)
  n, k, s = c.data.ids_per_batch, c.data.views_per_id, c.data.image_size
  base = rs.integers(0, 256, (n, 1, s, s, 3))
  views = np.clip(base + rs.integers(-40, 40, (n, k, s, s, 3)), 0, 255).astype(np.uint8)
  amounts = np.concatenate([np.ones((n, 1)), rs.uniform(0.2, 0.9, (n, k - 1))], 1)
  return {"views": views, "label": np.arange(n, dtype=np.int32) + 100,
          "information_amount": amounts.astype(np.float32)}


def chunk_rows(batch_size, devices, chunks):
  """The rows of each chunk as the two-pass step lays them out: chunk c takes
  the c-th block of b rows of every device's contiguous share."""
  share, b = batch_size // devices, batch_size // devices // chunks
  return [np.concatenate([np.arange(d * share + c * b, d * share + (c + 1) * b)
                          for d in range(devices)]) for c in range(chunks)]


def gradients(devices: int, frozen_bn: bool, chunks: int, design="asymmetric"):
  """(one-pass, two-pass) gradients and losses of one batch on `devices`."""
  from asl_jax import objective, sharding, train, two_pass
  c = rs_config(design)
  mesh = sharding.make_mesh(jax.devices()[:devices])
  model, cls = train.build_modules(c, 8, num_devices=devices)
  tx, _ = train.make_optimizer(c.optim, 4)
  state = train.init_state(model, cls, tx, c, jax.random.key(0), mesh)
  # BatchNorm with non-trivial running statistics (they are what frozen uses).
  state = state.replace(batch_stats=jax.tree.map(
      lambda x: x + 0.3 * jnp.abs(jax.random.normal(jax.random.key(3), x.shape)),
      state.batch_stats))
  batch = sharding.global_batch(a_batch(c), mesh)
  rng = jax.random.key(7)
  common = dict(model=model, classifier=cls, cfg=c.loss, mesh=mesh, frozen_bn=frozen_bn)
  keys = objective.needed_outputs(c.loss)
  flat = batch["views"].reshape((-1,) + batch["views"].shape[2:])
  rows = chunk_rows(flat.shape[0], devices, chunks)

  def one_pass(params):
    """All chunks in one differentiated function (activations of all kept);
    with one chunk, exactly objective.loss_fn."""
    if chunks == 1:
      total, (metrics, _) = objective.loss_fn(params, state.batch_stats, batch, rng, **common)
      return total, metrics
    outs = [objective.model_outputs(params["model"], state.batch_stats, flat[r],
                                    rng if chunks == 1 else jax.random.fold_in(rng, i),
                                    model=model, keys=keys, frozen_bn=frozen_bn)[0]
            for i, r in enumerate(rows)]
    order = np.argsort(np.concatenate(rows))
    outputs = {key: jnp.concatenate([o[key] for o in outs])[order] for key in keys}
    return objective.loss_from_outputs(outputs, params.get("classifier"), batch, rng,
                                       classifier=cls, cfg=c.loss, mesh=mesh)

  (want_loss, want_metrics), want = jax.jit(jax.value_and_grad(one_pass, has_aux=True))(
      state.params)
  two = jax.jit(lambda p, s, b, r: two_pass.two_pass_gradients(p, s, b, r, num_chunks=chunks,
                                                               **common))
  (loss, (metrics, stats)), got = two(state.params, state.batch_stats, batch, rng)
  return (float(want_loss), float(loss), want, got,
          {k: float(v) for k, v in want_metrics.items()},
          {k: float(v) for k, v in metrics.items()}, state.batch_stats, stats)


# (frozen BatchNorm, chunks, design); frozen BatchNorm is also checked by
# test_one_chunk_is_the_ordinary_step (2 chunks against the one-pass step).
CASES = {1: ((False, 4, "asymmetric"),), 8: ((False, 2, "symmetric"),)}


def check(devices: int):
  for frozen_bn, chunks, design in CASES[devices]:
    want_loss, loss, want, got, wm, gm, old_stats, stats = gradients(
        devices, frozen_bn, chunks, design)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    assert wm.keys() == gm.keys() and "rs@k/soft_recall@1" in gm
    leaves_w, leaves_g = jax.tree.leaves(want), jax.tree.leaves(got)
    assert len(leaves_w) == len(leaves_g) > 10
    scale = max(float(jnp.abs(x).max()) for x in leaves_w)
    assert scale > 0
    for a, b in zip(leaves_w, leaves_g):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-4, atol=5e-5 * scale)
    moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(old_stats),
                                                        jax.tree.leaves(stats))]
    assert (max(moved) == 0) == frozen_bn, moved
  print("OK", devices)


def test_two_pass_gradient_equals_one_pass_on_one_device():
  check(1)


def test_two_pass_gradient_equals_one_pass_on_8_fake_devices():
  script = f"import sys; sys.path.insert(0, {HERE!r}); import test_two_pass; test_two_pass.check(8)"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                     timeout=600, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "OK 8" in r.stdout


def test_one_chunk_is_the_ordinary_step():
  """num_chunks=1 builds the one-pass update; 2 the two-pass one; both give
  the same first step here (frozen BatchNorm: the function is the same)."""
  from asl_jax import sharding, train
  c = rs_config()
  c.train.batch_norm = "frozen"
  mesh = sharding.make_mesh(jax.devices()[:1])
  out = {}
  for chunks in (1, 2):
    c.train.num_chunks = chunks
    model, cls = train.build_modules(c, 8, num_devices=1)
    tx, sched = train.make_optimizer(c.optim, 4)
    state = train.init_state(model, cls, tx, c, jax.random.key(0), mesh)
    update = train.make_update_fn(model, cls, tx, sched, c, mesh, state)
    state, metrics = update(state, sharding.global_batch(a_batch(c), mesh), jax.random.key(1))
    out[chunks] = (float(metrics["loss/total"]), float(metrics["grad_norm"]),
                   jax.tree.leaves(state.params))
  assert out[1][0] == pytest.approx(out[2][0], rel=1e-6)
  assert out[1][1] == pytest.approx(out[2][1], rel=1e-4)
  for a, b in zip(out[1][2], out[2][2]):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
