"""The model's parts: ghost BatchNorm, WaveBlock, the padded (class-shardable)
classifier and the CPU convolution paths, against direct computations."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asl_jax import losses
from asl_jax.models import resnet


def test_ghost_batchnorm_equals_batchnorm_per_group():
  x = jax.random.normal(jax.random.key(0), (12, 3, 3, 5)) * 2 + 1
  ghost = resnet.GhostBatchNorm(groups=3, use_running_average=False)
  variables = ghost.init(jax.random.key(1), x)
  y, updated = ghost.apply(variables, x, mutable=["batch_stats"])
  plain = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
  means, variances = [], []
  for g in range(3):
    part = x[4 * g: 4 * (g + 1)]
    pv = plain.init(jax.random.key(1), part)
    yg, st = plain.apply(pv, part, mutable=["batch_stats"])
    np.testing.assert_allclose(y[4 * g: 4 * (g + 1)], yg, rtol=1e-5, atol=1e-5)
    means.append(st["batch_stats"]["mean"])
    variances.append(st["batch_stats"]["var"])
  np.testing.assert_allclose(updated["batch_stats"]["mean"], np.mean(means, 0), rtol=1e-5)
  np.testing.assert_allclose(updated["batch_stats"]["var"], np.mean(variances, 0), rtol=1e-5)
  # At evaluation the running statistics are used, as nn.BatchNorm does.
  stats = {"mean": jnp.arange(5.0), "var": jnp.arange(1.0, 6.0)}
  params = variables["params"]
  y_eval = resnet.GhostBatchNorm(groups=3, use_running_average=True).apply(
      {"params": params, "batch_stats": stats}, x)
  np.testing.assert_allclose(y_eval, (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5),
                             rtol=1e-5, atol=1e-5)
  params = {"scale": jnp.linspace(0.5, 2.0, 5), "bias": jnp.linspace(-1.0, 1.0, 5)}
  y_eval = resnet.GhostBatchNorm(groups=3, use_running_average=True).apply(
      {"params": params, "batch_stats": stats}, x)
  want = (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * params["scale"] + params["bias"]
  np.testing.assert_allclose(y_eval, want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="must divide the batch"):
    ghost.apply(variables, x[:10], mutable=["batch_stats"])


def test_ghost_batchnorm_gradients_equal_batchnorm_per_group():
  x = jax.random.normal(jax.random.key(2), (12, 3, 3, 5)) * 3 - 2
  ghost = resnet.GhostBatchNorm(groups=3, use_running_average=False)
  params = {"scale": jnp.linspace(0.5, 2.0, 5), "bias": jnp.linspace(-1.0, 1.0, 5)}
  stats = ghost.init(jax.random.key(1), x)["batch_stats"]
  weights = jax.random.normal(jax.random.key(3), x.shape)

  def ghost_loss(params, x):
    y, _ = ghost.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
    return jnp.sum(y * weights)

  plain = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)

  def plain_loss(params, x):
    total = 0.0
    for g in range(3):
      part = slice(4 * g, 4 * (g + 1))
      y, _ = plain.apply({"params": params, "batch_stats": stats}, x[part],
                         mutable=["batch_stats"])
      total += jnp.sum(y * weights[part])
    return total

  got = jax.grad(ghost_loss, argnums=(0, 1))(params, x)
  want = jax.grad(plain_loss, argnums=(0, 1))(params, x)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_waveblock_scales_all_rows_but_one_band_per_chunk():
  x = jnp.ones((8, 20, 4, 2))
  block = resnet.WaveBlock(chunk=4)
  y = np.asarray(block.apply({}, x, True, rngs={"wave": jax.random.key(3)}))
  rows = y[:, :, 0, 0]
  assert set(np.unique(rows)) <= {1.0, 1.5}
  kept = rows == 1.0
  assert (kept.sum(1) == 6).all()  # round(0.3 * 20) rows keep their values.
  for b in range(8):  # One contiguous band...
    idx = np.flatnonzero(kept[b])
    assert (np.diff(idx) == 1).all()
  assert (rows[0] == rows[1]).all() and (rows[4] == rows[7]).all()  # ...shared per chunk.
  many = np.asarray(block.apply({}, jnp.ones((400, 20, 1, 1)), True,
                                rngs={"wave": jax.random.key(4)}))[:, :, 0, 0]
  assert len({int(np.flatnonzero(r == 1.0)[0]) for r in many[::4]}) > 5  # Bands vary.
  np.testing.assert_array_equal(block.apply({}, x, False), x)  # Identity at evaluation.


def test_padded_classifier_gives_the_unpadded_loss():
  x = jax.random.normal(jax.random.key(0), (6, 8))
  labels = jnp.array([0, 1, 4, 2, 4, 3])
  plain = resnet.Classifier(5)
  padded = resnet.Classifier(5, padded_classes=8)
  params = plain.init(jax.random.key(1), x)
  wide = {"params": {"kernel": jnp.pad(params["params"]["kernel"], ((0, 0), (0, 3)),
                                       constant_values=0.3)}}
  logits = padded.apply(wide, x)
  assert logits.shape == (6, 8) and (logits[:, 5:] == -1e9).all()
  want = losses.label_smoothed_cross_entropy(plain.apply(params, x), labels, 0.1)
  got = losses.label_smoothed_cross_entropy(logits, labels, 0.1, num_classes=5)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  grad = jax.grad(lambda p: losses.label_smoothed_cross_entropy(
      padded.apply(p, x), labels, 0.1, num_classes=5))(wide)["params"]["kernel"]
  assert np.abs(grad[:, 5:]).max() == 0  # Padding columns never learn.


@pytest.mark.parametrize("side,strides", [(2, 1), (4, 2), (3, 2), (1, 1), (8, 1)])
def test_small_convolutions_as_matrix_products_equal_xlas(side, strides):
  """Conv with im2col (used on the CPU for 3x3 outputs up to 4x4) gives the
  convolution's values and gradients, with the same parameter as nn.Conv;
  larger outputs take XLA's convolution either way."""
  x = jax.random.normal(jax.random.key(0), (3, side, side, 8))
  ref = nn.Conv(5, (3, 3), strides, padding=1, use_bias=False)
  params = ref.init(jax.random.key(1), x)
  fast = resnet.Conv(5, 3, strides, im2col=True)
  assert jax.tree.map(jnp.shape, fast.init(jax.random.key(1), x)) == jax.tree.map(
      jnp.shape, params)
  np.testing.assert_allclose(fast.init(jax.random.key(1), x)["params"]["kernel"],
                             params["params"]["kernel"])  # The same initial values.
  f = lambda p, x, m: jnp.sum(jnp.sin(m.apply(p, x)))
  want, got = ref.apply(params, x), fast.apply(params, x)
  assert got.shape == want.shape == (3, -(-side // strides), -(-side // strides), 5)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(jax.grad(f, (0, 1))(params, x, ref)),
                  jax.tree.leaves(jax.grad(f, (0, 1))(params, x, fast))):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel,side,strides", [(3, 8, 1), (3, 8, 2), (3, 9, 2), (1, 8, 2),
                                                 (1, 9, 2), (1, 6, 1), (7, 12, 2), (7, 13, 2)])
def test_canonical_gradient_convolution_equals_xlas(kernel, side, strides):
  """Conv with canonical_grad (the CPU default, model.conv_grad=auto): the
  values and both gradients of nn.Conv's convolution, for every kernel size
  and stride the ResNets use, odd sides included; the same parameter."""
  x = jax.random.normal(jax.random.key(0), (3, side, side, 4))
  ref = nn.Conv(5, (kernel, kernel), strides, padding=kernel // 2, use_bias=False)
  params = ref.init(jax.random.key(1), x)
  mine = resnet.Conv(5, kernel, strides, canonical_grad=True)
  np.testing.assert_allclose(mine.init(jax.random.key(1), x)["params"]["kernel"],
                             params["params"]["kernel"])
  f = lambda p, x, m: jnp.sum(jnp.sin(m.apply(p, x)) * jnp.arange(5.0))
  np.testing.assert_allclose(mine.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
  (gp_ref, gx_ref), (gp, gx) = (jax.grad(f, (0, 1))(params, x, m) for m in (ref, mine))
  assert gx.shape == x.shape
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(gp["params"]["kernel"], gp_ref["params"]["kernel"],
                             rtol=1e-4, atol=1e-5)


def test_gradient_convolutions_in_a_loop_body_are_canonical():
  """Why model.conv_grad=auto takes `canonical` on the CPU: inside a
  `lax.scan` body (the two-pass step's), XLA's CPU backend leaves JAX's own
  gradient convolutions in their swapped forms (and runs them ~25x slower);
  the canonical ones compile to batch-spatial-feature convolutions only."""
  if jax.default_backend() != "cpu":
    pytest.skip("a check of XLA's CPU backend")
  x = jax.random.normal(jax.random.key(0), (2, 4, 6, 6, 8))
  def loop_hlo(conv):
    params = conv.init(jax.random.key(1), x[0])
    grad = jax.grad(lambda p, xi: jnp.sum(conv.apply(p, xi) ** 2))
    body = lambda c, xi: (jax.tree.map(jnp.add, c, grad(params, xi)), None)
    loop = lambda x: jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), x)[0]
    return jax.jit(loop).lower(x).compile().as_text()
  labels = {canonical: set(re.findall(r"dim_labels=([\w>-]+)", loop_hlo(
      resnet.Conv(8, 3, 1, canonical_grad=canonical)))) for canonical in (False, True)}
  assert labels[True] == {"b01f_01io->b01f"}, labels
  assert labels[False] != labels[True], labels  # XLA's own forms: the reason for this option.
