"""Compact students. The thin VGG and thin ResNet students are partials of `VGG`/`ResNet` (see registry);
this file holds MobileFaceNet (Chen et al. 2018): depthwise-separable inverted residuals and a global
depthwise conv (GDConv) instead of average pooling, ~1M params at 112x112.

Input `[B, H, W, 3]` -> features `[B, 512 * width]`.
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from facejax.models.common import Dtype, pad, scaled

# (expansion t, output channels c, repeats n, first stride s), as in the MobileFaceNet paper.
MOBILEFACENET_BLOCKS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class ConvBN(nn.Module):
  features: int
  kernel: int = 1
  strides: int = 1
  groups: int = 1
  act: bool = True
  padding: str | tuple = 'pad'
  bn_axis: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    padding = pad(self.kernel) if self.padding == 'pad' else self.padding
    x = nn.Conv(self.features, (self.kernel, self.kernel), (self.strides, self.strides), padding=padding,
                feature_group_count=self.groups, use_bias=False, dtype=self.dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                     axis_name=self.bn_axis)(x)
    return nn.PReLU(param_dtype=jnp.float32)(x) if self.act else x


class InvertedResidual(nn.Module):
  features: int
  expansion: int
  strides: int
  bn_axis: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    hidden = x.shape[-1] * self.expansion
    y = ConvBN(hidden, 1, bn_axis=self.bn_axis, dtype=self.dtype)(x, train)
    y = ConvBN(hidden, 3, self.strides, groups=hidden, bn_axis=self.bn_axis, dtype=self.dtype)(y, train)
    y = ConvBN(self.features, 1, act=False, bn_axis=self.bn_axis, dtype=self.dtype)(y, train)
    return x + y if self.strides == 1 and x.shape[-1] == self.features else y


class MobileFaceNet(nn.Module):
  blocks: Sequence[tuple[int, int, int, int]] = MOBILEFACENET_BLOCKS
  width: float = 1.0
  out_dim: int = 512
  bn_axis: str | None = None  # pmap axis for cross-device BatchNorm statistics
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    c0 = scaled(64, self.width)
    cbn = functools.partial(ConvBN, bn_axis=self.bn_axis, dtype=self.dtype)
    x = cbn(c0, 3, 2)(x.astype(self.dtype), train)
    x = cbn(c0, 3, 1, groups=c0)(x, train)
    for t, c, n, s in self.blocks:
      for i in range(n):
        x = InvertedResidual(scaled(c, self.width), t, s if i == 0 else 1, self.bn_axis, self.dtype)(x, train)
    d = scaled(self.out_dim, self.width)
    x = cbn(d, 1)(x, train)
    # GDConv: a depthwise conv whose kernel covers the whole (input-size dependent) feature map.
    h, w = x.shape[1], x.shape[2]
    x = nn.Conv(d, (h, w), padding='VALID', feature_group_count=d, use_bias=False, dtype=self.dtype, name='gdconv')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                     axis_name=self.bn_axis)(x)
    return x.reshape(x.shape[0], -1)


MobileFaceNet112 = functools.partial(MobileFaceNet)
