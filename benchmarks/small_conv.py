"""Where the CPU train step's stride-2 cliff came from: one 3x3 convolution,
512 -> 512 channels, batch 64, forward and forward + backward, at several
output sizes, as XLA's convolution and as one matrix product over its
patches (`models/conv.Conv` with im2col, what `model.small_conv=auto`
uses on the CPU for outputs up to 4x4).

  python benchmarks/small_conv.py --sides 1,2,3,4,8
"""

import jax
import jax.numpy as jnp
from absl import app, flags

from asl_jax.benchmark.harness import mean_seconds
from asl_jax.models import resnet

_SIDES = flags.DEFINE_list("sides", ["1", "2", "3", "4", "8"], "Output sides to time.")
_CHANNELS = flags.DEFINE_integer("channels", 512, "Input and output channels.")
_BATCH = flags.DEFINE_integer("batch", 64, "Images.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per row.")


def main(argv):
  del argv
  c, b = _CHANNELS.value, _BATCH.value
  print(f"{jax.devices()[0].device_kind}: 3x3 convolution {c} -> {c}, batch {b}")
  print(f"{'output':>7} {'implementation':>15} {'fwd ms':>8} {'GFLOP/s':>8} "
        f"{'fwd+bwd ms':>11} {'GFLOP/s':>8}")
  for side in map(int, _SIDES.value):
    x = jax.random.normal(jax.random.key(0), (b, side, side, c))
    for name, im2col in (("XLA conv", False), ("im2col matmul", True)):
      # Below 5x5 the module takes the matrix product when asked to.
      module = resnet.Conv(c, 3, 1, im2col=im2col)
      params = module.init(jax.random.key(1), x[:1])
      loss = lambda p, x, m=module: jnp.sum(m.apply(p, x) ** 2)
      fwd = mean_seconds(jax.jit(loss), params, x, repeats=_REPEATS.value)
      both = mean_seconds(jax.jit(jax.grad(loss, (0, 1))), params, x, repeats=_REPEATS.value)
      flops = 2 * b * side * side * c * c * 9
      print(f"{side:>3}x{side:<3} {name:>15} {fwd * 1e3:>8.1f} {flops / fwd / 1e9:>8.1f} "
            f"{both * 1e3:>11.1f} {3 * flops / both / 1e9:>8.1f}", flush=True)


if __name__ == "__main__":
  app.run(main)
