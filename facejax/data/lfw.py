"""Verification pairs: the container shared by LFW (pairs.txt, View 2) and the synthetic pairs."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class VerificationPairs:
  """P pairs over a random-access image collection.

  images: len(images), images[k] -> uint8 [H, W, 3] RGB (any H, W). names: one per image.
  left, right: int32 [P] indices into images; issame: bool [P]; fold: int32 [P] in [0, num_folds), consecutive
  blocks as in LFW pairs.txt.
  """
  images: Any
  names: list[str]
  left: np.ndarray
  right: np.ndarray
  issame: np.ndarray
  fold: np.ndarray

  def __len__(self) -> int:
    return len(self.issame)

  @property
  def num_folds(self) -> int:
    return int(self.fold.max()) + 1 if len(self.fold) else 0
