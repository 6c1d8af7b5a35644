"""Heads and the two top-level model shapes.

- `FaceNet`: backbone -> embedding head (dropout -> dense -> BN) -> identity classifier: a dense softmax layer
  (the paper's), or with classifier_kind='cosine' the cosines between the normalised embedding and normalised class
  weights, times `cosine_scale` (the logits ArcFace's margin is applied to: `losses.arcface_logits`). Param tree
  `{'backbone', 'embedding', 'classifier'}`; transfer copies `backbone` from a pretrained `Classifier`.
- `Classifier`: backbone -> dense logits, the ImageNet (source-task) shape that converters produce.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from facejax.models.common import Dtype


def l2_normalize(x: jnp.ndarray, eps: float = 1e-10) -> jnp.ndarray:
  """[..., D] -> [..., D] unit-norm rows, computed in float32."""
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


class EmbeddingHead(nn.Module):
  embed_dim: int = 128
  dropout: float = 0.0
  bn_axis: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.embed_dim, dtype=self.dtype, name='dense')(x)
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name='bn',
                        axis_name=self.bn_axis)(x)


class CosineClassifier(nn.Module):
  """[B, D] -> [B, C] cosines between the L2-normalised rows and L2-normalised class weights (no bias)."""
  num_classes: int

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (x.shape[-1], self.num_classes), jnp.float32)
    return l2_normalize(x) @ (kernel / jnp.sqrt(jnp.maximum(jnp.sum(kernel * kernel, 0, keepdims=True), 1e-10)))


CLASSIFIERS = ('softmax', 'cosine')


class FaceNet(nn.Module):
  """`model(x, train)` -> logits `[B, num_classes]`; `model.embed(x)` -> `[B, D]` L2-normalised float32;
  `model.forward(x, train)` -> both, from one pass (what the trainer uses)."""
  backbone: nn.Module
  num_classes: int
  embed_dim: int = 128
  dropout: float = 0.0
  bn_axis: str | None = None
  dtype: Dtype = jnp.float32
  classifier_kind: str = 'softmax'  # CLASSIFIERS
  cosine_scale: float = 64.0  # classifier_kind='cosine': logits = cosine_scale * cos

  def setup(self):
    if self.classifier_kind not in CLASSIFIERS:
      raise ValueError(f'classifier={self.classifier_kind!r}: expected one of {CLASSIFIERS}')
    self.embedding = EmbeddingHead(self.embed_dim, self.dropout, self.bn_axis, self.dtype)
    if self.num_classes:
      self.classifier = (CosineClassifier(self.num_classes) if self.classifier_kind == 'cosine' else
                         nn.Dense(self.num_classes, dtype=self.dtype))

  def forward(self, x, train: bool = False) -> dict:
    raw = self.embedding(self.backbone(x, train=train), train=train)
    out = {'embedding': l2_normalize(raw), 'raw_embedding': raw.astype(jnp.float32)}
    if self.num_classes:
      logits = self.classifier(raw).astype(jnp.float32)
      out['logits'] = self.cosine_scale * logits if self.classifier_kind == 'cosine' else logits
    return out

  def __call__(self, x, train: bool = False):
    return self.forward(x, train)['logits']

  def embed(self, x, train: bool = False):
    return l2_normalize(self.embedding(self.backbone(x, train=train), train=train))


class Classifier(nn.Module):
  """Source-task (e.g. ImageNet) classifier: backbone features -> `classifier` dense logits."""
  backbone: nn.Module
  num_classes: int = 1000
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(self.num_classes, dtype=self.dtype, name='classifier')(self.backbone(x, train=train)).astype(
        jnp.float32)
