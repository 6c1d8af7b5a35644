"""Held-out identities as a pair set in LFW's format (facejax.data.pairs.holdout_pairs)."""
import os

import numpy as np
import pytest
from PIL import Image

from facejax.data.lfw import lfw_pairs, read_pairs
from facejax.data.pairs import holdout_pairs


def _identities(root, counts):
  rng = np.random.default_rng(0)
  for k, n in enumerate(counts):
    os.makedirs(root / f'{k:03d}')
    for j in range(n):
      Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f'{k:03d}' / f'{900 - j}.jpg')


def test_folds_are_identity_disjoint_balanced_and_read_as_lfw(tmp_path):
  _identities(tmp_path / 'ids', [5] * 24 + [1])  # the last has one photo: never held out
  record = holdout_pairs(str(tmp_path / 'ids'), str(tmp_path / 'pairs'), num_identities=20, num_folds=4, seed=3)
  assert len(record['identities']) == 20 and '024' not in record['identities']
  assert record['pairs_per_half'] == 50  # 5 identities a fold x 10 within-identity pairs
  lines = read_pairs(record['pairs'])
  assert len(lines) == 4 * 2 * 50
  people = [{n for p in lines if p.fold == f for n in (p.name1, p.name2)} for f in range(4)]
  assert all(not (people[a] & people[b]) for a in range(4) for b in range(a + 1, 4))  # no person in two folds
  assert sum(p.issame for p in lines) == 200 and len({(p.name1, p.index1, p.index2) for p in lines if p.issame}) == 200
  pairs = lfw_pairs(record['lfw_dir'], record['pairs'])
  first = sorted(os.listdir(tmp_path / 'ids' / record['identities'][0]))[0]  # photos numbered in sorted order
  assert os.path.realpath(tmp_path / 'pairs' / f'id_{record["identities"][0]}' /
                          f'id_{record["identities"][0]}_0001.jpg') == str(tmp_path / 'ids' / record['identities'][0]
                                                                            / first)
  assert pairs.issame.sum() == 200 and len(pairs.images) <= 100
  again = holdout_pairs(str(tmp_path / 'ids'), str(tmp_path / 'pairs'), num_identities=20, num_folds=4, seed=3)
  assert again == record  # kept, not redrawn
  other = holdout_pairs(str(tmp_path / 'ids'), str(tmp_path / 'pairs'), num_identities=20, num_folds=4, seed=4)
  assert other['identities'] != record['identities'] and read_pairs(other['pairs']) != lines


def test_bad_requests_name_the_problem(tmp_path):
  _identities(tmp_path / 'ids', [3] * 4)
  with pytest.raises(ValueError, match=r'4 identities with >= 2 photos, 10 asked for'):
    holdout_pairs(str(tmp_path / 'ids'), str(tmp_path / 'out'), num_identities=10)
  with pytest.raises(FileNotFoundError, match='no such folder'):
    holdout_pairs(str(tmp_path / 'missing'), str(tmp_path / 'out'))
  (tmp_path / 'mine').mkdir()
  (tmp_path / 'mine' / 'notes.txt').write_text('keep me')
  with pytest.raises(FileExistsError, match='not empty and not a held-out pair set'):
    holdout_pairs(str(tmp_path / 'ids'), str(tmp_path / 'mine'), num_identities=4, num_folds=2)
  assert (tmp_path / 'mine' / 'notes.txt').exists()
