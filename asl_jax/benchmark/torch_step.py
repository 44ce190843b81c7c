"""The PyTorch counterpart of a config's update step, for
`python -m asl_jax.benchmark --compare torch` (never imported by training):
the config's losses (InfoNCE, KoLeo, soft triplet, label-smoothed CE, RS@k
without SiMix, the ASL norm ratio with the config's pairing, all pairs or the
official random draw) and Adam(W) on `torch_model.CopyDetector`, the
gradient's global norm computed as the JAX step's metric, with bf16 autocast
and channels-last on a GPU. It needs torch (`pip install -e '.[bench]'`).
`COMPUTES` and `DIFFERENCES` say what each side computes, for the benchmark's
JSON.
"""

import math

import torch
import torch.nn.functional as F

from asl_jax.benchmark.torch_model import Classifier, CopyDetector, set_tf32, to_input

COMPUTES = {
    "asl_jax": "jitted update: uint8 views -> ImageNet normalisation -> the config's model "
               "(bf16 compute, float32 parameters; ghost BN and WaveBlock where the config has "
               "them) -> the config's losses (float32) -> gradients -> Adam(W) update; metrics: "
               "each loss term, the mean norm ratio, the gradients' global norm, the learning "
               "rate; XLA autotunes its convolutions and matrix products",
    "torch": "the same model and losses in PyTorch (asl_jax/benchmark/torch_step.py): bf16 "
             "autocast, channels-last, cudnn.benchmark=True; forward and loss eager or under "
             "torch.compile (default or max-autotune mode), backward through autograd, fused "
             "Adam(W); the gradients' global norm computed as the JAX metric"}
DIFFERENCES = [
    "random draws differ (WaveBlock bands, the random norm-ratio pairing): the same "
    "distributions, not the same numbers",
    "torch's optimiser step and gradient norm run outside torch.compile (eager, fused "
    "Adam); JAX compiles the whole update into one program",
    "torch casts under autocast per op; JAX casts the parameters to bf16 once per layer",
    "JAX's step also writes the running BatchNorm statistics and loss-term metrics into its "
    "outputs; torch updates its running statistics in place"]


# ------------------------------------------------------------------ losses --
def _same(labels):
  return labels[:, None] == labels[None, :]


def info_nce(e, labels, t):
  z = F.normalize(e.float(), dim=-1)
  s = z @ z.t() / t
  same = _same(labels)
  positive = same & ~torch.eye(len(z), dtype=torch.bool, device=z.device)
  neg = torch.logsumexp(s.masked_fill(same, -math.inf), 1, keepdim=True)
  log_prob = s - torch.logaddexp(s, neg)
  return (-(log_prob * positive).sum(1) / positive.sum(1).clamp(min=1)).mean()


def koleo(e, labels):
  z = F.normalize(e.float(), dim=-1)
  nearest = (z @ z.t()).masked_fill(_same(labels), -math.inf).max(1).values
  return -torch.log(torch.sqrt((2 - 2 * nearest).clamp(min=1e-6))).mean()


def soft_triplet(x, labels):
  d = torch.cdist(x.float(), x.float()).clamp(min=1e-6)
  same = _same(labels)
  pos = d.masked_fill(~same, -math.inf).max(1).values
  neg = d.masked_fill(same, math.inf).min(1).values
  return F.softplus(pos - neg).mean()


def norm_ratio(g, amounts, pairing="all", num_tries=5):
  """asl_jax.losses.norm_ratio_loss: all ordered pairs, or (pairing="random")
  one pair per identity drawn as the official code (the first of up to 5 draws
  whose views differ in amount; a tie contributes exactly 1)."""
  n, k = amounts.shape
  norms = g.float().norm(dim=-1).reshape(n, k)
  if pairing == "random":
    draws = torch.randint(0, k, (n, num_tries, 2), device=g.device)
    pair_amount = torch.gather(amounts[:, None, :].expand(n, num_tries, k), 2, draws)
    differs = pair_amount[..., 0] != pair_amount[..., 1]
    first = torch.where(differs.any(1), differs.int().argmax(1),
                        torch.full_like(differs[:, 0], num_tries - 1, dtype=torch.long))
    rows = torch.arange(n, device=g.device)
    pair, amount = draws[rows, first], pair_amount[rows, first]
    a_more = amount[:, 0] > amount[:, 1]
    more = torch.where(a_more, pair[:, 0], pair[:, 1])
    less = torch.where(a_more, pair[:, 1], pair[:, 0])
    tie = amount[:, 0] == amount[:, 1]
    ratio = torch.where(tie, torch.ones_like(norms[:, 0]), norms[rows, more] / norms[rows, less])
    return torch.where(tie, torch.ones_like(ratio), torch.exp(1 - ratio)).mean()
  more = amounts[:, :, None] > amounts[:, None, :]
  terms = torch.exp(1 - norms[:, :, None] / norms[:, None, :]) * more
  count = more.sum((1, 2))
  per_id = torch.where(count > 0, terms.sum((1, 2)) / count.clamp(min=1), torch.ones_like(
      count, dtype=terms.dtype))
  return per_id.mean()


def rs_at_k(e, n, k, cfg):
  """RS@k of the symmetric or asymmetric design (no SiMix), vectorised."""
  z = F.normalize(e.float(), dim=-1)
  b = n * k
  labels = torch.arange(n, device=z.device).repeat_interleave(k)
  view = torch.arange(k, device=z.device).repeat(n)
  if cfg.rs_distractor_ids:
    distractor = (torch.arange(n, device=z.device) % (n // cfg.rs_distractor_ids) == 0)
  else:
    distractor = torch.zeros(n, dtype=torch.bool, device=z.device)
  distractor = distractor.repeat_interleave(k)
  if cfg.rs_design == "symmetric":
    query, database = ~distractor, torch.ones(b, dtype=torch.bool, device=z.device)
  else:
    query, database = (view > 0) & ~distractor, (view == 0) | distractor
  eye = torch.eye(b, dtype=torch.bool, device=z.device)
  positive = _same(labels) & ~eye & database[None, :]
  s = z @ z.t()
  m = 1 if cfg.rs_design == "asymmetric" else k - 1
  order = torch.argsort((~positive).to(torch.int8), dim=1, stable=True)[:, :m]
  valid = torch.gather(positive, 1, order)
  s_pos = torch.gather(s, 1, order)                                  # [B, m]
  diff = (s[:, :, None] - s_pos[:, None, :]) / cfg.rs_tau2             # [B, B, m]
  keep = database[None, :, None] & (torch.arange(b, device=z.device)[None, :, None]
                                    != order[:, None, :])
  if not cfg.rs_query_in_rank:
    keep = keep & ~eye[:, :, None]
  rank = 1 + (torch.sigmoid(diff.clamp(-50, 50)) * keep).sum(1)        # [B, m]
  ks = torch.tensor(sorted({min(x, b) for x in cfg.rs_k}), device=z.device, dtype=z.dtype)
  member = torch.sigmoid(((ks[None, :, None] - rank[:, None, :]) / cfg.rs_tau1).clamp(-50, 50))
  count = (member * valid[:, None, :]).sum(2)                          # [B, K]
  npos = valid.sum(1, keepdim=True).to(z.dtype)
  recall = torch.minimum(count, ks) / torch.minimum(ks, npos).clamp(min=1)
  w = (query & (positive.sum(1) > 0)).to(z.dtype)
  return (w * (1 - recall).mean(1)).sum() / w.sum().clamp(min=1)


def total_loss(out, logits, labels, amounts, cfg):
  k = amounts.shape[1]
  rows = labels.repeat_interleave(k)
  total = 0.0
  if cfg.classification > 0:
    total = total + cfg.classification * F.cross_entropy(logits.float(), rows,
                                                         label_smoothing=cfg.label_smoothing)
  if cfg.triplet > 0:
    total = total + cfg.triplet * soft_triplet(out[cfg.triplet_feature], rows)
  if cfg.info_nce > 0:
    total = total + cfg.info_nce * info_nce(out["descriptor"], rows, cfg.temperature)
  if cfg.koleo > 0:
    total = total + cfg.koleo * koleo(out["descriptor"], rows)
  if cfg.rs_at_k > 0:
    total = total + cfg.rs_at_k * rs_at_k(out["descriptor"], amounts.shape[0], k, cfg)
  if cfg.norm_ratio > 0:
    total = total + cfg.norm_ratio * norm_ratio(out["gate_feature"], amounts,
                                                cfg.norm_ratio_pairing)
  return total



class Step:
  """One training update of the config in PyTorch; `compile` (True or a
  torch.compile mode: "default", "max-autotune") wraps the forward-and-loss in
  torch.compile (the backward follows through AOTAutograd); the optimiser step
  and the gradient norm stay eager. Returns (loss, gradient norm)."""

  def __init__(self, config, num_classes: int, device: str, compile=False):
    self.device = torch.device(device)
    self.cuda = self.device.type == "cuda"
    if self.cuda:
      set_tf32(True)
    self.cfg = config.loss
    self.model = CopyDetector(config.model).to(self.device)
    if self.cuda:
      self.model = self.model.to(memory_format=torch.channels_last)
    self.classifier = None
    params = list(self.model.parameters())
    if config.loss.classification > 0:
      self.classifier = Classifier(config.model.projector_dims[1], num_classes,
                                   config.loss.cosine_scale).to(self.device)
      params += list(self.classifier.parameters())
    o = config.optim
    opt = torch.optim.AdamW if o.weight_decay else torch.optim.Adam
    kw = {"weight_decay": o.weight_decay} if o.weight_decay else {}
    self.optimizer = opt([p for p in params if p.requires_grad], lr=o.learning_rate,
                         betas=(o.b1, o.b2), fused=self.cuda, **kw)
    self.amp = self.cuda and config.model.dtype == "bfloat16"
    self.params = [p for p in params if p.requires_grad]
    self.forward = _compiled(self._forward, compile)

  def _forward(self, views, amounts, labels):
    x = to_input(views.reshape((-1,) + views.shape[2:]), self.cuda)
    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
      out = self.model(x)
      logits = self.classifier(out["projected"]) if self.classifier is not None else None
    return total_loss(out, logits, labels, amounts, self.cfg)

  def __call__(self, views, amounts, labels):
    self.model.train()
    loss = self.forward(views, amounts, labels)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # The JAX step's metric: the global norm of all gradients.
    grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(
        [p.grad for p in self.params if p.grad is not None])))
    self.optimizer.step()
    return loss, grad_norm

  def sync(self):
    if self.cuda:
      torch.cuda.synchronize()


def _compiled(fn, compile):
  """fn, or torch.compile(fn) in the mode `compile` names (True: default)."""
  if not compile:
    return fn
  mode = None if compile in (True, "default") else compile
  return torch.compile(fn, mode=mode)


def embedder(config, device: str, compile=False):
  """images uint8 [B, H, W, 3] -> L2-normalised descriptors (eval mode, no grad;
  inference_mode would stop torch.compile)."""
  dev = torch.device(device)
  if dev.type == "cuda":
    set_tf32(True)
  model = CopyDetector(config.model).to(dev).eval()
  cuda = dev.type == "cuda"
  if cuda:
    model = model.to(memory_format=torch.channels_last)
  amp = cuda and config.model.dtype == "bfloat16"

  def embed(images):
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
      return F.normalize(model(to_input(images, cuda))["descriptor"].float(), dim=-1)
  return _compiled(embed, compile)


def parameter_count(config, num_classes: int) -> int:
  step = Step(config, num_classes, "cpu")
  n = sum(p.numel() for p in step.model.parameters() if p.requires_grad)
  return n + (sum(p.numel() for p in step.classifier.parameters()) if step.classifier else 0)
