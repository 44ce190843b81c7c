"""The training loss, as the paper composes it: embed the N x K views -> base
metric-learning losses -> ASL norm-ratio loss -> weighted total (`config.loss`).

`loss_fn` is the one-pass loss that `jax.value_and_grad` differentiates;
`model_outputs` and `loss_from_outputs` are its two halves, which the
two-pass gradient (two_pass.py) calls apart.
"""

import jax
import jax.numpy as jnp

from asl_jax import losses, recall_surrogate, sharding
from asl_jax.models import resnet


def needed_outputs(cfg) -> tuple[str, ...]:
  """The model outputs the losses of `config.loss` read (the gate feature
  always: its norm ratio is logged)."""
  keys = {"gate_feature"}
  if cfg.classification > 0:
    keys.add("projected")
  if cfg.triplet > 0:
    keys.add(cfg.triplet_feature)
  if cfg.info_nce > 0 or cfg.koleo > 0 or cfg.rs_at_k > 0:
    keys.add("descriptor")
  return tuple(sorted(keys))


def model_outputs(params, batch_stats, images, rng, *, model, keys, frozen_bn=False):
  """The model on uint8 images [B, H, W, 3]: ({key: [B, ...]}, new batch_stats).

  frozen_bn: BatchNorm uses (and keeps) its running statistics, and the
  model runs in inference mode (no WaveBlock); otherwise batch statistics.
  """
  x = resnet.images_to_input(images)
  variables = {"params": params, "batch_stats": batch_stats}
  if frozen_bn:
    aux = model.apply(variables, x, train=False)
    new_stats = batch_stats
  else:
    aux, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                               rngs={"wave": jax.random.fold_in(rng, 0x3A7E)})
    new_stats = updates["batch_stats"]
  return {key: aux[key] for key in keys}, new_stats


def loss_from_outputs(outputs, classifier_params, batch, rng, *, classifier, cfg, mesh=None):
  """Total loss and metrics of one N x K batch from the model's outputs.

  mesh: given when the classifier is sharded over classes: its input is then
  gathered on every device and its logits stay split along the class axis,
  so that the 100k-way head is never replicated.
  """
  n, k = batch["information_amount"].shape
  labels = jnp.repeat(batch["label"], k)
  terms, extra = {}, {}
  if cfg.classification > 0:
    features = outputs["projected"]
    if mesh is not None and classifier.padded_classes:
      P = jax.sharding.PartitionSpec
      features = jax.lax.with_sharding_constraint(features, sharding.replicated(mesh))
    logits = classifier.apply({"params": classifier_params}, features)
    if mesh is not None and classifier.padded_classes:
      logits = jax.lax.with_sharding_constraint(
          logits, jax.sharding.NamedSharding(mesh, P(None, "data")))
    terms["classification"] = losses.label_smoothed_cross_entropy(
        logits, labels, cfg.label_smoothing, classifier.num_classes)
  if cfg.triplet > 0:
    terms["triplet"] = losses.soft_triplet_loss(outputs[cfg.triplet_feature], labels)
  if cfg.info_nce > 0:
    terms["info_nce"] = losses.info_nce_loss(outputs["descriptor"], labels, cfg.temperature)
  if cfg.koleo > 0:
    terms["koleo"] = losses.koleo_loss(outputs["descriptor"], labels)
  if cfg.rs_at_k > 0:
    terms["rs_at_k"], extra = recall_surrogate.rs_term(
        outputs["descriptor"], batch["label"], k, cfg, jax.random.fold_in(rng, 0x5171))
  if cfg.norm_ratio > 0:
    terms["norm_ratio"] = losses.norm_ratio_loss(
        outputs["gate_feature"], batch["information_amount"],
        rng if cfg.norm_ratio_pairing == "random" else None)
  total = sum(getattr(cfg, name) * value for name, value in terms.items())
  metrics = {f"loss/{name}": value for name, value in terms.items()}
  metrics.update(extra)
  metrics["loss/total"] = total
  metrics["norm_ratio/more_over_less"] = losses.mean_norm_ratio(
      outputs["gate_feature"], batch["information_amount"])
  return total, metrics


def flat_views(batch):
  """The views [N, K, H, W, 3] of a batch as one [N * K, H, W, 3] array."""
  views = batch["views"]
  return views.reshape((-1,) + views.shape[2:])


def loss_fn(params, batch_stats, batch, rng, *, model, classifier, cfg, mesh=None,
            frozen_bn=False):
  """The one-pass loss: model, then `loss_from_outputs`; returns
  (total, (metrics, new batch_stats))."""
  outputs, new_stats = model_outputs(params["model"], batch_stats, flat_views(batch), rng,
                                     model=model, keys=needed_outputs(cfg),
                                     frozen_bn=frozen_bn)
  total, metrics = loss_from_outputs(outputs, params.get("classifier"), batch, rng,
                                     classifier=classifier, cfg=cfg, mesh=mesh)
  return total, (metrics, new_stats)
