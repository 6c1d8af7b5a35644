"""ResNets in the torchvision / Keras layout (flax examples/imagenet style: one module, variants are partials).

Input `[B, H, W, 3]` -> globally pooled features `[B, F]`. `stride_in_1x1=True, conv_bias=True,
bn_eps=1.001e-5` gives Keras `ResNet50` (original v1); the defaults give torchvision `resnet50` (v1.5).
Padding is explicit and symmetric so strided convs match both frameworks exactly.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
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
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(nn.Conv, use_bias=self.conv_bias, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=self.bn_eps,
                             dtype=self.dtype, axis_name=self.bn_axis)
    f0 = scaled(self.num_filters, self.width)
    x = conv(f0, (7, 7), (2, 2), padding=pad(7), name='conv1')(x.astype(self.dtype))
    x = nn.relu(norm(name='bn1')(x))
    if self.stem_pool:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pad(3))  # inputs are >= 0 after ReLU: zero pad == -inf pad
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        x = self.block_cls(f0 * 2**i, conv=conv, norm=norm, strides=2 if i > 0 and j == 0 else 1,
                           stride_in_1x1=self.stride_in_1x1, name=f'layer{i + 1}_{j}')(x)
    return jnp.mean(x, axis=(1, 2))


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
