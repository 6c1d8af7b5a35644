"""Every source of verification pairs, as a `VerificationPairs` set (facejax.data.lfw).

  make_pairs(name, **kwargs)   by name, for periodic validation while training (config.val.source/kwargs)
  load_pairs(config.data, S)   launch.evaluate's config.data (source 'auto' | 'lfw' | 'synthetic_pairs'): the pairs
                               over only the images they use, and a description for the reports
"""
from __future__ import annotations

import os

import ml_collections
import numpy as np

from facejax.data.lfw import VerificationPairs, lfw_pairs
from facejax.data.synthetic import synthetic_pairs

PAIRS = ('synthetic', 'lfw')


def make_pairs(name: str, /, **kwargs) -> VerificationPairs:
  """Verification pairs by name:
    'synthetic' (or 'synthetic_pairs')  synthetic_pairs(num_identities, images_per_identity, image_size, difficulty,
                                        seed, identity_offset, num_folds, pairs_per_fold)
    'lfw'                               lfw_pairs(lfw_dir, pairs_path=<lfw_dir>/pairs.txt)
  """
  if name in ('synthetic', 'synthetic_pairs'):
    return synthetic_pairs(**kwargs)
  if name == 'lfw':
    lfw_dir = kwargs['lfw_dir']
    return lfw_pairs(lfw_dir, kwargs.get('pairs_path') or os.path.join(lfw_dir, 'pairs.txt'))
  raise ValueError(f'unknown pairs source {name!r}; expected one of: {", ".join(PAIRS)}')


SOURCES = ('auto', 'lfw', 'synthetic_pairs')


class _Subset:
  """images[k] -> base[indices[k]]: only the images some pair uses."""

  def __init__(self, base, indices: np.ndarray):
    self.base, self.indices = base, indices

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, k):
    return self.base[int(self.indices[int(k)])]


def needed_images(pairs):
  """VerificationPairs -> the same pairs over only the images they use (each once, in index order)."""
  used = np.unique(np.concatenate([pairs.left, pairs.right]))
  if used.size == len(pairs.images):
    return pairs
  remap = np.full(len(pairs.images), -1, np.int64)
  remap[used] = np.arange(used.size)
  return VerificationPairs(images=_Subset(pairs.images, used), names=[pairs.names[k] for k in used],
                           left=remap[pairs.left].astype(np.int32), right=remap[pairs.right].astype(np.int32),
                           issame=pairs.issame, fold=pairs.fold)


def resolve_source(data: ml_collections.ConfigDict) -> str:
  """config.data.source, with 'auto' -> 'lfw' when data.lfw_dir is set, else 'synthetic_pairs'."""
  if data.source not in SOURCES:
    raise ValueError(f'config.data.source={data.source!r}: expected one of {SOURCES}')
  if data.source == 'auto':
    return 'lfw' if data.lfw_dir else 'synthetic_pairs'
  return data.source


def load_pairs(data: ml_collections.ConfigDict, image_size: int):
  """config.data -> (VerificationPairs, description dict for the reports)."""
  source = resolve_source(data)
  if source == 'lfw':
    if not data.lfw_dir:
      raise ValueError('config.data.source=lfw needs config.data.lfw_dir (the folder of <Name>/<Name>_0001.jpg)')
    pairs_path = data.pairs or os.path.join(data.lfw_dir, 'pairs.txt')
    if not os.path.isfile(pairs_path):
      raise FileNotFoundError(f'config.data.pairs={pairs_path}: no such file (expected LFW pairs.txt, View 2)')
    pairs = lfw_pairs(data.lfw_dir, pairs_path)
    described = {'source': 'lfw', 'lfw_dir': os.path.abspath(data.lfw_dir), 'pairs': os.path.abspath(pairs_path)}
  else:
    kwargs = data.synthetic.to_dict()
    kwargs['image_size'] = kwargs.get('image_size') or image_size
    pairs = synthetic_pairs(**kwargs)
    described = {'source': 'synthetic_pairs', **kwargs}
  return needed_images(pairs), described
