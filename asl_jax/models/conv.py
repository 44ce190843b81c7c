"""The convolution of the ResNet trunk: `nn.Conv` with the same parameter, and
two CPU paths that XLA's CPU backend runs slowly otherwise: small 3x3
convolutions as one matrix product over their patches (im2col), and
gradients as convolutions in XLA's canonical form (`conv_canonical_grad`)."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Convolutions whose output is at most this many pixels a side run as one
# matrix product over their patches (im2col) where `small_conv` says so: XLA's
# CPU backend runs a 3x3 convolution with a 2x2 output some 50 times slower
# than the same matrix product (docs/performance.md).
SMALL_CONV_SIDE = 4


_DIMS = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, s, pad):
  return jax.lax.conv_general_dilated(x, w, (s, s), ((pad, pad), (pad, pad)),
                                      dimension_numbers=_DIMS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_canonical_grad(x, w, s: int, pad: int):
  """`_conv(x, w, s, pad)` (NHWC x HWIO, square kernel, stride s, padding
  pad) whose gradients are convolutions in XLA's canonical form, their
  operands transposed here. XLA's CPU backend puts the gradient convolutions
  that JAX writes (batch as the contracted feature, a swapped kernel) into
  that form itself, but not inside a loop body (`lax.scan`, as the two-pass
  step has), where it computes them with its naive loop emitter some 25
  times slower (docs/performance.md)."""
  return _conv(x, w, s, pad)


def _conv_fwd(x, w, s, pad):
  return _conv(x, w, s, pad), (x, w)


def _conv_bwd(s, pad, res, g):
  x, w = res
  k, h, ho = w.shape[0], x.shape[1], g.shape[1]
  # dx: g dilated by s, padded, against the kernel turned by 180 degrees
  # with its in and out channels swapped.
  lo, hi = k - 1 - pad, h - (ho - 1) * s - 1 + pad
  w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
  dx = jax.lax.conv_general_dilated(g, w_t, (1, 1), ((lo, hi), (lo, hi)), lhs_dilation=(s, s),
                                    dimension_numbers=_DIMS)
  # dw: x with channels as the batch and images as the feature, against g
  # (images in, channels out) dilated by s: out [Cin, k, k, Cout].
  hi = k + (ho - 1) * s - h - pad
  dw = jax.lax.conv_general_dilated(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), (1, 1),
                                    ((pad, hi), (pad, hi)), rhs_dilation=(s, s),
                                    dimension_numbers=_DIMS)
  return dx, dw.transpose(1, 2, 0, 3).astype(w.dtype)


conv_canonical_grad.defvjp(_conv_fwd, _conv_bwd)


class Conv(nn.Module):
  """nn.Conv(filters, (k, k), strides, padding=k // 2, use_bias=False), the
  same parameter ('kernel', [k, k, in, out]). Where asked: 3x3 convolutions
  with small outputs computed as patches @ kernel (`im2col`), and gradients
  as canonical convolutions (`canonical_grad`, `conv_canonical_grad`)."""
  filters: int
  kernel_size: int = 3
  strides: int = 1
  dtype: Any = jnp.float32
  im2col: bool = False
  canonical_grad: bool = False

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, x.shape[-1], self.filters), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    s, (h, w) = self.strides, x.shape[1:3]
    ho, wo = -(-h // s), -(-w // s)
    if k == 3 and self.im2col and max(ho, wo) <= SMALL_CONV_SIDE:
      xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
      patches = jnp.concatenate([xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s]
                                 for i in range(3) for j in range(3)], -1)
      return jnp.dot(patches, kernel.reshape(-1, self.filters))
    if self.canonical_grad:
      return conv_canonical_grad(x, kernel, s, k // 2)
    return _conv(x, kernel, s, k // 2)


# The name scope of the shifted products, which flops.py counts as a
# convolution's multiply-adds (elementwise work is otherwise left out).
SHIFTS_SCOPE = "depthwise_shifts"


def _shifted(x, i: int, j: int, s: int, ho: int, wo: int):
  """x[:, i + s*h, j + s*w, :] for h < ho, w < wo."""
  return jax.lax.slice(x, (0, i, j, 0), (x.shape[0], i + s * (ho - 1) + 1,
                                         j + s * (wo - 1) + 1, x.shape[3]), (1, s, s, 1))


def _depthwise_sum(xp, w, s: int, ho: int, wo: int):
  """sum_ij xp[:, i + s*h, j + s*w, c] * w[i, j, c]: a depthwise correlation
  over an already padded input, as k*k shifted multiply-adds."""
  out = None
  with jax.named_scope(SHIFTS_SCOPE):  # flops.py counts these products (2 FLOPs each).
    for i in range(w.shape[0]):
      for j in range(w.shape[1]):
        term = _shifted(xp, i, j, s, ho, wo).astype(jnp.float32) * w[i, j].astype(jnp.float32)
        out = term if out is None else out + term
  return out.astype(xp.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_shifts(x, w, s: int, pad: int):
  """The depthwise convolution `lax.conv_general_dilated(x, w[:, :, None],
  s, pad, feature_group_count=C)` (NHWC, w [k, k, C]) as k*k shifted
  multiply-adds, with gradients of the same kind. XLA's CPU backend runs a
  grouped convolution with one channel a group element by element: some 20
  times slower forward and 2-13 times slower backward than this
  (docs/performance.md, "The MobileNetV4 student on the CPU")."""
  return _depthwise_fwd(x, w, s, pad)[0]


def _depthwise_fwd(x, w, s, pad):
  k = w.shape[0]
  ho, wo = (x.shape[1] + 2 * pad - k) // s + 1, (x.shape[2] + 2 * pad - k) // s + 1
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  return _depthwise_sum(xp, w, s, ho, wo), (xp, w)


def _depthwise_bwd(s, pad, res, g):
  xp, w = res
  k, (ho, wo) = w.shape[0], g.shape[1:3]
  h, wd = xp.shape[1] - 2 * pad, xp.shape[2] - 2 * pad
  # dw[i, j, c] = sum over images and outputs of the input each tap saw times g.
  with jax.named_scope(SHIFTS_SCOPE):
    dw = jnp.stack([jnp.stack([jnp.sum(_shifted(xp, i, j, s, ho, wo) * g, (0, 1, 2),
                                       dtype=jnp.float32) for j in range(k)])
                    for i in range(k)])
  # dx: g dilated by s (zeros between its pixels) and padded by k - 1, correlated
  # with the kernel turned by 180 degrees; the rows and columns of the padded input
  # that are padding are cut off. High padding makes the dilated g as tall as needed.
  hi_h = h + pad - s * (ho - 1) - 1
  hi_w = wd + pad - s * (wo - 1) - 1
  zero = jnp.zeros((), g.dtype)
  gd = jax.lax.pad(g, zero, ((0, 0, 0), (k - 1 - pad, hi_h, s - 1),
                             (k - 1 - pad, hi_w, s - 1), (0, 0, 0)))
  dx = _depthwise_sum(gd, jnp.flip(w, (0, 1)), 1, h, wd)
  return dx.astype(xp.dtype), dw.astype(w.dtype)


depthwise_shifts.defvjp(_depthwise_fwd, _depthwise_bwd)
