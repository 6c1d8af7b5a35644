"""Pretrained source-task classifier -> face model: copy the backbone, keep the new heads."""
from __future__ import annotations

import numpy as np

from facejax.convert.plan import ConversionReport, _listing, flatten, unflatten

COLLECTIONS = ('params', 'batch_stats')


def transfer_backbone(face_variables: dict, pretrained_variables: dict,
                      heads: bool = False) -> tuple[dict, ConversionReport]:
  """Copies `pretrained_variables[col]['backbone']` (params and batch_stats) into a FaceNet variable tree.

  heads=True also copies the embedding and classifier tensors the source has with the same shape (continuing a
  face model, e.g. Siamese training from a distilled student); the others stay as initialised.

  face_variables: {'params': {'backbone', 'embedding', 'classifier'}, 'batch_stats': {...}} (e.g. fresh init).
  pretrained_variables: a `Classifier` tree from `load_pretrained` / `load_converted`.
  Returns (new variables, report): the source classifier (and any source tensor outside the face backbone,
  e.g. fc6/fc7 when transferring into `vgg16_gap`) is skipped; embedding and identity heads stay as initialised.
  Raises ValueError naming the tensor path and both shapes on a mismatch, and listing every face-backbone
  tensor the pretrained tree lacks: never a partial load.
  """
  new, report = {}, ConversionReport()
  missing = []
  cols = sorted(set(face_variables) | set(pretrained_variables), key=lambda c: (c != 'params', c))
  for col in cols:
    dst = flatten(dict(face_variables.get(col, {})))
    src = flatten(dict(pretrained_variables.get(col, {})))
    out = dict(dst)
    for path, target in dst.items():
      full = f'{col}/{path}'
      if not path.startswith('backbone/'):
        if heads and path in src and tuple(np.shape(src[path])) == tuple(np.shape(target)):
          out[path] = np.asarray(src[path], dtype=getattr(target, 'dtype', np.float32))
          report.loaded.append((full, full, tuple(np.shape(target))))
        else:
          report.initialised.append((full, tuple(np.shape(target)), 'not part of the backbone: kept as initialised'))
        continue
      if path not in src:
        missing.append(f'{full} {list(np.shape(target))}')
        continue
      value = src[path]
      if tuple(np.shape(value)) != tuple(np.shape(target)):
        raise ValueError(f'transfer_backbone: pretrained {full} has shape {list(np.shape(value))}, the face model '
                         f'expects {list(np.shape(target))}')
      out[path] = np.asarray(value, dtype=getattr(target, 'dtype', np.float32))
      report.loaded.append((full, full, tuple(np.shape(target))))
    for path in src:
      if heads and path in dst and tuple(np.shape(src[path])) == tuple(np.shape(dst[path])):
        continue
      if not path.startswith('backbone/'):
        report.skipped.append((f'{col}/{path}', 'source-task head, replaced by the face heads'))
      elif path not in dst:
        report.skipped.append((f'{col}/{path}', 'the face backbone has no such tensor'))
    if col in face_variables:
      new[col] = unflatten(out)
  if missing:
    raise ValueError(f'transfer_backbone: pretrained weights lack tensors of the face backbone: {_listing(missing)}')
  if not report.loaded:
    raise ValueError('transfer_backbone: the face variables have no backbone subtree to fill')
  return new, report
