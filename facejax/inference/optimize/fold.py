"""BN folding. A BatchNorm applied to a conv/dense output becomes part of that layer:
`K' = K * g / sqrt(v + eps)`, `b' = (b - m) * g / sqrt(v + eps) + beta` (computed in float64). A BatchNorm that
follows anything else becomes one multiply-add. (Assumes the conv output feeds only that BN, as in every
registry model; the tests compare each registry model against the reference forward.)
"""
from __future__ import annotations

import numpy as np

from facejax.inference.optimize.trace import TracedLayer, trace_layers


def _get(tree, path: str):
  for k in path.split('/'):
    tree = tree[k]
  return tree


def _bn_affine(entry: TracedLayer, variables) -> tuple[np.ndarray, np.ndarray]:
  """BatchNorm (running statistics) as y = x * scale + shift, float64."""
  bn = entry.module
  stats = _get(variables['batch_stats'], entry.path)
  params = _get(variables['params'], entry.path) if (bn.use_scale or bn.use_bias) else {}
  mean = np.asarray(stats['mean'], np.float64)
  var = np.asarray(stats['var'], np.float64)
  gamma = np.asarray(params['scale'], np.float64) if bn.use_scale else 1.0
  beta = np.asarray(params['bias'], np.float64) if bn.use_bias else 0.0
  scale = gamma / np.sqrt(var + bn.epsilon)
  return scale * np.ones_like(mean), beta - mean * scale


def fold_batch_norm(model, variables, image_size: int, traced: dict[str, TracedLayer] | None = None) -> dict:
  """-> {'layers': {path: {'kernel', 'bias'}} (BN folded, float32), 'affine': {path: {'scale', 'shift'}}
  for BNs with nothing to fold into, 'rest': variables minus every conv/dense/bn leaf (e.g. PReLU slopes)}."""
  traced = traced if traced is not None else trace_layers(model, variables, image_size)
  layers, affine = {}, {}
  for path, entry in traced.items():
    if entry.kind == 'bn':
      if entry.fold_into is None:
        scale, shift = _bn_affine(entry, variables)
        affine[path] = {'scale': scale.astype(np.float32), 'shift': shift.astype(np.float32)}
      continue
    p = _get(variables['params'], path)
    kernel = np.asarray(p['kernel'], np.float64)
    bias = np.asarray(p['bias'], np.float64) if 'bias' in p else np.zeros(kernel.shape[-1])
    if entry.folded_bn is not None:
      scale, shift = _bn_affine(traced[entry.folded_bn], variables)
      kernel = kernel * scale  # output features are the last kernel axis for Conv (HWIO) and Dense (IO)
      bias = bias * scale + shift
    layers[path] = {'kernel': kernel.astype(np.float32), 'bias': bias.astype(np.float32)}
  rest = _prune(variables, {p for p in traced})
  return {'layers': layers, 'affine': affine, 'rest': rest}


def _prune(variables, paths: set[str]) -> dict:
  """Copy of `variables` without the subtrees at `paths` (in any collection)."""

  def walk(tree, prefix):
    out = {}
    for k, v in tree.items():
      p = f'{prefix}/{k}' if prefix else k
      if p in paths:
        continue
      out[k] = walk(v, p) if isinstance(v, dict) or hasattr(v, 'items') else v
    return out

  return {c: walk(dict(t), '') for c, t in dict(variables).items()}
