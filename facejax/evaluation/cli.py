"""What `launch.evaluate`, `launch.embed` and `launch.verify` do: evaluate a model, embed image files, verify a pair.

A model is a run directory RUN (model.json + checkpoints/) or an exported artifact `M.jaxexport`
(`launch.export`; its JSON sidecar `M.jaxexport.json` describes it). Files they get:
- RUN/eval/<name>/{config.json, results.json, results.md, roc.png} (`M.jaxexport.eval/<name>/` for an export): one
  evaluation (`evaluate_run`); <name> is config.name or the data source, so LFW and synthetic evaluations sit side
  by side. Re-running replaces them (evaluation is deterministic).
- RUN/eval/<name>/threshold.json: every evaluation's calibration, kept per pair set: the best-accuracy threshold
  over *all* pairs of that evaluation (exact search or the classic grid, as configured; `verification.evaluate`'s
  'threshold'), with the distance kind, the embedding (normalised or raw), the flip mode and the checkpoint step it
  was computed for. A pair is 'same' when distance < threshold.
- RUN/threshold.json (`M.jaxexport.threshold.json`): the calibration `launch.verify` applies by default, written
  only when asked (config.calibrate=True): a second pair set never silently replaces it. `launch.verify
  --pairs=<name>` picks RUN/eval/<name>/threshold.json instead, and verify prints which pairs its threshold came
  from.

Face alignment. A model whose description (model.json, or the export's sidecar) has an "align" entry (dlib's
converted net: {"kind": "dlib_5pt", "size": 150, "padding": 0.25}) expects aligned chips, so with align='auto'
(the default) every photo goes through `facejax.data.align.align_face` before embedding; other models keep the
center crop and never need dlib. A photo without a face: verify fails naming it, embed skips and counts it
('no-face'), evaluate keeps it (dropping its pairs would bias accuracy) with the no-face policy config.no_face
('box': the 5-point landmarks inside `facejax.data.align.FALLBACK_BOX`, the default; 'center': the center crop)
and reports how many. With config.cache_dir the chips of a pair set are computed once (in config.workers
processes) and shared by every model evaluated on it.

Reference (config.reference='dlib'): dlib's own pipeline (its detector, 5-point predictor, `compute_face_descriptor`
and raw euclidean distance) on the same photos, chips and folds, beside facejax's numbers with normalised and raw
distances, so a difference can be traced to the network, the distance or the chips.

dlib's rule. A run whose model.json has a "descriptor" entry with "normalised": false (dlib's converted net) and no
threshold.json is verified with its published rule: euclidean distance of the raw (un-normalised) descriptors
< "threshold" (0.6), until launch.evaluate calibrates one on the user's pairs.

Every model is reached through `load_embedder(path, flip, step, raw) -> (embed_fn, image_size)`: the one place that
turns a path into a function uint8 [B, S, S, 3] RGB -> float32 [B, D] L2-normalised embeddings (raw=True: the
un-normalised embeddings, run directories only); `describe_model(path)` reads what is known without loading weights.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Callable

from absl import logging
import ml_collections
import numpy as np

from facejax.evaluation import report, verification
from facejax.runs import (EXPORT_SUFFIX, THRESHOLD_FILE, calibrated_pair_sets, checkpoint_dir, eval_dir,
                          is_exported, latest_step, load_run, read_model_info, read_threshold, threshold_path,
                          write_threshold, jsonable)

FLIP_MODES = ('', 'sum', 'concat')
THRESHOLD_SEARCH = ('exact', 'classic')
SOURCES = ('auto', 'lfw', 'synthetic_pairs')
ALIGN_MODES = ('auto', 'on', 'off')
NO_FACE = ('box', 'center')
EMBEDDINGS = ('normalised', 'raw')
REFERENCES = ('', 'dlib')
DLIB_THRESHOLD = 0.6  # dlib's published rule: same person if the euclidean distance of raw descriptors < 0.6
DLIB_RULE = "dlib's published rule for raw descriptors; run launch.evaluate on your pairs to calibrate"
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm', '.pgm')


def classic_thresholds() -> np.ndarray:
  """The classic facenet / insightface LFW grid on squared L2 of normalised embeddings."""
  return np.arange(0, 4, 0.01)


def _flip(flip: str | None) -> str | None:
  """'' / None / 'none' -> None; 'sum' / 'concat' unchanged."""
  if flip in (None, '', 'none'):
    return None
  if flip not in FLIP_MODES:
    raise ValueError(f"flip={flip!r}: expected one of '', 'sum', 'concat'")
  return flip


# ---- The model seam. ----

def describe_model(path: str) -> dict:
  """A run directory or `*.jaxexport` -> {'kind': 'run' | 'export', 'name', 'image_size', 'step' (latest / exported),
  'flip' (baked into an export, else None), 'align', 'descriptor' (None when absent), 'info' (model.json or the
  export's sidecar, {} when it has none)}, without loading weights."""
  if is_exported(path):
    if not os.path.isfile(path):
      raise FileNotFoundError(f'exported model {path} does not exist (expected a file written by launch.export)')
    info = {}
    if os.path.isfile(path + '.json'):
      with open(path + '.json') as f:
        info = json.load(f)
    image_size = info.get('image_size') or (info.get('input', {}).get('shape') or [None, None])[1]
    return {'kind': 'export', 'name': info.get('model', '?'), 'image_size': image_size, 'step': info.get('step'),
            'flip': _flip(info.get('flip')), 'align': info.get('align'), 'descriptor': None, 'info': info}
  if not os.path.isdir(path):
    raise FileNotFoundError(f'run directory {path} does not exist (expected a launch.train workdir with '
                            f'model.json and checkpoints/<step>/, or an exported {EXPORT_SUFFIX} file)')
  info = read_model_info(path)
  return {'kind': 'run', 'name': info['name'], 'image_size': int(info['image_size']), 'step': latest_step(path),
          'flip': None, 'align': info.get('align'), 'descriptor': info.get('descriptor'), 'info': info}


def load_embedder(path: str, flip: str | None = '', step: int | None = None,
                  raw: bool = False) -> tuple[Callable[[Any], Any], int]:
  """Run directory or `*.jaxexport` -> (embed_fn, image_size): embed_fn(uint8 [B, S, S, 3] RGB) -> [B, D]
  L2-normalised ([B, 2D] for flip='concat'), jitted; S = image_size. `step`: checkpoint step (default the latest).

  raw=True: the un-normalised embeddings, `FaceNet.forward(x)['raw_embedding']` (dlib's descriptors for its
  converted net); run directories only, no flip. An export's flip mode is baked in: `flip` must match it.
  This is the only place the CLIs turn a path into a model.
  """
  flip = _flip(flip)
  if is_exported(path):
    desc = describe_model(path)
    if raw:
      raise ValueError(f'{path}: an exported model outputs L2-normalised embeddings only; raw embeddings need '
                       f'the run directory it was exported from')
    if flip != desc['flip']:
      raise ValueError(f'{path}: flip TTA is baked into the export as {desc["flip"] or "none"}, got '
                       f'flip={flip or "none"} (re-export with launch.export --flip to change it)')
    if step is not None and desc['step'] is not None and step != desc['step']:
      raise ValueError(f'{path}: exported from checkpoint step {desc["step"]}, got step={step}')
    from facejax.inference import load_exported
    embedder = load_exported(path)
    return embedder, embedder.image_size
  describe_model(path)  # errors naming what is missing
  model, variables, info = load_run(path, step)
  image_size, preprocessing = int(info['image_size']), info['preprocessing_obj']
  if not raw:
    from facejax.inference.embed import make_embed_fn
    return make_embed_fn(model, variables, preprocessing, image_size, flip=flip), image_size
  if flip:
    raise ValueError(f'flip={flip!r}: raw embeddings are single-image descriptors; expected no flip TTA')
  return _raw_embed_fn(model, variables, preprocessing, image_size), image_size


def _raw_embed_fn(model, variables, preprocessing, image_size: int) -> Callable[[Any], Any]:
  """-> jitted fn(uint8 [B, S, S, 3]) -> float32 [B, D], the embedding head's output before L2 normalisation."""
  import jax

  @jax.jit
  def fn(variables, images):
    return model.apply(variables, preprocessing.apply(images), method='forward')['raw_embedding']

  variables = jax.device_put(variables)

  def embed(images):
    if images.ndim != 4 or images.shape[1:] != (image_size, image_size, 3):
      raise ValueError(f'images: expected [B, {image_size}, {image_size}, 3], got {tuple(images.shape)}')
    return fn(variables, images)

  return embed


def resolve_align(mode: str, desc: dict, photos: bool = True, detector: str = 'hog',
                  upsample: int = 1) -> dict | None:
  """align='auto' | 'on' | 'off' for a model (describe_model) -> the alignment to apply ({'kind', 'size',
  'padding', 'detector', 'upsample'}) or None. 'auto': the model's "align" entry when it has one and the inputs are
  photos (synthetic pairs are rendered as chips already); 'on' without an entry: dlib 5-point chips at the model's
  input size."""
  if mode not in ALIGN_MODES:
    raise ValueError(f'align={mode!r}: expected one of {ALIGN_MODES}')
  spec = desc.get('align')
  if mode == 'off' or (mode == 'auto' and not (spec and photos)):
    return None
  from facejax.data.align import CHIP_PADDING, CHIP_SIZE, require_dlib
  spec = {'kind': 'dlib_5pt', 'size': desc['image_size'] or CHIP_SIZE, 'padding': CHIP_PADDING, **(spec or {}),
          'detector': detector, 'upsample': int(upsample)}
  if spec['kind'] != 'dlib_5pt':
    raise ValueError(f'align kind {spec["kind"]!r} of the model: expected "dlib_5pt"')
  try:
    require_dlib()
  except ImportError as e:
    raise ImportError(f'{e}; or pass --align=off (config.align="off") if the images are already aligned '
                      f'{spec.get("size")} px chips') from None
  return spec


def align_photo(image: np.ndarray, name: str, spec: dict | None) -> np.ndarray:
  """uint8 [H, W, 3] photo -> uint8 [size, size, 3] chip of its largest face (spec None: the photo as is);
  NoFaceError naming `name`."""
  if spec is None:
    return image
  from facejax.data.align import align_face
  return align_face(image, name, size=int(spec['size']), padding=float(spec['padding']),
                    detector=spec.get('detector', 'hog'), upsample=int(spec.get('upsample', 1)))


def describe_align(spec: dict | None) -> str:
  if spec is None:
    return 'none (center crop)'
  return (f'dlib 5-point chips ({spec.get("size")} px, padding {spec.get("padding")}, detector '
          f'{spec.get("detector", "hog")}, upsample {spec.get("upsample", 1)})')


# ---- Pairs. ----

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
  from facejax.data.lfw import VerificationPairs
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
    from facejax.data.lfw import lfw_pairs
    pairs = lfw_pairs(data.lfw_dir, pairs_path)
    described = {'source': 'lfw', 'lfw_dir': os.path.abspath(data.lfw_dir), 'pairs': os.path.abspath(pairs_path)}
  else:
    from facejax.data.synthetic import synthetic_pairs
    kwargs = data.synthetic.to_dict()
    kwargs['image_size'] = kwargs.get('image_size') or image_size
    pairs = synthetic_pairs(**kwargs)
    described = {'source': 'synthetic_pairs', **kwargs}
  return needed_images(pairs), described


# ---- launch.evaluate ----

def _image_paths(images) -> list[str] | None:
  """The files behind a pair set's images (ImageFiles, or a subset of one), or None for in-memory images."""
  from facejax.data.lfw import ImageFiles
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


def aligned_chips(pairs, spec: dict, no_face: str = 'box', cache_dir: str = '', workers: int = 1,
                  progress: bool = False) -> dict:
  """Every image of `pairs` as an aligned chip -> {'chips': uint8 [N, S, S, 3], 'found': bool [N], 'readable':
  bool [N], 'seconds': float (alignment wall time, when it was computed)}. A photo without a face keeps a chip
  by the `no_face` policy; an unreadable file a black chip (both counted by the caller). With `cache_dir`, chips
  are stored under it keyed by the photos and the alignment, so every model evaluated on a pair set shares them."""
  import time
  from facejax.data import align as fa
  from facejax.data.pipeline import as_rgb_array, center_crop
  if no_face not in NO_FACE:
    raise ValueError(f'config.no_face={no_face!r}: expected one of {NO_FACE}')
  paths = _image_paths(pairs.images)
  size, args = int(spec['size']), dict(detector=spec.get('detector', 'hog'), upsample=int(spec.get('upsample', 1)),
                                       size=int(spec['size']), padding=float(spec['padding']))
  key = {'photos': [os.path.abspath(p) for p in paths] if paths else None, 'align': args, 'version': 1}

  def compute() -> dict:
    t0 = time.perf_counter()
    if paths is not None:
      out = fa.align_files(paths, workers=workers, progress='align' if progress else '', **args)
    else:  # in-memory images (synthetic pairs): one process
      aligner = fa.default_aligner(args['detector'], args['upsample'], size, args['padding'])
      chips, found = zip(*(aligner.align_or_fallback(as_rgb_array(pairs.images[k]), pairs.names[k])
                           for k in range(len(pairs.images))))
      out = {'chips': np.stack(chips), 'found': np.array(found), 'readable': np.ones(len(chips), bool)}
    return dict(out, seconds=np.float64(time.perf_counter() - t0))

  out = _cached(_cache_file(cache_dir, 'chips', key) if cache_dir and paths else '', compute)
  if no_face == 'center':
    for k in np.flatnonzero(~out['found'] & out['readable']):
      out['chips'][k] = center_crop(as_rgb_array(pairs.images[int(k)]), size)
  return out


def _l2_normalise(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def dlib_reference(pairs, chips: np.ndarray, emb_raw: np.ndarray, config: ml_collections.ConfigDict,
                   thresholds=None) -> dict:
  """dlib's own pipeline on the same chips and folds, beside facejax's raw embeddings of them -> {'rows': {label:
  results row}, 'results': {label: verification.evaluate}, 'dlib_fixed_threshold': accuracy of dlib's published
  rule (raw euclidean < 0.6) mean/std over folds, 'dlib_images_per_s', 'comparison': facejax vs dlib (paired)}."""
  descriptors, dlib_images_per_s = _dlib_descriptors_cached(chips, config.cache_dir, config.workers, config.progress)
  variants = {'facejax, normalised': _l2_normalise(emb_raw), 'facejax, raw': emb_raw,
              'dlib native, normalised': _l2_normalise(descriptors), 'dlib native, raw': descriptors}
  results, rows = {}, {}
  for label, emb in variants.items():
    results[label] = verification.evaluate(emb[pairs.left], emb[pairs.right], pairs.issame, distance='euclidean',
                                           thresholds=thresholds, folds=pairs.fold)
    rows[label] = report.summary_row(results[label], threshold=results[label]['threshold'])
  d = descriptors
  same = np.linalg.norm(d[pairs.left].astype(np.float64) - d[pairs.right], axis=-1) < DLIB_THRESHOLD
  fold_acc = np.array([np.mean(same[pairs.fold == f] == pairs.issame[pairs.fold == f])
                       for f in range(pairs.num_folds)])
  return {'rows': rows, 'results': results, 'dlib_images_per_s': dlib_images_per_s,
          'dlib_fixed_threshold': {'threshold': DLIB_THRESHOLD, 'accuracy': float(fold_acc.mean()),
                                   'accuracy_std': float(fold_acc.std()), 'fold_accuracies': fold_acc},
          'comparison': {f'{a} vs dlib native, raw': verification.compare(
              results[a], results['dlib native, raw'], a, 'dlib native, raw')
              for a in ('facejax, normalised', 'facejax, raw')}}


def _dlib_descriptors_cached(chips: np.ndarray, cache_dir: str, workers: int,
                             progress: bool) -> tuple[np.ndarray, float]:
  """dlib's descriptors of `chips`, each computed once per cache_dir (keyed by the chip's pixels, so a changed
  no-face policy recomputes only the chips it changed) -> (float32 [N, 128], images/s of the last computation)."""
  import hashlib
  import time
  from facejax.data.align import dlib_descriptors
  digests = [hashlib.sha1(np.ascontiguousarray(c).tobytes()).hexdigest() for c in chips]
  path = os.path.join(cache_dir, 'dlib-descriptors.npz') if cache_dir else ''
  known, rate = {}, float('nan')
  if path and os.path.isfile(path):
    with np.load(path) as f:
      known, rate = dict(zip(f['digests'].tolist(), f['descriptors'])), float(f['images_per_s'])
  missing = sorted({d: i for i, d in enumerate(digests) if d not in known}.values())
  if missing:
    t0 = time.perf_counter()
    new = dlib_descriptors(chips[missing], workers=workers, progress='dlib' if progress else '')
    rate = len(missing) / (time.perf_counter() - t0)
    known.update(zip((digests[i] for i in missing), new))
    if path:
      os.makedirs(cache_dir, exist_ok=True)
      with open(path + '.tmp', 'wb') as f:
        np.savez(f, digests=np.array(list(known)), descriptors=np.stack(list(known.values())),
                 images_per_s=np.float64(rate))
      os.replace(path + '.tmp', path)
  return np.stack([known[d] for d in digests]).astype(np.float32), rate


def _check_eval_config(config: ml_collections.ConfigDict) -> None:
  _flip(config.flip)
  for field, allowed in (('no_face', NO_FACE), ('embedding', EMBEDDINGS), ('reference', REFERENCES)):
    if config[field] not in allowed:
      raise ValueError(f'config.{field}={config[field]!r}: expected one of {allowed}')
  if config.workers < 1:
    raise ValueError(f'config.workers={config.workers}: expected >= 1')
  if config.get('align', 'auto') not in ALIGN_MODES:
    raise ValueError(f'config.align={config.align!r}: expected one of {ALIGN_MODES}')
  if config.distance not in verification.DISTANCES:
    raise ValueError(f'config.distance={config.distance!r}: expected one of {verification.DISTANCES}')
  if config.thresholds not in THRESHOLD_SEARCH:
    raise ValueError(f'config.thresholds={config.thresholds!r}: expected one of {THRESHOLD_SEARCH}')
  if config.batch_size < 1:
    raise ValueError(f'config.batch_size={config.batch_size}: expected >= 1')
  resolve_source(config.data)


def evaluate_run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Embed every image the pairs use once, run the 10-fold protocol, write RUN/eval/<name>/ (its threshold.json
  included) and, with config.calibrate, RUN/threshold.json (`M.jaxexport.eval/<name>/` and
  `M.jaxexport.threshold.json` for an export).
  Returns {'result' (verification.evaluate), 'row', 'out_dir', 'calibration', 'protocol', 'reference' (or None),
  'calibrated', 'embeddings' [N, D] and 'names' (the pair set's images)}."""
  import time
  from facejax.inference.embed import embed_images
  _check_eval_config(config)
  desc = describe_model(workdir)
  flip = _flip(config.flip)
  if desc['kind'] == 'export' and not flip:
    flip = desc['flip']  # config.flip unset: the mode baked into the export
  photos = resolve_source(config.data) == 'lfw'
  align = resolve_align(config.get('align', 'auto'), desc, photos=photos, detector=config.detector,
                        upsample=config.upsample)
  raw = config.embedding == 'raw' or bool(config.reference)
  if raw and flip:
    raise ValueError(f'config.flip={flip!r}: raw embeddings (config.embedding=raw or config.reference) are '
                     'single-image descriptors; expected no flip TTA')
  if config.reference == 'dlib' and (align is None or int(align['size']) != 150):
    raise ValueError('config.reference=dlib runs dlib on 150 px dlib 5-point chips: expected an aligning model '
                     '(dlib\'s converted net) or config.align=on with a 150 px model')
  embed_fn, image_size = load_embedder(workdir, flip, raw=raw)
  step = desc['step']
  pairs, described = load_pairs(config.data, image_size)
  name = config.name or described['source']
  out_dir = eval_dir(workdir, name)

  images, aligned = pairs.images, None
  if align is not None:
    aligned = aligned_chips(pairs, align, config.no_face, config.cache_dir, config.workers, config.progress)
    images = aligned['chips']
  t0 = time.perf_counter()
  emb = embed_images(embed_fn, images, image_size, batch_size=config.batch_size, progress=config.progress)
  embed_seconds = time.perf_counter() - t0
  emb_raw = emb if raw else None
  if raw and config.embedding == 'normalised':
    emb = _l2_normalise(emb)
  thresholds = classic_thresholds() if config.thresholds == 'classic' else None
  result = verification.evaluate(emb[pairs.left], emb[pairs.right], pairs.issame, distance=config.distance,
                                 thresholds=thresholds, folds=pairs.fold)
  dist = verification.pair_distances(emb[pairs.left], emb[pairs.right], config.distance)
  train_accuracy = float(np.mean((dist < result['threshold']) == pairs.issame))

  run_name = os.path.basename(os.path.normpath(os.path.abspath(workdir)))
  row = report.summary_row(result, threshold=result['threshold'])
  protocol = {
      **described, 'pairs_total': len(pairs), 'images': len(pairs.images), 'folds': result['num_folds'],
      'distance': config.distance, 'embedding': config.embedding, 'flip': flip or 'none',
      'thresholds': config.thresholds, 'align': describe_align(align),
      'accuracy': 'mean over folds; each fold uses the best-accuracy threshold of the other folds',
      'accuracy_std': 'std over folds, ddof=0', 'threshold': 'best accuracy over all pairs (same if distance < t)',
      'embed_images_per_s': len(pairs.images) / embed_seconds,
  }
  if aligned is not None:
    no_face = [pairs.names[k] for k in np.flatnonzero(~aligned['found'] & aligned['readable'])]
    protocol.update(
        no_face=len(no_face), no_face_images=no_face[:50],
        no_face_fallback={'box': 'chip from the 5-point landmarks inside the fixed box facejax.data.align.'
                                 'FALLBACK_BOX', 'center': 'center crop of the photo'}[config.no_face],
        unreadable=[pairs.names[k] for k in np.flatnonzero(~aligned['readable'])],
        align_images_per_s=len(pairs.images) / max(float(aligned['seconds']), 1e-9))
  reference = None
  if config.reference == 'dlib':
    reference = dlib_reference(pairs, aligned['chips'], emb_raw, config, thresholds)
    protocol['dlib_images_per_s'] = reference['dlib_images_per_s']
  run = {'workdir': os.path.abspath(workdir), 'kind': desc['kind'], 'model': desc['name'], 'step': step,
         'image_size': image_size}
  details = {k: v for k, v in result.items() if k not in ('roc', 'embeddings')}
  details['accuracy_at_threshold'] = train_accuracy

  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
  record = {'models': {run_name: row}, 'run': run, 'protocol': protocol, 'result': details}
  if reference:
    record['reference'] = {k: v for k, v in reference.items() if k != 'results'}
  with open(os.path.join(out_dir, 'results.json'), 'w') as f:
    json.dump(jsonable(record), f, indent=2)
  with open(os.path.join(out_dir, 'results.md'), 'w') as f:
    f.write(results_text(run_name, row, result, protocol, run, train_accuracy) + reference_text(reference))
  report.plot_roc({run_name: result, **({k: v for k, v in reference['results'].items() if k.startswith('dlib')}
                                        if reference else {})}, os.path.join(out_dir, 'roc.png'),
                  title=f'{run_name} on {described["source"]} ({len(pairs)} pairs)')

  calibration = {
      'threshold': result['threshold'], 'distance': config.distance, 'embedding': config.embedding,
      'flip': flip or '', 'rule': 'same if distance < threshold',
      'chosen_by': f'best accuracy over all {len(pairs)} pairs ({config.thresholds} threshold search)',
      'accuracy_at_threshold': train_accuracy, 'cv_accuracy': result['accuracy'],
      'cv_accuracy_std': result['accuracy_std'], 'step': step, 'image_size': image_size, 'name': name,
      'evaluation': os.path.relpath(out_dir, os.path.dirname(threshold_path(workdir))), 'pairs': described,
      'align': align,
  }
  write_threshold(os.path.join(out_dir, THRESHOLD_FILE), calibration)
  if config.calibrate:
    write_threshold(threshold_path(workdir), calibration)
  return {'result': result, 'row': row, 'out_dir': out_dir, 'calibration': calibration, 'protocol': protocol,
          'reference': reference, 'calibrated': bool(config.calibrate), 'embeddings': emb, 'names': pairs.names}


def reference_text(reference: dict | None) -> str:
  """results.md's section on dlib's own pipeline (config.reference='dlib')."""
  if not reference:
    return ''
  fixed = reference['dlib_fixed_threshold']
  return ('\n## Reference: dlib\'s own pipeline on the same chips and folds\n\n'
          f'{report.results_markdown(reference["rows"])}\n'
          f'- dlib native at its published rule (raw euclidean < {fixed["threshold"]}): '
          f'{100 * fixed["accuracy"]:.2f} +- {100 * fixed["accuracy_std"]:.2f} %\n'
          + ''.join(f'- {k}: {v["summary"]}\n' for k, v in reference['comparison'].items()))


def results_text(run_name: str, row: dict, result: dict, protocol: dict, run: dict, train_accuracy: float) -> str:
  """results.md: the results table, then how the numbers were computed."""
  where = protocol.get('pairs') or f'synthetic_pairs (identity_offset={protocol.get("identity_offset")})'
  tar = ', '.join(f'{100 * v:.2f}% at FAR={k:g}' for k, v in result['tar_at_far'].items())
  folds = ' '.join(f'{100 * a:.2f}' for a in result['fold_accuracies'])
  return (f'# {run_name}: verification on {protocol["source"]}\n\n'
          f'{report.results_markdown({run_name: row})}\n'
          f'- run: {run["workdir"]} ({run["model"]}, checkpoint step {run["step"]}, input {run["image_size"]}px)\n'
          f'- pairs: {protocol["pairs_total"]} from {where}, {protocol["images"]} images, '
          f'{protocol["folds"]} folds\n'
          f'- distance: {protocol["distance"]}, flip TTA: {protocol["flip"]}, '
          f'threshold search: {protocol["thresholds"]}\n'
          f'- face alignment: {protocol["align"]}'
          f'{no_face_text(protocol)}\n'
          f'- accuracy: mean over folds (threshold chosen on the other folds), +- std ddof=0; '
          f's.e. {100 * result["accuracy_sem"]:.2f}\n'
          f'- fold accuracies (%): {folds}\n'
          f'- TAR: {tar}\n'
          f'- calibrated threshold (best accuracy over all pairs): {result["threshold"]:.6g} '
          f'({100 * train_accuracy:.2f}% on these pairs, optimistic)\n')


def no_face_text(protocol: dict) -> str:
  if not protocol.get('no_face'):
    return ''
  return (f'; no face found in {protocol["no_face"]} image(s), kept as the {protocol["no_face_fallback"]} '
          f'(e.g. {protocol["no_face_images"][0]})')


# ---- Images. ----

def _decode_file(path: str) -> np.ndarray:
  from facejax.data.decode import decode_image
  with open(path, 'rb') as f:
    return decode_image(f.read())


def read_image(path: str) -> np.ndarray:
  """Image file -> uint8 [H, W, 3] RGB; FileNotFoundError / UnreadableImage naming the file."""
  from facejax.data.decode import UnreadableImage
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such image file')
  try:
    return _decode_file(path)
  except UnreadableImage as e:  # str(e) is 'category: detail'; put the file between them
    raise UnreadableImage(e.category, f'{path}: {str(e)[len(e.category) + 2:]}') from None


def find_images(images: str) -> tuple[list[str], str]:
  """A directory (searched recursively for IMAGE_EXTENSIONS, any case) or a glob pattern (`**` recursive) ->
  (sorted file paths, root the names are relative to)."""
  if os.path.isdir(images):
    root = images
    paths = [os.path.join(d, f) for d, _, files in os.walk(images) for f in files
             if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
  else:
    paths = [p for p in glob.glob(images, recursive=True) if os.path.isfile(p)]
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]) if paths else ''
  if not paths:
    raise FileNotFoundError(f'--images={images}: no image files found (expected a directory holding '
                            f'{"/".join(IMAGE_EXTENSIONS)} files, or a glob such as "faces/**/*.jpg")')
  return sorted(paths), root


def calibration_images(workdir: str, count: int, image_size: int, images: str = '') -> np.ndarray:
  """`count` face crops for static int8 calibration -> uint8 [N, S, S, 3]: evenly spaced over the image files
  under `images` (a directory or glob; unreadable files skipped), or, without `images`, over the run's own
  training data (config.json's data source). Center-cropped/resized like verification inputs."""
  from facejax.data.decode import UnreadableImage
  from facejax.data.pipeline import as_rgb_array, center_crop
  if count < 1:
    raise ValueError(f'calibration count={count}: expected >= 1')
  if images:
    paths, _ = find_images(images)
    picked = [paths[i] for i in np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int)]
    crops = []
    for path in picked:
      try:
        crops.append(center_crop(read_image(path), image_size))
      except (OSError, UnreadableImage) as e:  # an unreadable file: skip it
        logging.warning('calibration: skipping %s (%s)', path, e)
    if not crops:
      raise ValueError(f'--calibration_images={images}: none of the {len(picked)} picked files could be read')
    return np.stack(crops)
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f'{config_path}: no training config to take calibration images from (a converted '
                            'model?): pass a folder of face images instead (--calibration_images=DIR)')
  with open(config_path) as f:
    data = json.load(f)['data']
  from facejax.data import make_source
  source = make_source(data['source'], **data.get('kwargs', {}))
  picked = np.linspace(0, len(source) - 1, min(count, len(source))).round().astype(int)
  return np.stack([center_crop(as_rgb_array(source[int(i)]['image']), image_size) for i in picked])


# ---- launch.embed ----

@dataclasses.dataclass
class EmbedResult:
  names: list[str]
  embeddings: np.ndarray
  skipped: list[str]
  summary: Any  # facejax.data.decode.DecodeSummary


def embed_files(embed_fn, image_size: int, paths: list[str], batch_size: int = 64, progress: bool = False,
                root: str = '', align: dict | None = None) -> EmbedResult:
  """Decode, (align,) center-crop and embed image files in fixed-size batches (one compilation); unreadable files
  and, with `align`, photos without a face ('no-face') are skipped and counted, never fatal. names are paths
  relative to `root`."""
  from facejax.data.align import NoFaceError
  from facejax.data.decode import DecodeSummary, UnreadableImage
  from facejax.data.pipeline import center_crop
  summary, names, skipped, out, batch = DecodeSummary(), [], [], [], []

  def flush():
    b = len(batch)
    x = np.stack(batch + [batch[-1]] * (batch_size - b))  # pad: every call has batch_size rows
    out.append(np.asarray(embed_fn(x), np.float32)[:b])
    batch.clear()

  files = paths
  if progress:
    from tqdm import tqdm
    files = tqdm(paths, desc='embed', unit='img')
  for path in files:
    name = os.path.relpath(path, root) if root else path
    try:
      image = align_photo(_decode_file(path), name, align)
    except NoFaceError as e:  # its message starts with the name; the summary prints the name itself
      summary.add_skipped(name, UnreadableImage('no-face', str(e).removeprefix(f'{name}: ')))
      skipped.append(name)
      continue
    except (UnreadableImage, OSError) as e:
      summary.add_skipped(name, e if isinstance(e, UnreadableImage) else UnreadableImage('io-error', str(e)))
      skipped.append(name)
      continue
    summary.add_ok()
    names.append(name)
    batch.append(center_crop(image, image_size))
    if len(batch) == batch_size:
      flush()
  if batch:
    flush()
  embeddings = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
  return EmbedResult(names, embeddings, skipped, summary)


def embed_paths(workdir: str, images: str, out: str, *, flip: str = 'auto', align: str = 'auto',
                batch_size: int = 64, progress: bool = True) -> EmbedResult:
  """Embed every image under a directory / matching a glob with a run's (or an export's) model; write `out`
  (.npz): names [N] str (relative paths), embeddings float32 [N, D] (L2-normalised), skipped [M] str, meta (JSON).

  flip='auto' uses the calibrated flip mode (threshold.json) so distances match its threshold, else the mode baked
  into an export, else none. align: see `resolve_align` ('auto': when the model asks for aligned chips).
  """
  desc = describe_model(workdir)
  if flip == 'auto':
    try:
      flip = read_threshold(workdir)['flip']
    except FileNotFoundError:
      flip = desc['flip'] or ''
  flip = _flip(flip) or ''
  align_spec = resolve_align(align, desc)
  paths, root = find_images(images)
  embed_fn, image_size = load_embedder(workdir, flip)
  result = embed_files(embed_fn, image_size, paths, batch_size=batch_size, progress=progress, root=root,
                       align=align_spec)
  if not result.names:
    raise ValueError(f'--images={images}: none of the {len(paths)} files could be used\n{result.summary.format()}')
  meta = {'workdir': os.path.abspath(workdir), 'step': desc['step'], 'flip': flip or 'none',
          'image_size': image_size, 'align': align_spec, 'root': os.path.abspath(root), 'images': images,
          **result.summary.to_dict()}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = out + '.tmp'
  with open(tmp, 'wb') as f:  # a file object: np.savez would otherwise append '.npz' to the name
    np.savez(f, names=np.asarray(result.names, dtype=str), embeddings=result.embeddings,
             skipped=np.asarray(result.skipped, dtype=str), meta=np.asarray(json.dumps(meta)))
  os.replace(tmp, out)
  return result


# ---- launch.verify ----

def decision_rule(workdir: str, desc: dict | None = None, pairs: str = '') -> dict:
  """The rule verify applies: the calibrated threshold file (`read_threshold(workdir, pairs)`), else (dlib's
  converted net, whose model.json has a "descriptor" entry with "normalised": false) dlib's published rule on raw
  descriptors, marked 'published': True. 'raw': whether the distance is taken between raw embeddings."""
  desc = desc or describe_model(workdir)
  try:
    calibration = read_threshold(workdir, pairs)
    return dict(calibration, raw=calibration.get('embedding') == 'raw', published=False)
  except FileNotFoundError:
    d = desc.get('descriptor')
    if pairs or calibrated_pair_sets(workdir) or desc['kind'] != 'run' or not d or d.get('normalised', True):
      raise
  if d.get('distance', 'euclidean') != 'euclidean' or not isinstance(d.get('threshold'), (int, float)):
    raise ValueError(f'{os.path.join(workdir, "model.json")}: "descriptor" expected a number "threshold" and '
                     f'"distance": "euclidean", got {d}')
  return {'threshold': float(d['threshold']), 'distance': 'euclidean', 'flip': '', 'raw': True, 'published': True,
          'step': None, 'file': None, 'rule': 'same if the euclidean distance of the raw descriptors < threshold', 'chosen_by': DLIB_RULE}


def verify_pair(workdir: str, img_a: str, img_b: str, align: str = 'auto', pairs: str = '') -> dict:
  """Distance between two image files under the model's decision rule (`decision_rule`): RUN/threshold.json
  (`M.jaxexport.threshold.json`), else dlib's published rule for a converted dlib run.

  pairs: the pair set whose calibration to use (RUN/eval/<pairs>/threshold.json); '' the default one.
  Uses the checkpoint the threshold was calibrated on (its step), with the same flip mode and distance. Photos are
  aligned as `resolve_align(align)` says; one without a face is a NoFaceError naming the file.
  -> {'distance', 'threshold', 'same', 'distance_kind', 'raw', 'flip', 'align', 'step', 'latest_step',
  'threshold_file' (None for dlib's rule), 'calibration'}.
  """
  desc = describe_model(workdir)
  calibration = decision_rule(workdir, desc, pairs)
  spec = calibration.get('align') or {}
  align_spec = resolve_align(align, desc, detector=spec.get('detector', 'hog'), upsample=spec.get('upsample', 1))
  # Before loading the model: bad input fails fast.
  photos = [align_photo(read_image(p), p, align_spec) for p in (img_a, img_b)]
  step, latest = calibration.get('step'), desc['step']
  if desc['kind'] == 'run' and step is not None:
    if not os.path.isdir(os.path.join(checkpoint_dir(workdir), str(step), 'state')):
      raise FileNotFoundError(f'{threshold_path(workdir)} was calibrated on checkpoint step {step}, which is gone '
                              f'(latest is {latest}); re-run launch.evaluate on {workdir}')
  raw = calibration['raw']
  embed_fn, image_size = load_embedder(workdir, calibration['flip'], step, raw=raw)
  from facejax.inference.embed import embed_images
  emb = embed_images(embed_fn, photos, image_size, batch_size=2)
  if calibration['published']:  # dlib's rule: plain (not squared) euclidean distance of the raw descriptors
    distance = float(np.linalg.norm(emb[0].astype(np.float64) - emb[1]))
  else:
    distance = float(verification.pair_distances(emb[:1], emb[1:], calibration['distance'])[0])
  threshold = float(calibration['threshold'])
  return {'distance': distance, 'threshold': threshold, 'same': distance < threshold, 'raw': raw,
          'distance_kind': calibration['distance'], 'flip': calibration['flip'] or 'none', 'align': align_spec,
          'step': step if step is not None else latest, 'latest_step': latest,
          'published': calibration['published'], 'threshold_file': calibration['file'], 'calibration': calibration}


def format_verification(v: dict) -> str:
  """The lines launch.verify prints; the last one is exactly 'same' or 'different'."""
  c = v['calibration']
  if v['published']:
    lines = [f'distance: {v["distance"]:.6f} (euclidean distance of raw, un-normalised descriptors)',
             f'threshold: {v["threshold"]:g} ({DLIB_RULE})']
  else:
    kind = 'squared L2' if v['distance_kind'] == 'euclidean' else '1 - cos'
    emb = 'raw' if v['raw'] else 'L2-normalised'
    where = (c.get('pairs') or {}).get('pairs') or (c.get('pairs') or {}).get('source', '?')
    lines = [f'distance: {v["distance"]:.6f} ({v["distance_kind"]}: {kind} of {emb} embeddings, '
             f'flip TTA: {v["flip"]})',
             f'threshold: {v["threshold"]:.6f} (from {v["threshold_file"]}: {c.get("chosen_by", "?")} of '
             f'{c.get("evaluation", "?")}, checkpoint step {v["step"]}; same if distance < threshold)',
             f'calibrated on: pair set {c.get("name") or os.path.basename(str(c.get("evaluation", "?")))} ({where})']
  lines.append(f'faces: {describe_align(v["align"])}')
  if not v['published'] and v['latest_step'] is not None and v['step'] is not None and v['latest_step'] != v['step']:
    lines.append(f'note: the run has a newer checkpoint (step {v["latest_step"]}) that is not calibrated; '
                 f're-run launch.evaluate to use it')
  lines.append('same' if v['same'] else 'different')
  return '\n'.join(lines)
