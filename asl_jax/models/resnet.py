"""ResNet family with GeM pooling, the BoT projector and a descriptor head.

As in the BoT/D²LV baselines (`../shared/docs/method.md` §3.1): a ResNet
trunk (layer4 stride configurable, 1 in the paper), GeM pooling with a
learnable exponent, a projector `Dense -> BN -> LeakyReLU -> Dense -> BN(no
bias)` whose output is ASL's gate feature, and a descriptor head
`BN -> LeakyReLU -> Dense -> BN(no bias)` whose L2-normalised output is used
for retrieval. Intermediates come back in an aux dict.

Variants are strings: "r18", "r34", "r50", "r101", "r152" and "tiny" (a
small basic-block ResNet for CPU demos and tests).
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# (block, blocks per stage, stem: "imagenet" 7x7/2 + maxpool or "small" 3x3/2).
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
  dtype: Any

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    y = conv(self.filters, (3, 3), self.strides, padding=1, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = conv(self.filters, (3, 3), padding=1, name="conv2")(y)
    y = self.norm(name="bn2", scale_init=nn.initializers.zeros)(y)
    if x.shape != y.shape:
      x = conv(self.filters, (1, 1), self.strides, name="downsample_conv")(x)
      x = self.norm(name="downsample_bn")(x)
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  filters: int
  strides: int
  norm: Any
  dtype: Any

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    y = nn.relu(self.norm(name="bn1")(conv(self.filters, (1, 1), name="conv1")(x)))
    # torchvision ResNet v1.5: the stride sits on the 3x3 convolution.
    y = conv(self.filters, (3, 3), self.strides, padding=1, name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = conv(self.filters * 4, (1, 1), name="conv3")(y)
    y = self.norm(name="bn3", scale_init=nn.initializers.zeros)(y)
    if x.shape != y.shape:
      x = conv(self.filters * 4, (1, 1), self.strides, name="downsample_conv")(x)
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


class CopyDetector(nn.Module):
  """Trunk + GeM + projector (gate feature) + descriptor head."""
  variant: str = "r50"
  width: int = 64
  last_stride: int = 1
  projector_dims: Sequence[int] = (4096, 8192)
  descriptor_dim: int = 256
  gate_feature: str = "projector"  # or "pooled"
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9  # PyTorch's momentum 0.1.

  def setup(self):
    if self.variant not in VARIANTS:
      raise ValueError(f"Unknown model variant {self.variant!r}; "
                       f"expected one of {sorted(VARIANTS)}.")
    if self.gate_feature not in ("projector", "pooled"):
      raise ValueError(f"model.gate_feature must be 'projector' or 'pooled', "
                       f"got {self.gate_feature!r}.")

  @nn.compact
  def __call__(self, images, train: bool = False):
    """images: [B, H, W, 3] float in ImageNet-normalised units."""
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=1e-5,
                             dtype=self.dtype)
    block_name, stages, stem = VARIANTS[self.variant]
    block = BasicBlock if block_name == "basic" else Bottleneck
    x = images.astype(self.dtype)
    if stem == "imagenet":
      x = nn.Conv(self.width, (7, 7), 2, padding=3, use_bias=False,
                  dtype=self.dtype, name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    else:
      x = nn.Conv(self.width, (3, 3), 2, padding=1, use_bias=False,
                  dtype=self.dtype, name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x))
    for i, num_blocks in enumerate(stages):
      stage_stride = (1, 2, 2, self.last_stride)[i]
      for j in range(num_blocks):
        x = block(self.width * 2 ** i, stage_stride if j == 0 else 1, norm,
                  self.dtype, name=f"layer{i + 1}_{j}")(x)
    pooled = GeM(name="gem")(x)
    h = nn.Dense(self.projector_dims[0], dtype=self.dtype, name="proj_fc1")(pooled)
    h = nn.leaky_relu(norm(name="proj_bn1")(h), 0.2)
    h = nn.Dense(self.projector_dims[1], dtype=self.dtype, name="proj_fc2")(h)
    projected = norm(use_bias=False, name="proj_bn2")(h)
    d = nn.leaky_relu(norm(name="desc_bn1")(projected), 0.2)
    d = nn.Dense(self.descriptor_dim, dtype=self.dtype, name="desc_fc")(d)
    descriptor = norm(use_bias=False, name="desc_bn2")(d)
    aux = {"pooled": pooled, "projected": projected.astype(jnp.float32),
           "descriptor": descriptor.astype(jnp.float32)}
    aux["gate_feature"] = aux["projected" if self.gate_feature == "projector"
                              else "pooled"]
    return aux


class Classifier(nn.Module):
  """Bias-free per-identity classifier over the projector output; cosine
  (scaled) or linear logits."""
  num_classes: int
  cosine_scale: float | None = None  # None -> linear logits.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    w = self.param("kernel", nn.initializers.normal(0.001),
                   (x.shape[-1], self.num_classes), jnp.float32)
    if self.cosine_scale is None:
      return jnp.dot(x.astype(self.dtype), w.astype(self.dtype)).astype(jnp.float32)
    xn = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
    wn = w / jnp.maximum(jnp.linalg.norm(w, axis=0, keepdims=True), 1e-6)
    return self.cosine_scale * jnp.dot(xn.astype(self.dtype), wn.astype(self.dtype)
                                       ).astype(jnp.float32)


def build(cfg) -> CopyDetector:
  """Builds the model from `config.model`."""
  return CopyDetector(
      variant=cfg.variant, width=cfg.width, last_stride=cfg.last_stride,
      projector_dims=tuple(cfg.projector_dims),
      descriptor_dim=cfg.descriptor_dim, gate_feature=cfg.gate_feature,
      dtype=jnp.dtype(cfg.dtype))


def images_to_input(images: jax.Array) -> jax.Array:
  """uint8 [B, H, W, 3] -> float32 ImageNet-normalised."""
  mean = jnp.array([0.485, 0.456, 0.406]) * 255.0
  std = jnp.array([0.229, 0.224, 0.225]) * 255.0
  return (images.astype(jnp.float32) - mean) / std
