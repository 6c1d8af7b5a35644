"""VGG backbones: the original VGG-16 (with fc6/fc7 or global pooling) and thinner paper-style students.

Input `[B, H, W, 3]` -> features `[B, F]`: fc7 output for the fc variant, global-average-pooled last conv
otherwise. Parameter names follow the VGG paper (conv{stage}_{i}, fc6, fc7) so converters can map Keras
(`block1_conv1`, `fc1`) and torchvision (`features.0`, `classifier.0`) tensors onto them.
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from facejax.models.common import Dtype, pad, scaled


class VGG(nn.Module):
  stage_sizes: Sequence[int] = (2, 2, 3, 3, 3)
  widths: Sequence[int] = (64, 128, 256, 512, 512)
  fc_dims: Sequence[int] = (4096, 4096)  # () -> global average pooling instead of fc6/fc7
  width: float = 1.0
  norm: bool = False  # BatchNorm after every conv (small demo/student nets train faster with it)
  dropout: float = 0.5  # after each fc layer, as in the original
  bn_axis: str | None = None  # pmap axis for cross-device BatchNorm statistics
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding=pad(3), dtype=self.dtype, use_bias=not self.norm)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                             axis_name=self.bn_axis)
    x = x.astype(self.dtype)
    for s, (n, w) in enumerate(zip(self.stage_sizes, self.widths), start=1):
      for i in range(1, n + 1):
        x = conv(scaled(w, self.width), name=f'conv{s}_{i}')(x)
        if self.norm:
          x = norm(name=f'bn{s}_{i}')(x)
        x = nn.relu(x)
      x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))
    if not self.fc_dims:
      return jnp.mean(x, axis=(1, 2))
    x = x.reshape(x.shape[0], -1)  # NHWC flatten (Keras order; torch NCHW weights are permuted on import)
    for j, d in enumerate(self.fc_dims):
      x = nn.relu(nn.Dense(scaled(d, self.width), dtype=self.dtype, name=f'fc{6 + j}')(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x


VGG16 = functools.partial(VGG)
VGG16GAP = functools.partial(VGG, fc_dims=())
