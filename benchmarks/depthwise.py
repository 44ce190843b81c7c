"""The MobileNetV4 student's depthwise convolutions on this backend: the whole
model (224 px, forward; forward + backward of every parameter) with XLA's
grouped convolution and with shifted multiply-adds (`models/conv.py`,
`depthwise_shifts`, what `MobileNetV4.depthwise="auto"` takes on the CPU).

  python benchmarks/depthwise.py --batch 16 --size 224
"""

import jax
import jax.numpy as jnp
from absl import app, flags

from asl_jax.benchmark.harness import mean_seconds
from asl_jax.models import mobilenetv4

_BATCH = flags.DEFINE_integer("batch", 16, "Images per call.")
_SIZE = flags.DEFINE_integer("size", 224, "Image side.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per row.")


def main(argv):
  del argv
  images = jax.random.normal(jax.random.PRNGKey(0), (_BATCH.value, _SIZE.value, _SIZE.value, 3))
  print(f"backend {jax.default_backend()}, {jax.devices()[0].device_kind}, batch "
        f"{_BATCH.value} at {_SIZE.value} px; ms per image")
  print(f"{'depthwise':>10} {'forward':>8} {'fwd+bwd':>8}")
  make = lambda path: mobilenetv4.MobileNetV4(gate_feature="gate_head", gate_head_dims=(64,),
                                              depthwise=path)
  variables = make("xla").init(jax.random.PRNGKey(0), images[:1], train=False)
  for path in ("xla", "shifts"):
    model = make(path)

    def loss(params, x, model=model):
      out = model.apply({**variables, "params": params}, x, train=False)
      return sum(jnp.sum(jnp.square(t)) for t in jax.tree.leaves(out))
    fwd, grad = jax.jit(loss), jax.jit(jax.grad(loss))
    per_image = lambda f: 1000 * mean_seconds(
        f, variables["params"], images, repeats=_REPEATS.value) / _BATCH.value
    print(f"{path:>10} {per_image(fwd):8.2f} {per_image(grad):8.2f}", flush=True)


if __name__ == "__main__":
  app.run(main)
