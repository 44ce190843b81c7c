"""The PyTorch counterpart of a config's model, for
`python -m asl_jax.benchmark --compare torch` (never imported by training).

The model mirrors `models/resnet.CopyDetector` layer for layer, with
torchvision's ResNet layout and names (conv1/bn1/layer1.0..., v1.5 bottleneck
stride on the 3x3, zero-initialised last BN of each block): the stem, the
layer4 stride, GeM, the BoT projector and the descriptor head, and the
classifier of the config's size, WaveBlock after layer2/3 (training) and ghost
BatchNorm (model.bn_groups) as the JAX model has them. The update step and its
losses are in `torch_step.py`. It needs torch (`pip install -e '.[bench]'`).
"""

import torch
import torch.nn.functional as F
from torch import nn

STAGES = {"tiny": ("basic", (1, 1, 1, 1), "small"), "r18": ("basic", (2, 2, 2, 2), "imagenet"),
          "r34": ("basic", (3, 4, 6, 3), "imagenet"),
          "r50": ("bottleneck", (3, 4, 6, 3), "imagenet"),
          "r101": ("bottleneck", (3, 4, 23, 3), "imagenet"),
          "r152": ("bottleneck", (3, 8, 36, 3), "imagenet")}



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
    norm = make_norm(cfg.bn_groups)
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
    self.wave = (nn.ModuleList([WaveBlock(cfg.wave_chunk) for _ in range(2)])
                 if cfg.wave_block else None)
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



MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def to_input(images_uint8, channels_last):
  """uint8 [B, H, W, 3] -> float [B, 3, H, W] ImageNet-normalised."""
  x = images_uint8.permute(0, 3, 1, 2).float()
  mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
  std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
  x = (x - mean) / std
  return x.contiguous(memory_format=torch.channels_last) if channels_last else x

