"""The two-pass gradient (gradient caching, recall_surrogate.md A.4): a drop-in
for `jax.value_and_grad(objective.loss_fn, has_aux=True)` whose activation
memory is that of one chunk of the batch (train.num_chunks)."""

import functools

import jax
import jax.numpy as jnp

from asl_jax import sharding
from asl_jax.objective import flat_views, loss_from_outputs, model_outputs, needed_outputs


def two_pass_gradients(params, batch_stats, batch, rng, *, model, classifier, cfg, mesh,
                       num_chunks: int, frozen_bn=False):
  """Gradient caching (recall_surrogate.md A.4): the gradient of the whole
  batch's loss with the activations of one chunk at a time.

  Pass 1 embeds the batch chunk by chunk, keeping only the outputs; the loss
  and its gradient G with respect to the outputs (and the classifier) are
  taken on the whole, all-gathered batch; pass 2 recomputes each chunk and
  accumulates its vector-Jacobian product with G. Each chunk is spread over
  the `data` axis (every device holds 1/devices of it); BatchNorm sees the
  statistics of the chunk (the same in both passes) or is frozen; chunk c
  draws the same random keys in both passes. Returns
  (total, (metrics, new batch_stats)), grads, like `value_and_grad(loss_fn)`.
  """
  keys = needed_outputs(cfg)
  devices = mesh.devices.size
  images = flat_views(batch)
  b = images.shape[0] // (devices * num_chunks)
  P = jax.sharding.PartitionSpec
  spread = jax.sharding.NamedSharding(mesh, P(None, "data"))

  def to_chunks(x):  # [B, ...] -> [C, B/C, ...]: chunk c takes b rows of each device.
    rest = x.shape[1:]
    y = x.reshape((devices, num_chunks, b) + rest).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(
        y.reshape((num_chunks, devices * b) + rest), spread)

  def from_chunks(y):
    rest = y.shape[2:]
    x = y.reshape((num_chunks, devices, b) + rest).swapaxes(0, 1)
    return x.reshape((devices * num_chunks * b,) + rest)

  chunk_rngs = (rng[None] if num_chunks == 1 else
                jax.vmap(lambda c: jax.random.fold_in(rng, c))(jnp.arange(num_chunks)))
  embed = functools.partial(model_outputs, model=model, keys=keys, frozen_bn=frozen_bn)
  xs = to_chunks(images)
  # Pass 1: outputs only (nothing here is differentiated, so nothing is kept).
  outputs = jax.lax.map(lambda a: embed(params["model"], batch_stats, *a)[0], (xs, chunk_rngs))
  outputs = jax.tree.map(from_chunks, outputs)
  outputs = jax.lax.with_sharding_constraint(outputs, sharding.replicated(mesh))
  # The loss on the whole batch; G = d loss / d outputs.
  (total, metrics), (g_outputs, g_classifier) = jax.value_and_grad(
      functools.partial(loss_from_outputs, classifier=classifier, cfg=cfg, mesh=mesh),
      argnums=(0, 1), has_aux=True)(outputs, params.get("classifier"), batch, rng)
  g_chunks = jax.tree.map(to_chunks, g_outputs)

  # Pass 2: each chunk again, its J^T G summed into the parameters' gradient.
  def backward(carry, a):
    x, r, g = a
    _, vjp, new_stats = jax.vjp(lambda p: embed(p, batch_stats, x, r), params["model"],
                                has_aux=True)
    grads, stats = carry
    return (jax.tree.map(jnp.add, grads, vjp(g)[0]),
            jax.tree.map(jnp.add, stats, new_stats)), None

  zeros = lambda t: jax.tree.map(jnp.zeros_like, t)
  (g_model, stats_sum), _ = jax.lax.scan(
      backward, (zeros(params["model"]), zeros(batch_stats)), (xs, chunk_rngs, g_chunks))
  new_stats = jax.tree.map(lambda s: s / num_chunks, stats_sum)
  grads = {"model": g_model}
  if "classifier" in params:
    grads["classifier"] = g_classifier
  return (total, (metrics, new_stats)), grads
