"""ResNet family with GeM pooling, the BoT projector and a descriptor head.

As in the BoT/D²LV baselines (Wang et al., ISC2021 D²LV and BoT code): a ResNet
trunk (layer4 stride configurable, 1 in the paper), GeM pooling with a
learnable exponent, a projector `Dense -> BN -> LeakyReLU -> Dense -> BN(no
bias)` whose output is ASL's gate feature, and a descriptor head
`BN -> LeakyReLU -> Dense -> BN(no bias)` whose L2-normalised output is used
for retrieval. Intermediates come back in an aux dict.

Variants are strings: "r18", "r34", "r50", "r101", "r152" and "tiny" (a
small basic-block ResNet for CPU demos and tests); `build` also makes
"mnv4s", the MobileNetV4 Conv-S of models/mobilenetv4.py. The head is BoT's
(above) or SSCD's (`model.head="sscd"`: GeM -> Dense -> descriptor).
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from asl_jax.models.conv import Conv

# (block, blocks per stage, stem: "imagenet" 7x7/2 + maxpool or "small" 3x3/2).
MOBILENET_VARIANTS = ("mnv4s",)  # models/mobilenetv4.py.
VARIANTS = {
    "tiny": ("basic", (1, 1, 1, 1), "small"),
    "r18": ("basic", (2, 2, 2, 2), "imagenet"),
    "r34": ("basic", (3, 4, 6, 3), "imagenet"),
    "r50": ("bottleneck", (3, 4, 6, 3), "imagenet"),
    "r101": ("bottleneck", (3, 4, 23, 3), "imagenet"),
    "r152": ("bottleneck", (3, 8, 36, 3), "imagenet"),
}


class BasicBlock(nn.Module):
  filters: int
  strides: int
  norm: Any
  conv: Any  # Conv with its dtype and options: conv(filters, kernel_size, strides, name=).

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.filters, 3, self.strides, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, 3, name="conv2")(y)
    y = self.norm(name="bn2", scale_init=nn.initializers.zeros)(y)
    if x.shape != y.shape:
      x = self.conv(self.filters, 1, self.strides, name="downsample_conv")(x)
      x = self.norm(name="downsample_bn")(x)
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  filters: int
  strides: int
  norm: Any
  conv: Any

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm(name="bn1")(self.conv(self.filters, 1, name="conv1")(x)))
    # torchvision ResNet v1.5: the stride sits on the 3x3 convolution.
    y = self.conv(self.filters, 3, self.strides, name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(self.filters * 4, 1, name="conv3")(y)
    y = self.norm(name="bn3", scale_init=nn.initializers.zeros)(y)
    if x.shape != y.shape:
      x = self.conv(self.filters * 4, 1, self.strides, name="downsample_conv")(x)
      x = self.norm(name="downsample_bn")(x)
    return nn.relu(x + y)


class GeM(nn.Module):
  """Generalised-mean pooling with a learnable exponent p (init 3)."""
  p_init: float = 3.0
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    p = self.param("p", nn.initializers.constant(self.p_init), (1,), jnp.float32)
    x = jnp.maximum(x.astype(jnp.float32), self.eps)
    return jnp.mean(x ** p, axis=(1, 2)) ** (1.0 / p)


class GhostBatchNorm(nn.Module):
  """BatchNorm whose training statistics come from `groups` equal slices of
  the batch, as PyTorch DataParallel computes them per GPU (BoT/D²LV: 4
  groups of 32 in a batch of 128). Same variables as `nn.BatchNorm` (scale,
  bias; batch_stats mean, var), so checkpoints and pretrained files fit both;
  the running statistics move by the mean of the groups' statistics."""
  groups: int
  use_running_average: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  use_bias: bool = True
  scale_init: Any = nn.initializers.ones

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param("scale", self.scale_init, (features,), jnp.float32)
    bias = (self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
            if self.use_bias else jnp.zeros((features,), jnp.float32))
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    if self.use_running_average:
      mul = scale * jax.lax.rsqrt(ra_var.value + self.epsilon)
      y = (x.astype(jnp.float32) - ra_mean.value) * mul + bias
      return y.astype(self.dtype)
    if x.shape[0] % self.groups:
      raise ValueError(f"model.bn_groups={self.groups} must divide the batch of "
                       f"{x.shape[0]} images.")
    xg = x.astype(jnp.float32).reshape((self.groups, -1) + x.shape[1:])
    axes = tuple(range(1, xg.ndim - 1))
    # As nn.BatchNorm: both moments in one pass over x (use_fast_variance;
    # biased), and scale folded into the per-channel multiplier, so that the
    # backward pass needs x alone, not a float32 copy of the normalised x.
    mean = xg.mean(axes, keepdims=True)
    var = jnp.maximum(0.0, jnp.square(xg).mean(axes, keepdims=True) - jnp.square(mean))
    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    y = ((xg - mean) * mul + bias).reshape(x.shape)
    if not self.is_initializing():
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * mean.reshape(-1, features).mean(0)
      ra_var.value = m * ra_var.value + (1 - m) * var.reshape(-1, features).mean(0)
    return y.astype(self.dtype)


class WaveBlock(nn.Module):
  """Feature-band augmentation of BoT/D²LV (training only): in each chunk of
  `chunk` samples, one random horizontal band of round(band * H) rows is
  kept and every other row is multiplied by `factor` (one band per GPU
  replica of 32 in the original; chunk=1 draws one per sample). Needs the
  'wave' RNG stream."""
  band: float = 0.3
  factor: float = 1.5
  chunk: int = 32

  @nn.compact
  def __call__(self, x, train: bool):
    if not train:
      return x
    b, h = x.shape[0], x.shape[1]
    rows = int(round(self.band * h))
    chunk = self.chunk if b % self.chunk == 0 else 1
    start = jax.random.randint(self.make_rng("wave"), (b // chunk, 1), 0, h - rows + 1)
    y = jnp.arange(h)[None, :]
    mask = jnp.where((y >= start) & (y < start + rows), 1.0, self.factor)
    mask = jnp.repeat(mask, chunk, axis=0).astype(x.dtype)
    return x * mask[:, :, None, None]


# model.gate_feature -> the aux entry whose norm the loss and the gate read.
# gate_head: a separate small MLP on the pooled feature, behind a stop-gradient,
# so that only the norm-ratio loss trains it and the descriptor stays as it was
# (for a pretrained descriptor; `gate_head`).
GATE_FEATURES = {"projector": "projected", "pooled": "pooled", "descriptor": "descriptor",
                 "gate_head": "gate_head", "gate_trunk": "gate_head"}
# gate_feature="gate_trunk": the modules of the gate's own trunk are the
# trunk's names with this prefix (seeded from the same pretrained file).
GATE_TRUNK_PREFIX = "gate_trunk_"
HEADS = ("bot", "sscd")


def check_head(head: str, gate_feature: str):
  """ValueError for an unknown head or a gate feature the head lacks."""
  if head not in HEADS:
    raise ValueError(f"model.head must be one of {HEADS}, got {head!r}.")
  if gate_feature not in GATE_FEATURES or (head == "sscd" and gate_feature == "projector"):
    allowed = [g for g in GATE_FEATURES if head == "bot" or g != "projector"]
    raise ValueError(f"model.gate_feature must be one of {allowed} with model.head={head!r}, "
                     f"got {gate_feature!r}.")


def gate_head(pooled, dims):
  """The separate gate feature: Dense -> ReLU -> ... -> Dense over `dims` on
  a pooled feature. model.gate_feature="gate_head": the trunk's own pooled
  feature, whose gradient stops here, so that the gate learns from the
  norm-ratio loss alone and no gradient of it reaches the trunk or the
  descriptor. "gate_trunk": the pooled feature of the gate's own trunk
  (`GATE_TRUNK_PREFIX`), which that loss trains, while the descriptor's trunk
  gets none of it. The last layer has no ReLU so that its norm can go both
  ways."""
  h = pooled.astype(jnp.float32)
  for i, dim in enumerate(dims):
    h = nn.Dense(dim, name=f"gate_fc{i + 1}")(h)
    if i < len(dims) - 1:
      h = nn.relu(h)
  return h


def descriptor_head(pooled, *, head, projector_dims, descriptor_dim, gate_feature, norm, dtype,
                    gate_head_dims=(256, 64), gate_pooled=None):
  """The aux dict from the pooled trunk feature; called inside a module's
  compact __call__, so that the layers are that module's (top-level names).

  head="bot": projector `Dense -> BN -> LeakyReLU -> Dense -> BN(no bias)`
  (`projected`) and descriptor head `BN -> LeakyReLU -> Dense -> BN(no bias)`
  (`descriptor`), as BoT/D²LV. head="sscd": SSCD's `Dense` (`embed_fc`) from
  the pooled feature straight to the descriptor; `projected` is the same
  descriptor (the classifier's input). `descriptor` is never L2-normalised
  here (evaluation and the losses do it), so its norm can serve as the gate.
  gate_feature="gate_head" adds `gate_head` (`gate_head`, of `gate_head_dims`);
  "gate_trunk" the same on `gate_pooled`, the gate trunk's pooled feature.
  """
  if head == "sscd":
    d = nn.Dense(descriptor_dim, dtype=dtype, name="embed_fc")(pooled).astype(jnp.float32)
    aux = {"pooled": pooled, "projected": d, "descriptor": d}
  else:
    h = nn.Dense(projector_dims[0], dtype=dtype, name="proj_fc1")(pooled)
    h = nn.leaky_relu(norm(name="proj_bn1")(h), 0.2)
    h = nn.Dense(projector_dims[1], dtype=dtype, name="proj_fc2")(h)
    projected = norm(use_bias=False, name="proj_bn2")(h)
    d = nn.leaky_relu(norm(name="desc_bn1")(projected), 0.2)
    d = nn.Dense(descriptor_dim, dtype=dtype, name="desc_fc")(d)
    descriptor = norm(use_bias=False, name="desc_bn2")(d)
    aux = {"pooled": pooled, "projected": projected.astype(jnp.float32),
           "descriptor": descriptor.astype(jnp.float32)}
  if gate_feature == "gate_head":
    aux["gate_head"] = gate_head(jax.lax.stop_gradient(pooled), gate_head_dims)
  elif gate_feature == "gate_trunk":
    aux["gate_head"] = gate_head(gate_pooled, gate_head_dims)
  aux["gate_feature"] = aux[GATE_FEATURES[gate_feature]]
  return aux


def projected_dim(cfg) -> int:
  """The width of the `projected` output (the classifier's input)."""
  return cfg.descriptor_dim if cfg.head == "sscd" else cfg.projector_dims[1]


def make_norm(train: bool, bn_groups: int, momentum: float, dtype):
  """BatchNorm (ghost BatchNorm over `bn_groups` slices when > 1) with
  running statistics when not training."""
  if bn_groups > 1:
    return functools.partial(GhostBatchNorm, bn_groups, not train, momentum, 1e-5, dtype)
  return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=momentum,
                           epsilon=1e-5, dtype=dtype)


class CopyDetector(nn.Module):
  """Trunk + GeM + descriptor head (`descriptor_head`: BoT's projector and
  descriptor head, or SSCD's linear layer)."""
  variant: str = "r50"
  width: int = 64
  last_stride: int = 1
  projector_dims: Sequence[int] = (4096, 8192)
  descriptor_dim: int = 256
  gate_feature: str = "projector"  # or "pooled", "descriptor" (GATE_FEATURES).
  head: str = "bot"  # bot (projector + descriptor head) | sscd (Dense to the descriptor).
  gate_head_dims: Sequence[int] = (256, 64)  # With gate_feature="gate_head".
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9  # PyTorch's momentum 0.1.
  bn_groups: int = 1  # Ghost BatchNorm groups (4 mimics BoT's 4 GPUs).
  wave_block: bool = False  # WaveBlock after layer2 and layer3 (training only).
  wave_chunk: int = 32  # Samples sharing one WaveBlock band.
  small_conv_im2col: bool = False  # Small 3x3 convolutions as matrix products.
  conv_canonical_grad: bool = False  # Gradients as canonical convolutions (CPU loops).

  def setup(self):
    if self.variant not in VARIANTS:
      raise ValueError(f"Unknown model variant {self.variant!r}; "
                       f"expected one of {sorted(VARIANTS)}.")
    check_head(self.head, self.gate_feature)

  @nn.compact
  def __call__(self, images, train: bool = False):
    """images: [B, H, W, 3] float in ImageNet-normalised units."""
    norm = make_norm(train, self.bn_groups, self.bn_momentum, self.dtype)
    pooled = self._trunk(images, norm, train, "")
    gate_pooled = (self._trunk(images, norm, train, GATE_TRUNK_PREFIX)
                   if self.gate_feature == "gate_trunk" else None)
    return descriptor_head(pooled, head=self.head, projector_dims=self.projector_dims,
                           descriptor_dim=self.descriptor_dim,
                           gate_feature=self.gate_feature, norm=norm, dtype=self.dtype,
                           gate_head_dims=tuple(self.gate_head_dims), gate_pooled=gate_pooled)

  def _trunk(self, images, norm, train, prefix):
    """The trunk and GeM (their modules named with `prefix`), called from
    the compact __call__, so that the layers are this module's."""
    block_name, stages, stem = VARIANTS[self.variant]
    block = BasicBlock if block_name == "basic" else Bottleneck
    conv = functools.partial(Conv, dtype=self.dtype, im2col=self.small_conv_im2col,
                             canonical_grad=self.conv_canonical_grad)
    x = images.astype(self.dtype)
    if stem == "imagenet":
      x = conv(self.width, 7, 2, name=f"{prefix}conv1")(x)
      x = nn.relu(norm(name=f"{prefix}bn1")(x))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    else:
      x = conv(self.width, 3, 2, name=f"{prefix}conv1")(x)
      x = nn.relu(norm(name=f"{prefix}bn1")(x))
    for i, num_blocks in enumerate(stages):
      stage_stride = (1, 2, 2, self.last_stride)[i]
      for j in range(num_blocks):
        x = block(self.width * 2 ** i, stage_stride if j == 0 else 1, norm, conv,
                  name=f"{prefix}layer{i + 1}_{j}")(x)
      if self.wave_block and i in (1, 2):  # After layer2 and layer3, as BoT.
        x = WaveBlock(chunk=self.wave_chunk, name=f"{prefix}wave{i + 1}")(x, train)
    return GeM(name=f"{prefix}gem")(x)


class Classifier(nn.Module):
  """Bias-free per-identity classifier over the projector output; cosine
  (scaled) or linear logits. With `padded_classes` > num_classes the kernel
  has extra columns (so that the class axis splits evenly over devices)
  whose logits are pinned to -1e9: they take no probability."""
  num_classes: int
  cosine_scale: float | None = None  # None -> linear logits.
  dtype: Any = jnp.float32
  padded_classes: int = 0  # Kernel columns; 0 = num_classes.

  @nn.compact
  def __call__(self, x):
    columns = max(self.padded_classes, self.num_classes)
    w = self.param("kernel", nn.initializers.normal(0.001),
                   (x.shape[-1], columns), jnp.float32)
    if self.cosine_scale is None:
      logits = jnp.dot(x.astype(self.dtype), w.astype(self.dtype)).astype(jnp.float32)
    else:
      xn = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
      wn = w / jnp.maximum(jnp.linalg.norm(w, axis=0, keepdims=True), 1e-6)
      logits = self.cosine_scale * jnp.dot(xn.astype(self.dtype), wn.astype(self.dtype)
                                           ).astype(jnp.float32)
    if columns > self.num_classes:
      logits = jnp.where(jnp.arange(columns) < self.num_classes, logits, -1e9)
    return logits


def build(cfg) -> nn.Module:
  """Builds the model from `config.model`: a CopyDetector, or for
  variant "mnv4s" the MobileNetV4 Conv-S student (models/mobilenetv4.py)."""
  head = dict(projector_dims=tuple(cfg.projector_dims), descriptor_dim=cfg.descriptor_dim,
              gate_feature=cfg.gate_feature, head=cfg.head,
              gate_head_dims=tuple(cfg.gate_head_dims),
              dtype=jnp.dtype(cfg.dtype), bn_groups=cfg.bn_groups)
  if cfg.variant in MOBILENET_VARIANTS:
    from asl_jax.models import mobilenetv4  # It builds on this module's layers.
    return mobilenetv4.MobileNetV4(variant=cfg.variant, depthwise=cfg.depthwise, **head)
  return CopyDetector(
      variant=cfg.variant, width=cfg.width, last_stride=cfg.last_stride, **head,
      wave_block=cfg.wave_block, wave_chunk=cfg.wave_chunk,
      small_conv_im2col=on_cpu_if_auto(cfg.small_conv, "im2col"),
      conv_canonical_grad=on_cpu_if_auto(cfg.conv_grad, "canonical"))


def on_cpu_if_auto(setting: str, choice: str) -> bool:
  """model.small_conv (xla | im2col | auto) and model.conv_grad (xla |
  canonical | auto): whether `choice` is taken; auto takes it on the CPU
  backend."""
  if setting == "auto":
    return jax.default_backend() == "cpu"
  return setting == choice


def images_to_input(images: jax.Array) -> jax.Array:
  """uint8 [B, H, W, 3] -> float32 ImageNet-normalised."""
  mean = jnp.array([0.485, 0.456, 0.406]) * 255.0
  std = jnp.array([0.229, 0.224, 0.225]) * 255.0
  return (images.astype(jnp.float32) - mean) / std
