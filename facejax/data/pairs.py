"""Every source of verification pairs, as a `VerificationPairs` set (facejax.data.lfw), configured one way:

  pairs_config(**synthetic)  the pair-set config: source 'auto' | 'lfw' | 'synthetic_pairs', lfw_dir, pairs,
                             synthetic (synthetic_pairs' kwargs). A trainer's periodic validation (config.val)
                             and launch.evaluate / the pipeline (config.data of configs/lfw_eval.py) both use it.
  load_pairs(cfg, S)         -> the pairs over only the images they use, and a description for the reports
"""
from __future__ import annotations

import os

import ml_collections
import numpy as np

from facejax.data.lfw import VerificationPairs, lfw_pairs
from facejax.data.synthetic import synthetic_pairs

SOURCES = ('auto', 'lfw', 'synthetic_pairs')


def pairs_config(**synthetic) -> ml_collections.ConfigDict:
  """A pair set. 'auto' is 'lfw' when lfw_dir is set, else the synthetic pairs (so a bare config runs anywhere).
  synthetic: synthetic_pairs' kwargs; image_size 0 (or absent) renders at the model's input size."""
  return ml_collections.ConfigDict(dict(
      source='auto',
      lfw_dir='',  # <lfw_dir>/<Name>/<Name>_0001.jpg (plain, funneled or deep-funneled tree)
      pairs='',  # pairs.txt (View 2: 10 folds of 300 matched + 300 mismatched pairs); '' -> <lfw_dir>/pairs.txt
      synthetic=ml_collections.ConfigDict(synthetic)))


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


def resolve_source(data: ml_collections.ConfigDict, where: str = 'config.data') -> str:
  """A pairs_config's source, with 'auto' -> 'lfw' when lfw_dir is set, else 'synthetic_pairs'. `where` names
  the config field in errors (config.data for launch.evaluate, config.val for a trainer)."""
  if data.source not in SOURCES:
    raise ValueError(f'{where}.source={data.source!r}: expected one of {SOURCES}')
  if data.source == 'auto':
    return 'lfw' if data.lfw_dir else 'synthetic_pairs'
  return data.source


def load_pairs(data: ml_collections.ConfigDict, image_size: int, where: str = 'config.data'):
  """A pairs_config -> (VerificationPairs, description dict for the reports)."""
  source = resolve_source(data, where)
  if source == 'lfw':
    if not data.lfw_dir:
      raise ValueError(f'{where}.source=lfw needs {where}.lfw_dir (the folder of <Name>/<Name>_0001.jpg)')
    pairs_path = data.pairs or os.path.join(data.lfw_dir, 'pairs.txt')
    if not os.path.isfile(pairs_path):
      raise FileNotFoundError(f'{where}.pairs={pairs_path}: no such file (expected LFW pairs.txt, View 2)')
    pairs = lfw_pairs(data.lfw_dir, pairs_path)
    described = {'source': 'lfw', 'lfw_dir': os.path.abspath(data.lfw_dir), 'pairs': os.path.abspath(pairs_path)}
  else:
    kwargs = data.synthetic.to_dict()
    kwargs['image_size'] = kwargs.get('image_size') or image_size
    pairs = synthetic_pairs(**kwargs)
    described = {'source': 'synthetic_pairs', **kwargs}
  return needed_images(pairs), described
