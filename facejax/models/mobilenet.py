"""Inverted-residual ImageNet nets: MobileNetV2 (torchvision layout) and EfficientNet-Lite0/1/2 (TF, as
EfficientNet-Lite-PyTorch ports it). One module, variants are partials (flax examples/imagenet style).

Input `[B, H, W, 3]` -> globally pooled features `[B, head]` (1280 for all four ImageNet variants).
A block is expand 1x1 -> BN -> ReLU6 -> depthwise kxk -> BN -> ReLU6 -> project 1x1 -> BN (+ input when the
shape allows). The two families differ in:
- padding: torchvision pads `k // 2` on every side; the EfficientNet-Lite checkpoints come from TF and use TF
  'SAME' (a stride-2 conv on an even side pads one pixel at the end only), which flax's 'SAME' is;
- BatchNorm epsilon: 1e-5 (torch) vs 1e-3 (TF);
- scaling: MobileNetV2's width multiplier also scales the stem (and the head above 1.0); EfficientNet-Lite
  fixes the stem (32), the head (1280) and the repeats of the first and last stage (Lite has no
  squeeze-excite and ReLU6 instead of swish, for integer quantization).

Depthwise convs are `nn.Conv(feature_group_count=C)` (the parameter tree converters and the inference rewrite
know) computed by `depthwise_taps` by default: k*k shifted multiply-adds, which XLA's CPU backend runs far faster
than its grouped convolution (same process, 2 loaded Xeon cores, 112 px: MobileNetV2's training step at batch 64
16.0 -> 5.0 s; its forward 28 -> 4.5 ms at batch 1, 1.7 -> 0.49 s at 64; EfficientNet-Lite0's forward 37 -> 4.8 ms
and 2.9 -> 0.51 s). `depthwise='xla'` keeps lax.conv_general_dilated (accelerators: not measured here).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from facejax.models.common import Dtype, ModuleDef, pad

# (expansion t, output channels c, repeats n, first stride s, kernel k).
MOBILENET_V2_BLOCKS = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 32, 3, 2, 3), (6, 64, 4, 2, 3), (6, 96, 3, 1, 3),
                       (6, 160, 3, 2, 3), (6, 320, 1, 1, 3))
# EfficientNet-B0's stages (efficientnet_builder.py), which the Lite nets scale without squeeze-excite.
EFFICIENTNET_LITE_BLOCKS = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3),
                            (6, 112, 3, 1, 5), (6, 192, 4, 2, 5), (6, 320, 1, 1, 3))


def round_channels(channels: float, divisor: int = 8) -> int:
  """torchvision's `_make_divisible` = TF EfficientNet's `round_filters`: the nearest multiple of `divisor`,
  never more than 10% below `channels`."""
  rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * channels else rounded


def depthwise_taps(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, precision=None):
  """`lax.conv_general_dilated` for a depthwise NHWC conv (`rhs` [kh, kw, 1, C], groups = C, no dilation) as a sum
  of kh * kw strided slices times a per-channel weight: the same values (float32: to rounding), and a gradient
  made of elementwise products and reductions, which XLA fuses on CPU. `padding`: 'SAME' | 'VALID' | pairs."""
  kh, kw, one, c = rhs.shape
  if one != 1 or feature_group_count != c or lhs.shape[-1] != c:
    raise ValueError(f'depthwise_taps: expected a depthwise kernel [kh, kw, 1, {lhs.shape[-1]}] with '
                     f'feature_group_count={lhs.shape[-1]}, got {list(rhs.shape)} and {feature_group_count}')
  if any(d is not None and any(v != 1 for v in d) for d in (lhs_dilation, rhs_dilation)):
    raise ValueError('depthwise_taps: dilation is not supported')
  sh, sw = window_strides
  pads = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), (sh, sw), padding) if isinstance(padding, str) else padding
  x = jnp.pad(lhs, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  h, w = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  acc = jnp.promote_types(lhs.dtype, jnp.float32)  # bf16 inputs: sum the taps in float32, as convolutions do
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = x[:, i:i + (h - 1) * sh + 1:sh, j:j + (w - 1) * sw + 1:sw, :].astype(acc) * rhs[i, j, 0].astype(acc)
      out = tap if out is None else out + tap
  return out.astype(jnp.result_type(lhs, rhs))


class MBConv(nn.Module):
  """Inverted residual: [B, H, W, C] -> [B, H / strides, W / strides, features]."""
  features: int
  expansion: int
  kernel: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  same_padding: bool = False  # TF 'SAME' instead of symmetric k // 2
  depthwise: str = 'taps'  # 'taps' (depthwise_taps) | 'xla' (grouped lax convolution)

  @nn.compact
  def __call__(self, x):
    hidden = x.shape[-1] * self.expansion
    y = x
    if self.expansion != 1:
      y = nn.relu6(self.norm(name='expand_bn')(self.conv(hidden, (1, 1), name='expand_conv')(y)))
    padding = 'SAME' if self.same_padding else pad(self.kernel)
    if self.depthwise not in ('taps', 'xla'):
      raise ValueError(f"depthwise={self.depthwise!r}; expected 'taps' or 'xla'")
    taps = {'conv_general_dilated': depthwise_taps} if self.depthwise == 'taps' else {}
    y = self.conv(hidden, (self.kernel, self.kernel), (self.strides, self.strides), padding=padding,
                  feature_group_count=hidden, name='dw_conv', **taps)(y)
    y = nn.relu6(self.norm(name='dw_bn')(y))
    y = self.norm(name='project_bn')(self.conv(self.features, (1, 1), name='project_conv')(y))
    return x + y if self.strides == 1 and x.shape[-1] == self.features else y


class MobileNet(nn.Module):
  blocks: Sequence[tuple[int, int, int, int, int]]  # (t, c, n, s, k) per stage
  width: float = 1.0  # channel multiplier (rounded to multiples of 8)
  depth: float = 1.0  # repeat multiplier (ceil), EfficientNet's compound scaling
  stem: int = 32
  head: int = 1280
  fixed_stem_head: bool = False  # EfficientNet-Lite: width/depth leave the stem, head, first and last stage
  same_padding: bool = False  # TF 'SAME' padding (EfficientNet-Lite's TF checkpoints)
  bn_eps: float = 1e-5
  depthwise: str = 'taps'  # how depthwise convs compute: 'taps' (fast CPU backward) | 'xla'
  bn_axis: str | None = None  # pmap axis for cross-device BatchNorm statistics
  dtype: Dtype = jnp.float32

  def block_specs(self) -> list[tuple[int, int, int, int]]:
    """(expansion, output channels, kernel, stride) of each block, in order (what converters map onto)."""
    specs = []
    for stage, (t, c, n, s, k) in enumerate(self.blocks):
      fixed = self.fixed_stem_head and stage in (0, len(self.blocks) - 1)
      for j in range(n if fixed else math.ceil(n * self.depth)):
        specs.append((t, round_channels(c * self.width), k, s if j == 0 else 1))
    return specs

  def stem_head(self) -> tuple[int, int]:
    """(stem channels, head channels) at this width."""
    if self.fixed_stem_head:
      return self.stem, self.head
    return round_channels(self.stem * self.width), round_channels(self.head * max(1.0, self.width))

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=self.bn_eps,
                             dtype=self.dtype, axis_name=self.bn_axis)
    stem, head = self.stem_head()
    x = conv(stem, (3, 3), (2, 2), padding='SAME' if self.same_padding else pad(3), name='stem_conv')(
        x.astype(self.dtype))
    x = nn.relu6(norm(name='stem_bn')(x))
    for i, (t, c, k, s) in enumerate(self.block_specs()):
      x = MBConv(c, t, k, s, conv, norm, self.same_padding, self.depthwise, name=f'block{i}')(x)
    x = nn.relu6(norm(name='head_bn')(conv(head, (1, 1), name='head_conv')(x)))
    return jnp.mean(x, axis=(1, 2))


MobileNetV2 = functools.partial(MobileNet, blocks=MOBILENET_V2_BLOCKS)
# EfficientNet-Lite0/1/2: (width, depth) (1.0, 1.0), (1.0, 1.1), (1.1, 1.2); ImageNet at 224/240/260 px.
EfficientNetLite = functools.partial(MobileNet, blocks=EFFICIENTNET_LITE_BLOCKS, fixed_stem_head=True,
                                     same_padding=True, bn_eps=1e-3)
EfficientNetLite0 = EfficientNetLite
EfficientNetLite1 = functools.partial(EfficientNetLite, depth=1.1)
EfficientNetLite2 = functools.partial(EfficientNetLite, width=1.1, depth=1.2)
