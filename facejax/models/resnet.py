"""ResNets in the torchvision / Keras layout (flax examples/imagenet style: one module, variants are partials).

Input `[B, H, W, 3]` -> globally pooled features `[B, F]`. `stride_in_1x1=True, conv_bias=True,
bn_eps=1.001e-5` gives Keras `ResNet50` (original v1); the defaults give torchvision `resnet50` (v1.5).
Padding is explicit and symmetric so strided convs match both frameworks exactly.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from facejax.models.common import Dtype, ModuleDef, pad, scaled


class BasicBlock(nn.Module):
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  stride_in_1x1: bool = False  # unused; keeps the block interface uniform

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides), padding=pad(3), name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.filters, (3, 3), padding=pad(3), name='conv2')(y)
    y = self.norm(name='bn2', scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), (self.strides, self.strides), name='downsample_conv')(residual)
      residual = self.norm(name='downsample_bn')(residual)
    return nn.relu(residual + y)


class BottleneckBlock(nn.Module):
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  stride_in_1x1: bool = False  # Keras ResNet50 (v1) strides the first 1x1; torchvision (v1.5) the 3x3

  @nn.compact
  def __call__(self, x):
    residual = x
    s1, s3 = ((self.strides, 1) if self.stride_in_1x1 else (1, self.strides))
    y = self.conv(self.filters, (1, 1), (s1, s1), name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.filters, (3, 3), (s3, s3), padding=pad(3), name='conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.conv(self.filters * 4, (1, 1), name='conv3')(y)
    y = self.norm(name='bn3', scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters * 4, (1, 1), (self.strides, self.strides), name='downsample_conv')(residual)
      residual = self.norm(name='downsample_bn')(residual)
    return nn.relu(residual + y)


class SpaceToDepthStem(nn.Module):
  """The 7x7 stride-2 stem conv (padding 3) computed as a 4x4 stride-1 conv on the 2x2 space-to-depth input.

  Same parameter ('kernel' [7, 7, C, F], 'bias' [F]) and the same outputs as `nn.Conv(F, (7, 7), (2, 2),
  padding=pad(7))` up to summation order: the kernel is zero-padded to 8x8 and regrouped to [4, 4, 4C, F].
  What changes is the layout: 4C = 12 input channels instead of 3, which GPU/TPU convolution units use far
  better (MLPerf's ResNet-50 layout for accelerators)."""
  features: int
  use_bias: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (7, 7, c, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,)) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    b, h, w = x.shape[:3]
    # Padding 3 as the 7x7/2 conv has, plus 1 at the end of an odd side: the padded sides are even.
    x = jnp.pad(x, ((0, 0), (3, 3 + h % 2), (3, 3 + w % 2), (0, 0)))
    hp, wp = x.shape[1] // 2, x.shape[2] // 2
    x = x.reshape(b, hp, 2, wp, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, 4 * c)
    k = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))  # tap 8 of each axis is zero
    k = k.reshape(4, 2, 4, 2, c, self.features).transpose(0, 2, 1, 3, 4, 5).reshape(4, 4, 4 * c, self.features)
    y = jax.lax.conv_general_dilated(x, k, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return y if bias is None else y + bias


class ResNet(nn.Module):
  stage_sizes: Sequence[int]
  block_cls: Any
  num_filters: int = 64
  width: float = 1.0
  stride_in_1x1: bool = False
  conv_bias: bool = False
  bn_eps: float = 1e-5
  stem_pool: bool = True  # small-input nets (demo) skip the stem max-pool
  bn_axis: str | None = None  # pmap axis for cross-device BatchNorm statistics
  stem_space_to_depth: bool = False  # the stem conv as SpaceToDepthStem (same parameters and outputs)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(nn.Conv, use_bias=self.conv_bias, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=self.bn_eps,
                             dtype=self.dtype, axis_name=self.bn_axis)
    f0 = scaled(self.num_filters, self.width)
    if self.stem_space_to_depth:
      x = SpaceToDepthStem(f0, self.conv_bias, self.dtype, name='conv1')(x.astype(self.dtype))
    else:
      x = conv(f0, (7, 7), (2, 2), padding=pad(7), name='conv1')(x.astype(self.dtype))
    x = nn.relu(norm(name='bn1')(x))
    if self.stem_pool:
      # Inputs are >= 0 after ReLU: zero pad == -inf pad.
      x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding=pad(3))
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        x = self.block_cls(f0 * 2**i, conv=conv, norm=norm, strides=2 if i > 0 and j == 0 else 1,
                           stride_in_1x1=self.stride_in_1x1, name=f'layer{i + 1}_{j}')(x)
    return jnp.mean(x, axis=(1, 2))


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
