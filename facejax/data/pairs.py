"""Every source of verification pairs, as a `VerificationPairs` set (facejax.data.lfw), configured one way:

  pairs_config(**synthetic)  the pair-set config: source 'auto' | 'lfw' | 'synthetic_pairs', lfw_dir, pairs,
                             synthetic (synthetic_pairs' kwargs). A trainer's periodic validation (config.val)
                             and launch.evaluate / the pipeline (config.data of configs/lfw_eval.py) both use it.
  load_pairs(cfg, S)         -> the pairs over only the images they use, and a description for the reports
  holdout_pairs(dir, out)    identities held out of training -> a pair set in LFW's format (a second yardstick)
"""
from __future__ import annotations

import json
import os
import shutil

import ml_collections
import numpy as np

from facejax.data.lfw import VerificationPairs, lfw_pairs
from facejax.data.synthetic import synthetic_pairs

SOURCES = ('auto', 'lfw', 'synthetic_pairs')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.pgm')


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


def holdout_pairs(identities_dir: str, out_dir: str, *, num_identities: int = 300, num_folds: int = 10,
                  seed: int = 0, prefix: str = 'id') -> dict:
  """A pair set in LFW's format from identities held out of training: `num_identities` of `identities_dir`'s
  folders (<identity>/<photo>, at least 2 photos each), drawn with `seed`, are split into `num_folds`
  identity-disjoint folds; each fold gets the same number of matched pairs (every within-identity pair of the
  fold, subsampled to the smallest fold's count, at most 300) and as many mismatched pairs within the fold.
  `out_dir` gets an LFW tree of symlinks (<prefix>_<identity>/<prefix>_<identity>_0001.jpg, the photos in sorted
  order) and pairs.txt, so `launch.evaluate` runs it as it runs LFW View 2 (config.data.lfw_dir=out_dir).
  Kept when `out_dir/holdout.json` records the same draw. -> that record: {'lfw_dir', 'pairs', 'identities'
  (the held-out folder names: leave them out of every training set), 'pairs_per_half', 'num_folds', ...}."""
  spec = {'source': os.path.abspath(identities_dir), 'num_identities': int(num_identities),
          'num_folds': int(num_folds), 'seed': int(seed), 'prefix': prefix}
  record_path = os.path.join(out_dir, 'holdout.json')
  if os.path.isfile(record_path):
    with open(record_path) as f:
      record = json.load(f)
    if record['spec'] == spec:
      return record
  if not os.path.isdir(identities_dir):
    raise FileNotFoundError(f'{identities_dir}: no such folder (expected <folder>/<identity>/<photo>)')
  photos = {}
  for identity in sorted(os.listdir(identities_dir)):
    folder = os.path.join(identities_dir, identity)
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES)) if os.path.isdir(folder) else []
    if len(files) >= 2:
      photos[identity] = files
  if len(photos) < max(2, num_identities):
    raise ValueError(f'{identities_dir}: {len(photos)} identities with >= 2 photos, {num_identities} asked for '
                     '(config.holdout.identities)')
  rng = np.random.default_rng(seed)
  chosen = sorted(rng.choice(sorted(photos), num_identities, replace=False).tolist())
  folds = np.array_split(np.asarray(chosen)[rng.permutation(len(chosen))], num_folds)
  matched = [[(i, a, b) for i in fold for a in range(len(photos[i])) for b in range(a + 1, len(photos[i]))]
             for fold in folds]
  half = min(300, min(len(m) for m in matched))
  if min(len(f) for f in folds) < 2 or half < 1:
    raise ValueError(f'holdout: {num_identities} identities in {num_folds} folds leave a fold without pairs')
  name = lambda identity: f'{prefix}_{identity}'
  lines = [f'{num_folds} {half}']
  for fold, pos in zip(folds, matched):
    for k in sorted(rng.choice(len(pos), half, replace=False)):
      i, a, b = pos[k]
      lines.append(f'{name(i)} {a + 1} {b + 1}')
    for _ in range(half):
      i, j = rng.choice(fold, 2, replace=False)
      lines.append(f'{name(i)} {rng.integers(len(photos[i])) + 1} {name(j)} {rng.integers(len(photos[j])) + 1}')
  if os.path.isdir(out_dir):
    if not os.path.isfile(record_path) and os.listdir(out_dir):
      raise FileExistsError(f'{out_dir}: not empty and not a held-out pair set (no holdout.json): choose another '
                            'folder')
    shutil.rmtree(out_dir)
  for identity in chosen:
    os.makedirs(os.path.join(out_dir, name(identity)))
    for k, f in enumerate(photos[identity], start=1):
      os.symlink(os.path.abspath(os.path.join(identities_dir, identity, f)),
                 os.path.join(out_dir, name(identity), f'{name(identity)}_{k:04d}{os.path.splitext(f)[1].lower()}'))
  with open(os.path.join(out_dir, 'pairs.txt'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  record = {'spec': spec, 'lfw_dir': os.path.abspath(out_dir),
            'pairs': os.path.abspath(os.path.join(out_dir, 'pairs.txt')),
            'identities': chosen, 'num_folds': num_folds, 'pairs_per_half': half,
            'photos': sum(len(photos[i]) for i in chosen)}
  with open(record_path, 'w') as f:
    json.dump(record, f, indent=2)
  return record
