"""Every photo of a pair set as an aligned chip: the detector (dlib's HOG), then the no-face policy on its misses.

  out = aligned_chips(pairs, spec, no_face='detect', cache_dir='runs/cache', workers=2)
  out['chips']     # uint8 [N, S, S, 3]
  out['found_by']  # per photo: 'hog', a second detector ('mmod', 'haar_frontal', 'haar_profile'), 'none', 'unreadable'

What launch.evaluate feeds a model that expects aligned chips (facejax.data.align.resolve_align). The detector's
chips are cached per pair set and alignment (the cache format of earlier runs: their chips stay valid), the no-face
policy's chips of its misses beside them, per policy (facejax.data.no_face).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import numpy as np

from facejax.data import no_face as no_face_policy
from facejax.data.align import align_files, default_aligner
from facejax.data.no_face import DEFAULT_NO_FACE, check_policy, rescue_all


def _image_paths(images) -> list[str] | None:
  """The files behind a pair set's images (ImageFiles, or a subset of one), or None for in-memory images."""
  from facejax.data.lfw import ImageFiles
  from facejax.data.pairs import _Subset
  if isinstance(images, ImageFiles):
    return images.paths
  if isinstance(images, _Subset) and isinstance(images.base, ImageFiles):
    return [images.base.paths[int(k)] for k in images.indices]
  return None


def _cache_file(cache_dir: str, kind: str, key: Any) -> str:
  import hashlib
  digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
  return os.path.join(cache_dir, f'{kind}-{digest}.npz')


def _cached(path: str, compute: Callable[[], dict]) -> dict:
  """The arrays in `path` (.npz), or compute() written there atomically ('' path: no cache)."""
  if path and os.path.isfile(path):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  out = compute()
  if path:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + '.tmp', 'wb') as f:
      np.savez(f, **out)
    os.replace(path + '.tmp', path)
  return out


def aligned_chips(pairs, spec: dict, no_face: str = DEFAULT_NO_FACE, cache_dir: str = '', workers: int = 1,
                  progress: bool = False) -> dict:
  """Every image of `pairs` as an aligned chip -> {'chips': uint8 [N, S, S, 3], 'found': bool [N] (some detector
  found the face), 'found_by': str [N] (`no_face.FOUND_BY`: 'hog', a second detector, 'none' or 'unreadable'),
  'readable': bool [N], 'seconds': float (HOG alignment wall time, when it was computed), 'no_face_seconds': float
  (the no-face policy on HOG's misses)}. A photo HOG finds no face in gets its chip by the `no_face` policy; an
  unreadable file a black chip (both counted by the caller). With `cache_dir`, chips are stored under it keyed by
  the photos, the alignment and the policy, so every model evaluated on a pair set shares them."""
  import time
  from facejax.data.loader import as_rgb_array
  check_policy(no_face)
  paths = _image_paths(pairs.images)
  size, args = int(spec['size']), dict(detector=spec.get('detector', 'hog'), upsample=int(spec.get('upsample', 1)),
                                       size=int(spec['size']), padding=float(spec['padding']))
  if spec.get('kind', 'dlib_5pt') != 'dlib_5pt':  # dlib's chips keep the cache key of earlier runs
    args['kind'] = spec['kind']
  key = {'photos': [os.path.abspath(p) for p in paths] if paths else None, 'align': args, 'version': 1}

  def compute() -> dict:
    t0 = time.perf_counter()
    if paths is not None:
      out = align_files(paths, workers=workers, progress='align' if progress else '', **args)
    else:  # in-memory images (synthetic pairs): one process
      aligner = default_aligner(args['detector'], args['upsample'], size, args['padding'],
                                *([args['kind']] if 'kind' in args else []))
      chips, found = zip(*(aligner.align_or_fallback(as_rgb_array(pairs.images[k]), pairs.names[k])
                           for k in range(len(pairs.images))))
      out = {'chips': np.stack(chips), 'found': np.array(found), 'readable': np.ones(len(chips), bool)}
    return dict(out, seconds=np.float64(time.perf_counter() - t0))

  out = dict(_cached(_cache_file(cache_dir, 'chips', key) if cache_dir and paths else '', compute))
  found_by = np.where(out['readable'], np.where(out['found'], args['detector'], 'none'), 'unreadable').astype('<U12')
  misses = np.flatnonzero(~out['found'] & out['readable'])
  out['no_face_seconds'] = np.float64(0.0)
  if no_face != 'lfw_box' and len(misses):  # align_or_fallback's chips are the 'lfw_box' policy's already
    items = [(pairs.names[k], paths[k] if paths else as_rgb_array(pairs.images[k])) for k in misses]
    rkey = {'photos': [os.path.abspath(p) for p, _ in items] if paths else None, 'align': args,
            'no_face': no_face, 'box_to_hog': no_face_policy.BOX_TO_HOG, 'version': 3}

    def rescue() -> dict:
      t0 = time.perf_counter()
      chips, kinds = rescue_all(items, no_face, upsample=args['upsample'], size=size, padding=args['padding'],
                                workers=workers, **({'kind': args['kind']} if 'kind' in args else {}))
      return {'chips': chips, 'found_by': np.array(kinds, '<U12'), 'seconds': np.float64(time.perf_counter() - t0)}

    rescued = _cached(_cache_file(cache_dir, 'no_face', rkey) if cache_dir and paths else '', rescue)
    out['chips'][misses], found_by[misses] = rescued['chips'], rescued['found_by']
    out['no_face_seconds'] = rescued['seconds']
  out['found_by'], out['found'] = found_by, ~np.isin(found_by, ('none', 'unreadable'))
  return out
