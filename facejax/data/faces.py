"""Face photo trees for training: chips trees linked into one identity tree, the people of LFW in no pair, and the
identity sets the real-faces pipelines train on (`identity_set`), every step resumable.

Nothing here aligns or judges faces itself: `facejax.data.folders.align_once` aligns, and the pipeline decides which
identities to leave out (held-out pairs, the leakage check) and passes them as `exclude`.
"""
from __future__ import annotations

import json
import os

import numpy as np


def link_tree(sources: dict[str, str], out: str, exclude=frozenset(), mirror: bool = False,
               jittered: int = 0) -> dict:
  """Identity folders of several chip trees -> one tree under `out` of per-file symlinks (and, with `mirror`,
  left-right mirrored PNG copies `<image>_mirror.png`, and with `jittered` = J, J copies `<image>_jitter<j>.png`
  through the trainer's `Augment` (crop, flip, colour), drawn from a seed of the file name: the teacher's cached
  outputs then cover 1 + mirror + J views of every chip). `sources`: prefix -> chips root; identities are named
  `<prefix>/<identity>` -> '<prefix>_<identity>'. A resumed run reuses the tree when `<out>.json` records the same
  sources, exclusions and views; otherwise it is rebuilt, so a changed exclusion list takes effect. The tree is built
  in a private folder and swapped in when complete, so another run reading `out` never sees it half-built, and two
  runs preparing the same tree at once do not delete each other's files; the half-built folder of a run that was
  killed is deleted by the next build. -> counts."""
  import errno
  import shutil
  import tempfile
  import zlib
  from PIL import Image
  from facejax.data.loader import Augment
  spec = {'sources': {k: os.path.abspath(v) for k, v in sources.items()}, 'exclude': sorted(exclude),
          'mirror': bool(mirror)}
  if jittered:
    spec['jittered'] = int(jittered)  # absent when 0: trees built before jittering existed stay valid
  stored = _stored_counts(out, spec)
  if stored is not None:
    return stored
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  _remove_abandoned_builds(out)
  build = tempfile.mkdtemp(prefix=f'{os.path.basename(out)}.building-{os.getpid()}-', dir=parent)
  counts = {'identities': 0, 'images': 0, 'excluded_identities': 0}
  for prefix, root in sources.items():
    for identity in sorted(os.listdir(root)):
      if f'{prefix}/{identity}' in exclude:
        counts['excluded_identities'] += 1
        continue
      dst = os.path.join(build, f'{prefix}_{identity}')
      os.makedirs(dst)
      counts['identities'] += 1
      for name in sorted(os.listdir(os.path.join(root, identity))):
        src = os.path.abspath(os.path.join(root, identity, name))
        os.symlink(src, os.path.join(dst, name))
        counts['images'] += 1
        if not (mirror or jittered):
          continue
        with Image.open(src) as im:
          image = np.asarray(im.convert('RGB'))
        stem = os.path.join(dst, os.path.splitext(name)[0])
        if mirror:
          Image.fromarray(image[:, ::-1]).save(stem + '_mirror.png')
        augment = Augment(image.shape[0], area=(0.8, 1.0), ratio=(0.95, 1.05), jitter=0.2)
        for j in range(jittered):
          rng = np.random.default_rng([zlib.crc32(f'{prefix}/{identity}/{name}'.encode()), j])
          Image.fromarray(augment({'image': image}, rng)['image']).save(f'{stem}_jitter{j}.png')
        counts['images'] += bool(mirror) + jittered
  theirs = _stored_counts(out, spec)
  if theirs is not None:  # another run finished the same tree meanwhile (and may be reading it): keep that one
    shutil.rmtree(build)
    return theirs
  if os.path.exists(out + '.json'):
    os.remove(out + '.json')
  old = build + '.old'
  if os.path.isdir(out):
    os.rename(out, old)  # out's name is free only for an instant
  try:
    os.rename(build, out)
  except OSError as e:  # another run swapped in its tree in that instant: `out` names one spec (identity_set)
    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
      raise
    shutil.rmtree(build)
  if os.path.isdir(old):
    shutil.rmtree(old)
  tmp = build + '.json'
  with open(tmp, 'w') as f:
    json.dump({'spec': spec, 'counts': counts}, f, indent=2)
  os.replace(tmp, out + '.json')  # written last: a tree without it is rebuilt
  return counts


def _remove_abandoned_builds(out: str) -> None:
  """Deletes `<out>.building-<pid>-*` folders whose building process is gone (a killed run's half-built tree)."""
  import shutil
  parent, base = os.path.split(os.path.abspath(out))
  for name in os.listdir(parent):
    pid = name[len(base) + len('.building-'):].split('-', 1)[0]
    if not (name.startswith(base + '.building-') and pid.isdigit()):
      continue
    try:
      os.kill(int(pid), 0)
    except ProcessLookupError:
      shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    except PermissionError:  # alive, another user's
      pass


def _stored_counts(out: str, spec: dict) -> dict | None:
  """The counts of a finished tree at `out` built to `spec`, or None."""
  if not (os.path.isfile(out + '.json') and os.path.isdir(out)):
    return None
  with open(out + '.json') as f:
    stored = json.load(f)
  return stored['counts'] if stored['spec'] == spec else None


def unpaired_lfw_people(lfw_dir: str, pairs_path: str, out: str) -> int:
  """A tree of symlinks to the LFW people who appear in no pair of `pairs_path` -> how many people."""
  from facejax.data.lfw import read_pairs
  paired = {n for line in read_pairs(pairs_path) for n in (line.name1, line.name2)}
  os.makedirs(out, exist_ok=True)
  people = [p for p in sorted(os.listdir(lfw_dir)) if os.path.isdir(os.path.join(lfw_dir, p)) and p not in paired]
  for p in people:
    if not os.path.lexists(os.path.join(out, p)):
      os.symlink(os.path.abspath(os.path.join(lfw_dir, p)), os.path.join(out, p))
  return len(people)


def chip_files(root: str) -> tuple[list[str], list[str]]:
  """A chips tree -> (sorted file paths, their identity folder names)."""
  paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files)
  return paths, [os.path.basename(os.path.dirname(p)) for p in paths]


def identity_set(sources: dict[str, str], data_dir: str, name: str, *, exclude=frozenset(), max_identities: int = 0,
                 seed: int = 0, min_images: int = 2, mirror: bool = False, jittered: int = 0) -> dict:
  """Chips trees (`sources`: prefix -> root of <identity>/<chip>) -> one prepared identity set under `data_dir`
  (`facejax.data.folders.prepare_folders`, ArrayRecord, no validation split) through a linked tree. Identities
  in `exclude` ('<prefix>/<identity>') and those with fewer than `min_images` chips are left out; with
  `max_identities`, all but that many of the rest, drawn with `seed` (a data-efficiency point). The prepared
  set's name carries a digest of what was left out (and of the views: `mirror`, `jittered`, as `link_tree`), so a
  changed exclusion prepares a new set, never a stale one.
  -> {'name', 'data_dir', 'tree', 'identities', 'images', 'excluded_identities', 'max_identities'}."""
  import hashlib
  from facejax.data.folders import prepare_folders
  everyone = {f'{prefix}/{identity}': len(os.listdir(os.path.join(root, identity)))
              for prefix, root in sources.items() for identity in os.listdir(root)
              if os.path.isdir(os.path.join(root, identity))}
  eligible = sorted(k for k, n in everyone.items() if k not in exclude and n >= min_images)
  left_out = set(everyone) - set(eligible)  # the tree holds exactly the set's identities
  if max_identities:
    if max_identities > len(eligible):
      raise ValueError(f'max_identities={max_identities}: only {len(eligible)} identities with >= {min_images} '
                       f'chips are left after the exclusions')
    keep = set(np.random.default_rng(seed).choice(eligible, max_identities, replace=False).tolist())
    left_out |= set(eligible) - keep
  views = [bool(mirror), int(jittered)] if mirror or jittered else []  # none: the names sets had before views
  digest = hashlib.sha1(json.dumps([sorted(left_out)] + views if views else sorted(left_out)).encode()).hexdigest()[:8]
  prepared = f'{name}_{digest}'
  tree = os.path.join(data_dir, 'trees', prepared)
  counts = link_tree(sources, tree, left_out, mirror=mirror, jittered=jittered)
  prepare_folders(tree, data_dir, name=prepared, val_fraction=0.0, min_images=min_images)
  return {'name': prepared, 'data_dir': os.path.abspath(data_dir), 'tree': os.path.abspath(tree),
          'max_identities': int(max_identities), **counts}
