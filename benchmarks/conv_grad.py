"""The convolutions of the demo's train step, forward + both gradients, as
XLA runs JAX's own gradient convolutions and as `model.conv_grad=canonical`
writes them (`models/conv.conv_canonical_grad`), each straight and inside
a `lax.scan` over 4 chunks (as the two-pass step runs them), and in eager
PyTorch (NCHW, as `--compare torch` runs it on the CPU) where torch is
installed.

  python benchmarks/conv_grad.py --batch 128
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from asl_jax import benchmark
from asl_jax.models import conv as conv_module

_BATCH = flags.DEFINE_integer("batch", 128, "Images.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls per row (the median is printed).")

# The tiny ResNet's 3x3 convolutions at 48 px: (side in, channels in, out, stride).
SHAPES = [(48, 3, 16, 2), (24, 16, 16, 1), (24, 16, 32, 2), (12, 32, 32, 1), (12, 32, 64, 2),
          (6, 64, 64, 1), (6, 64, 128, 1), (6, 128, 128, 1)]
CHUNKS = 4


def median_ms(fn, *args, sync=jax.block_until_ready):
  """Median milliseconds of one call of fn(*args), after one untimed call."""
  sync(fn(*args))
  return float(np.median(benchmark.time_each(lambda: fn(*args), _REPEATS.value, sync))) * 1e3


def jax_rows(x, w, s):
  rows = {}
  for name, conv in (("xla", lambda x, w: conv_module._conv(x, w, s, 1)),
                     ("canonical", lambda x, w: conv_module.conv_canonical_grad(x, w, s, 1))):
    grad = jax.grad(lambda x, w, conv=conv: jnp.sum(conv(x, w) ** 2), (0, 1))
    rows[name] = median_ms(jax.jit(grad), x, w)
    xs = x.reshape((CHUNKS, -1) + x.shape[1:])

    def body(c, xi, grad=grad):
      gx, gw = grad(xi, w)
      return c + gw, gx
    rows[name + " in scan"] = median_ms(
        jax.jit(lambda xs, body=body: jax.lax.scan(body, jnp.zeros_like(w), xs)), xs)
  return rows


def torch_ms(b, side, cin, cout, s):
  try:
    import torch
  except ImportError:
    return None
  x = torch.randn(b, cin, side, side, requires_grad=True)
  conv = torch.nn.Conv2d(cin, cout, 3, s, 1, bias=False)

  def step():
    y = conv(x)
    return torch.autograd.grad((y ** 2).sum(), (x, conv.weight))
  return median_ms(step, sync=lambda out: out)


def main(argv):
  del argv
  b = _BATCH.value
  print(f"{jax.devices()[0].device_kind}: 3x3 convolutions, batch {b}, forward + gradients "
        f"(ms, median of {_REPEATS.value}); in scan: {CHUNKS} chunks of {b // CHUNKS}")
  print(f"{'conv':>22} {'xla':>8} {'xla in scan':>12} {'canonical':>10} "
        f"{'canonical in scan':>18} {'torch eager':>12}")
  for side, cin, cout, s in SHAPES:
    x = jax.random.normal(jax.random.key(0), (b, side, side, cin))
    w = jax.random.normal(jax.random.key(1), (3, 3, cin, cout))
    r = jax_rows(x, w, s)
    t = torch_ms(b, side, cin, cout, s)
    print(f"{side:>3}x{side:<3} {cin:>4}->{cout:<4} s{s} {r['xla']:8.1f} {r['xla in scan']:12.1f} "
          f"{r['canonical']:10.1f} {r['canonical in scan']:18.1f} "
          f"{'-' if t is None else f'{t:.1f}':>12}", flush=True)


if __name__ == "__main__":
  app.run(main)
