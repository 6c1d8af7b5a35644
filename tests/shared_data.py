"""Where the real development sets live (`../shared/data/` beside the repository, or $FACEJAX_DATA); tests that
need one skip with a reason when it is absent."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shared_data(name: str) -> str:
  """-> $FACEJAX_DATA/<name> (default <repo>/../shared/data/<name>); skips the calling test when it is absent."""
  base = os.environ.get('FACEJAX_DATA') or os.path.join(os.path.dirname(ROOT), 'shared', 'data')
  path = os.path.join(base, name)
  if not os.path.isdir(path):
    pytest.skip(f'{path}: real data set {name!r} not present (set FACEJAX_DATA to the folder holding {name}/)')
  return path


def tiny_lfw(out) -> None:
  """`out`: a 2-fold, 12-pair LFW tree of symlinks to real people, with real View 2 lines (3 matched, then 3
  mismatched pairs per fold) in `out/pairs.txt`."""
  lfw = shared_data('lfw')
  with open(os.path.join(lfw, 'pairs.txt')) as f:
    lines = f.read().splitlines()[1:]
  same = [l for l in lines[:300] if len(l.split('\t')) == 3][:6]
  diff = [l for l in lines[300:600] if len(l.split('\t')) == 4][:6]
  chosen = same[:3] + diff[:3] + same[3:] + diff[3:]
  os.makedirs(out)
  for person in {f for l in chosen for f in l.split('\t') if not f.isdigit()}:
    os.symlink(os.path.join(lfw, person), os.path.join(out, person))
  with open(os.path.join(out, 'pairs.txt'), 'w') as f:
    f.write('2\t3\n' + '\n'.join(chosen) + '\n')
