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
