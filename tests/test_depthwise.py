"""The depthwise convolution as shifted multiply-adds (models/conv.py), which
the MobileNetV4 student uses on the CPU: the values and both gradients of the
grouped convolution it replaces, and the same model outputs either way."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asl_jax.models import conv, mobilenetv4


def _grouped(x, w, s, pad):
  return jax.lax.conv_general_dilated(x, w[:, :, None], (s, s), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=x.shape[-1])


@pytest.mark.parametrize("h,w,k,s", [(9, 9, 3, 1), (9, 8, 3, 2), (10, 7, 5, 2), (7, 7, 5, 1),
                                     (4, 4, 3, 2), (1, 3, 3, 2)])
def test_values_and_gradients_match_the_grouped_convolution(h, w, k, s):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, h, w, 5))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (k, k, 5))
  pad = k // 2
  want = _grouped(x, kernel, s, pad)
  got = conv.depthwise_shifts(x, kernel, s, pad)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-5)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w, s, pad)) * jnp.arange(want.size).reshape(
      want.shape) / want.size)
  for a, b in zip(jax.grad(loss(_grouped), (0, 1))(x, kernel),
                  jax.grad(loss(conv.depthwise_shifts), (0, 1))(x, kernel), strict=True):
    assert a.shape == b.shape
    np.testing.assert_allclose(b, a, atol=2e-5)


def test_student_outputs_equal_with_either_depthwise_path():
  images = jax.random.normal(jax.random.PRNGKey(2), (2, 64, 64, 3))
  models = {d: mobilenetv4.MobileNetV4(gate_feature="gate_head", gate_head_dims=(8,),
                                       depthwise=d) for d in ("xla", "shifts")}
  variables = models["xla"].init(jax.random.PRNGKey(0), images, train=False)
  out = {d: m.apply(variables, images, train=False) for d, m in models.items()}
  for a, b in zip(jax.tree.leaves(out["xla"]), jax.tree.leaves(out["shifts"]), strict=True):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
  # And the shifts path has no grouped convolution left (the CPU's slow kernel).
  def groups(d):
    jaxpr = str(jax.make_jaxpr(lambda v: models[d].apply(v, images, train=False))(variables))
    return {int(g) for g in re.findall(r"feature_group_count=(\d+)", jaxpr)}
  assert max(groups("xla")) > 1 and groups("shifts") == {1}
