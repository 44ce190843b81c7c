"""The PyTorch counterpart of a config's model and update step, for
`python -m asl_jax.benchmark --compare torch` (never imported by training).

The model mirrors `models/resnet.CopyDetector` layer for layer, with
torchvision's ResNet layout and names (conv1/bn1/layer1.0..., v1.5 bottleneck
stride on the 3x3, zero-initialised last BN of each block): the stem, the
layer4 stride, GeM, the BoT projector and the descriptor head, and the
classifier of the config's size, WaveBlock after layer2/3 (training) and ghost
BatchNorm (model.bn_groups) as the JAX model has them. The step is the config's
losses (InfoNCE, KoLeo, soft triplet, label-smoothed CE, RS@k without SiMix,
the ASL norm ratio with the config's pairing, all pairs or the official random
draw) and Adam(W), the gradient's global norm computed as the JAX step's metric,
with bf16 autocast and channels-last on a GPU. It needs torch
(`pip install -e '.[bench]'`). `COMPUTES` and `DIFFERENCES` say what each side
computes, for the benchmark's JSON.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

STAGES = {"tiny": ("basic", (1, 1, 1, 1), "small"), "r18": ("basic", (2, 2, 2, 2), "imagenet"),
          "r34": ("basic", (3, 4, 6, 3), "imagenet"),
          "r50": ("bottleneck", (3, 4, 6, 3), "imagenet"),
          "r101": ("bottleneck", (3, 4, 23, 3), "imagenet"),
          "r152": ("bottleneck", (3, 8, 36, 3), "imagenet")}


COMPUTES = {
    "asl_jax": "jitted update: uint8 views -> ImageNet normalisation -> the config's model "
               "(bf16 compute, float32 parameters; ghost BN and WaveBlock where the config has "
               "them) -> the config's losses (float32) -> gradients -> Adam(W) update; metrics: "
               "each loss term, the mean norm ratio, the gradients' global norm, the learning "
               "rate; XLA autotunes its convolutions and matrix products",
    "torch": "the same model and losses in PyTorch (asl_jax/torch_reference.py): bf16 "
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


def set_tf32(enabled: bool = True):
  """TF32 for float32 matrix products and convolutions: the JAX side's default
  precision on GPUs lets XLA use TF32 for float32 dots and convolutions, so the
  torch side allows it too (both are mostly bf16 here)."""
  torch.backends.cuda.matmul.allow_tf32 = enabled
  torch.backends.cudnn.allow_tf32 = enabled
  torch.backends.cudnn.benchmark = True


class GhostBatchNorm(nn.Module):
  """BatchNorm over `groups` equal slices of the batch, as asl_jax's
  GhostBatchNorm (both moments in one pass, biased variance; running
  statistics move by the mean of the groups'); plain BatchNorm in eval mode."""

  def __init__(self, features, groups, zero_init=False, bias=True, momentum=0.1, eps=1e-5):
    super().__init__()
    self.groups, self.momentum, self.eps = groups, momentum, eps
    self.weight = nn.Parameter(torch.zeros(features) if zero_init else torch.ones(features))
    self.bias = nn.Parameter(torch.zeros(features), requires_grad=bias)
    self.register_buffer("running_mean", torch.zeros(features))
    self.register_buffer("running_var", torch.ones(features))

  def forward(self, x):
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if not self.training:
      mul = self.weight * torch.rsqrt(self.running_var + self.eps)
      return ((x.float() - self.running_mean.view(shape)) * mul.view(shape)
              + self.bias.view(shape)).to(x.dtype)
    xg = x.float().reshape((self.groups, -1) + x.shape[1:])
    axes = (1,) + tuple(range(3, xg.dim()))
    mean = xg.mean(axes, keepdim=True)
    var = (xg.square().mean(axes, keepdim=True) - mean.square()).clamp(min=0)
    gshape = (1, 1, -1) + (1,) * (x.dim() - 2)
    mul = self.weight.view(gshape) * torch.rsqrt(var + self.eps)
    y = ((xg - mean) * mul + self.bias.view(gshape)).reshape(x.shape)
    with torch.no_grad():
      m = self.momentum
      self.running_mean.mul_(1 - m).add_(m * mean.reshape(self.groups, -1).mean(0))
      self.running_var.mul_(1 - m).add_(m * var.reshape(self.groups, -1).mean(0))
    return y.to(x.dtype)


def make_norm(groups):
  """norm(features, dims, zero_init=False, bias=True): BatchNorm1d/2d, or ghost."""
  def norm(features, dims=2, zero_init=False, bias=True):
    if groups > 1:
      return GhostBatchNorm(features, groups, zero_init, bias)
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(features)
    if zero_init:
      nn.init.zeros_(bn.weight)
    bn.bias.requires_grad_(bias)
    return bn
  return norm


class WaveBlock(nn.Module):
  """asl_jax's WaveBlock: in training, per chunk of `chunk` samples one random
  band of round(0.3 H) rows kept, every other row times 1.5."""

  def __init__(self, chunk=32, band=0.3, factor=1.5):
    super().__init__()
    self.chunk, self.band, self.factor = chunk, band, factor

  def forward(self, x):  # NCHW (channels-last strides are kept by the multiply).
    if not self.training:
      return x
    b, h = x.shape[0], x.shape[2]
    rows = int(round(self.band * h))
    chunk = self.chunk if b % self.chunk == 0 else 1
    start = torch.randint(0, h - rows + 1, (b // chunk, 1), device=x.device)
    y = torch.arange(h, device=x.device)[None]
    mask = torch.where((y >= start) & (y < start + rows), 1.0, self.factor)
    return x * mask.repeat_interleave(chunk, 0).to(x.dtype)[:, None, :, None]


def plain_batch_norm(features, zero_init=False):
  """torchvision's BatchNorm2d (the last of a block starts at zero when
  zero_init): the blocks' default `norm`."""
  bn = nn.BatchNorm2d(features)
  if zero_init:
    nn.init.zeros_(bn.weight)
  return bn


class Basic(nn.Module):
  expansion = 1

  def __init__(self, cin, planes, stride, norm=plain_batch_norm):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
    self.bn1 = norm(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = norm(planes, zero_init=True)
    self.downsample = None
    if stride != 1 or cin != planes:
      self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False),
                                      norm(planes))

  def forward(self, x):
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, planes, stride, norm=plain_batch_norm):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = norm(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = norm(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = norm(planes * 4, zero_init=True)
    self.downsample = None
    if stride != 1 or cin != planes * 4:
      self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False),
                                      norm(planes * 4))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class CopyDetector(nn.Module):
  """Trunk + GeM + projector + descriptor head, as models/resnet.py."""

  def __init__(self, cfg):
    super().__init__()
    kind, stages, stem = STAGES[cfg.variant]
    block = Basic if kind == "basic" else Bottleneck
    norm = make_norm(cfg.get("bn_groups", 1))
    w = cfg.width
    if stem == "imagenet":
      self.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
    else:
      self.conv1 = nn.Conv2d(3, w, 3, 2, 1, bias=False)
      self.maxpool = nn.Identity()
    self.bn1 = norm(w)
    cin = w
    for i, n in enumerate(stages):
      stride = (1, 2, 2, cfg.last_stride)[i]
      blocks = []
      for j in range(n):
        blocks.append(block(cin, w * 2 ** i, stride if j == 0 else 1, norm))
        cin = w * 2 ** i * block.expansion
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.wave = (nn.ModuleList([WaveBlock(cfg.get("wave_chunk", 32)) for _ in range(2)])
                 if cfg.get("wave_block", False) else None)
    self.gem_p = nn.Parameter(torch.tensor(3.0))
    h, o = cfg.projector_dims
    self.proj_fc1, self.proj_bn1 = nn.Linear(cin, h), norm(h, 1)
    self.proj_fc2, self.proj_bn2 = nn.Linear(h, o), norm(o, 1, bias=False)
    self.desc_bn1 = norm(o, 1)
    self.desc_fc = nn.Linear(o, cfg.descriptor_dim)
    self.desc_bn2 = norm(cfg.descriptor_dim, 1, bias=False)
    self.gate_feature = cfg.gate_feature

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    x = self.layer2(self.layer1(x))
    if self.wave is not None:  # After layer2 and layer3, as the JAX model (training only).
      x = self.wave[0](x)
    x = self.layer3(x)
    if self.wave is not None:
      x = self.wave[1](x)
    x = self.layer4(x)
    p = self.gem_p
    pooled = x.float().clamp(min=1e-6).pow(p).mean((2, 3)).pow(1.0 / p)
    h = F.leaky_relu(self.proj_bn1(self.proj_fc1(pooled)), 0.2)
    projected = self.proj_bn2(self.proj_fc2(h))
    d = self.desc_bn2(self.desc_fc(F.leaky_relu(self.desc_bn1(projected), 0.2)))
    out = {"pooled": pooled, "projected": projected.float(), "descriptor": d.float()}
    out["gate_feature"] = out["projected" if self.gate_feature == "projector" else "pooled"]
    return out


class Classifier(nn.Module):
  def __init__(self, dim, num_classes, cosine_scale):
    super().__init__()
    self.weight = nn.Parameter(torch.randn(num_classes, dim) * 0.001)
    self.scale = cosine_scale

  def forward(self, x):
    if not self.scale:
      return x @ self.weight.t()
    return self.scale * F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).t()


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
  if cfg.get("rs_at_k", 0) > 0:
    total = total + cfg.rs_at_k * rs_at_k(out["descriptor"], amounts.shape[0], k, cfg)
  if cfg.norm_ratio > 0:
    total = total + cfg.norm_ratio * norm_ratio(out["gate_feature"], amounts,
                                                cfg.get("norm_ratio_pairing", "all"))
  return total


# -------------------------------------------------------------------- step --
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def to_input(images_uint8, channels_last):
  """uint8 [B, H, W, 3] -> float [B, 3, H, W] ImageNet-normalised."""
  x = images_uint8.permute(0, 3, 1, 2).float()
  mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
  std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
  x = (x - mean) / std
  return x.contiguous(memory_format=torch.channels_last) if channels_last else x


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
