"""Shared building blocks: channel scaling and torch/Keras-compatible explicit padding."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn

ModuleDef = Callable[..., nn.Module]
Dtype = Any


def scaled(channels: int, width: float, minimum: int = 4) -> int:
  """Channel count after a width multiplier, kept >= `minimum`."""
  return max(minimum, int(round(channels * width)))


def pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Symmetric padding `k // 2` as torch/Keras ZeroPadding use it (flax 'SAME' pads stride-2 convs asymmetrically)."""
  return ((k // 2, k // 2), (k // 2, k // 2))
