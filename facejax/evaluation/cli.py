"""What `launch.evaluate`, `launch.embed` and `launch.verify` do: evaluate a run, embed image files, verify a pair.

Files in a run directory RUN:
- RUN/eval/<name>/{config.json, results.json, results.md, roc.png}: one evaluation (`evaluate_run`); <name> is
  config.name or the data source, so LFW and synthetic evaluations of one run sit side by side. Re-running
  replaces them (evaluation is deterministic).
- RUN/threshold.json: the calibrated decision rule `launch.verify` applies, written by `evaluate_run` (unless
  config.calibrate is False): the best-accuracy threshold over *all* pairs of that evaluation (exact search or the
  classic grid, as configured; `verification.evaluate`'s 'threshold'), with the distance kind, the flip mode and
  the checkpoint step it was computed for. A pair is 'same' when distance < threshold.

Every model is reached through `load_embedder(path, flip, step) -> (embed_fn, image_size)`: the one place that
turns a run directory (later also an exported `.jaxexport` artifact) into a function
uint8 [B, S, S, 3] RGB -> float32 [B, D] L2-normalised embeddings.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Callable

import ml_collections
import numpy as np

from facejax.evaluation import report, verification

THRESHOLD_FILE = 'threshold.json'
FLIP_MODES = ('', 'sum', 'concat')
THRESHOLD_SEARCH = ('exact', 'classic')
SOURCES = ('auto', 'lfw', 'synthetic_pairs')
EXPORT_SUFFIX = '.jaxexport'
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

def load_embedder(path: str, flip: str | None = '', step: int | None = None) -> tuple[Callable[[Any], Any], int]:
  """Run directory -> (embed_fn, image_size): embed_fn(uint8 [B, S, S, 3] RGB) -> [B, D] L2-normalised
  ([B, 2D] for flip='concat'), jitted; S = image_size. `step`: checkpoint step (default the latest).

  This is the only place the CLIs turn a path into a model. Exported artifacts (`*.jaxexport`, written by
  facejax.inference.export) plug in here once `facejax.inference.load_exported` exists.
  """
  if path.endswith(EXPORT_SUFFIX):
    raise ValueError(f'{path}: exported artifacts ({EXPORT_SUFFIX}) are not supported by the CLIs yet; '
                     f'pass a run directory (model.json + checkpoints/)')
  if not os.path.isdir(path):
    raise FileNotFoundError(f'run directory {path} does not exist (expected a launch.train workdir with '
                            f'model.json and checkpoints/<step>/)')
  from facejax.inference.embed import make_embed_fn
  from facejax.train.checkpoint import load_run
  model, variables, info = load_run(path, step)
  image_size = int(info['image_size'])
  return make_embed_fn(model, variables, info['preprocessing_obj'], image_size, flip=_flip(flip)), image_size


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

def _check_eval_config(config: ml_collections.ConfigDict) -> None:
  _flip(config.flip)
  if config.distance not in verification.DISTANCES:
    raise ValueError(f'config.distance={config.distance!r}: expected one of {verification.DISTANCES}')
  if config.thresholds not in THRESHOLD_SEARCH:
    raise ValueError(f'config.thresholds={config.thresholds!r}: expected one of {THRESHOLD_SEARCH}')
  if config.batch_size < 1:
    raise ValueError(f'config.batch_size={config.batch_size}: expected >= 1')
  resolve_source(config.data)


def evaluate_run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Embed every image the pairs use once, run the 10-fold protocol, write RUN/eval/<name>/ and (calibrate)
  RUN/threshold.json. Returns {'result' (verification.evaluate), 'row', 'out_dir', 'calibration' (or None)}."""
  from facejax.inference.embed import embed_images
  from facejax.train.checkpoint import latest_step, read_model_info
  _check_eval_config(config)
  embed_fn, image_size = load_embedder(workdir, config.flip)
  step, info = latest_step(workdir), read_model_info(workdir)
  pairs, described = load_pairs(config.data, image_size)
  name = config.name or described['source']
  out_dir = os.path.join(workdir, 'eval', name)

  emb = embed_images(embed_fn, pairs.images, image_size, batch_size=config.batch_size, progress=config.progress)
  thresholds = classic_thresholds() if config.thresholds == 'classic' else None
  result = verification.evaluate(emb[pairs.left], emb[pairs.right], pairs.issame, distance=config.distance,
                                 thresholds=thresholds, folds=pairs.fold)
  dist = verification.pair_distances(emb[pairs.left], emb[pairs.right], config.distance)
  train_accuracy = float(np.mean((dist < result['threshold']) == pairs.issame))

  run_name = os.path.basename(os.path.normpath(os.path.abspath(workdir)))
  row = report.summary_row(result, threshold=result['threshold'])
  protocol = {
      **described, 'pairs_total': len(pairs), 'images': len(pairs.images), 'folds': result['num_folds'],
      'distance': config.distance, 'flip': config.flip or 'none', 'thresholds': config.thresholds,
      'accuracy': 'mean over folds; each fold uses the best-accuracy threshold of the other folds',
      'accuracy_std': 'std over folds, ddof=0', 'threshold': 'best accuracy over all pairs (same if distance < t)',
  }
  run = {'workdir': os.path.abspath(workdir), 'model': info['name'], 'step': step, 'image_size': image_size}
  details = {k: v for k, v in result.items() if k not in ('roc', 'embeddings')}
  details['accuracy_at_threshold'] = train_accuracy

  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
  with open(os.path.join(out_dir, 'results.json'), 'w') as f:
    json.dump(report.jsonable({'models': {run_name: row}, 'run': run, 'protocol': protocol, 'result': details}),
              f, indent=2)
  with open(os.path.join(out_dir, 'results.md'), 'w') as f:
    f.write(results_text(run_name, row, result, protocol, run, train_accuracy))
  report.plot_roc({run_name: result}, os.path.join(out_dir, 'roc.png'),
                  title=f'{run_name} on {described["source"]} ({len(pairs)} pairs)')

  calibration = None
  if config.calibrate:
    calibration = {
        'threshold': result['threshold'], 'distance': config.distance, 'flip': config.flip or '',
        'rule': 'same if distance < threshold',
        'chosen_by': f'best accuracy over all {len(pairs)} pairs ({config.thresholds} threshold search)',
        'accuracy_at_threshold': train_accuracy, 'cv_accuracy': result['accuracy'],
        'cv_accuracy_std': result['accuracy_std'], 'step': step, 'image_size': image_size,
        'evaluation': os.path.relpath(out_dir, workdir), 'pairs': described,
    }
    write_threshold(workdir, calibration)
  return {'result': result, 'row': row, 'out_dir': out_dir, 'calibration': calibration, 'protocol': protocol}


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
          f'- accuracy: mean over folds (threshold chosen on the other folds), +- std ddof=0; '
          f's.e. {100 * result["accuracy_sem"]:.2f}\n'
          f'- fold accuracies (%): {folds}\n'
          f'- TAR: {tar}\n'
          f'- calibrated threshold (best accuracy over all pairs): {result["threshold"]:.6g} '
          f'({100 * train_accuracy:.2f}% on these pairs, optimistic)\n')


def write_threshold(workdir: str, calibration: dict) -> str:
  path = os.path.join(workdir, THRESHOLD_FILE)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(report.jsonable(calibration), f, indent=2)
  os.replace(tmp, path)  # verify never reads a half-written file
  return path


def read_threshold(workdir: str) -> dict:
  """RUN/threshold.json -> dict (threshold, distance, flip, step, ...); errors say how to create it."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'run directory {workdir} does not exist')
  path = os.path.join(workdir, THRESHOLD_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} not found: this run has no calibrated threshold; run '
                            f'`python -m launch.evaluate --config=configs/lfw_eval.py --workdir={workdir}` first')
  with open(path) as f:
    try:
      calibration = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: not valid JSON ({e}); re-run launch.evaluate') from None
  missing = [k for k in ('threshold', 'distance', 'flip') if k not in calibration]
  if missing or not isinstance(calibration['threshold'], (int, float)):
    raise ValueError(f'{path}: expected a number "threshold" and "distance", "flip" entries, missing {missing}; '
                     f're-run launch.evaluate')
  return calibration


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


# ---- launch.embed ----

@dataclasses.dataclass
class EmbedResult:
  names: list[str]
  embeddings: np.ndarray
  skipped: list[str]
  summary: Any  # facejax.data.decode.DecodeSummary


def embed_files(embed_fn, image_size: int, paths: list[str], batch_size: int = 64, progress: bool = False,
                root: str = '') -> EmbedResult:
  """Decode, center-crop and embed image files in fixed-size batches (one compilation); unreadable files are
  skipped and counted, never fatal. names are paths relative to `root`."""
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
      image = _decode_file(path)
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


def embed_paths(workdir: str, images: str, out: str, *, flip: str = 'auto', batch_size: int = 64,
                progress: bool = True) -> EmbedResult:
  """Embed every image under a directory / matching a glob with the run's model; write `out` (.npz):
  names [N] str (relative paths), embeddings float32 [N, D], skipped [M] str, meta (JSON string).

  flip='auto' uses the run's calibrated flip mode (threshold.json) so distances match its threshold, else none.
  """
  calibration = None
  if flip == 'auto':
    try:
      calibration = read_threshold(workdir)
    except FileNotFoundError:
      pass
    flip = calibration['flip'] if calibration else ''
  flip = _flip(flip) or ''
  paths, root = find_images(images)
  embed_fn, image_size = load_embedder(workdir, flip)
  result = embed_files(embed_fn, image_size, paths, batch_size=batch_size, progress=progress, root=root)
  if not result.names:
    raise ValueError(f'--images={images}: none of the {len(paths)} files could be read\n{result.summary.format()}')
  from facejax.train.checkpoint import latest_step
  meta = {'workdir': os.path.abspath(workdir), 'step': latest_step(workdir), 'flip': flip or 'none',
          'image_size': image_size, 'root': os.path.abspath(root), 'images': images, **result.summary.to_dict()}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = out + '.tmp'
  with open(tmp, 'wb') as f:  # a file object: np.savez would otherwise append '.npz' to the name
    np.savez(f, names=np.asarray(result.names, dtype=str), embeddings=result.embeddings,
             skipped=np.asarray(result.skipped, dtype=str), meta=np.asarray(json.dumps(meta)))
  os.replace(tmp, out)
  return result


# ---- launch.verify ----

def verify_pair(workdir: str, img_a: str, img_b: str) -> dict:
  """Distance between two image files under the run's calibrated rule (RUN/threshold.json).

  Uses the checkpoint the threshold was calibrated on (its step), with the same flip mode and distance.
  -> {'distance', 'threshold', 'same', 'distance_kind', 'flip', 'step', 'latest_step', 'threshold_file',
  'calibration'}.
  """
  from facejax.train.checkpoint import checkpoint_dir, latest_step
  calibration = read_threshold(workdir)
  images = [read_image(img_a), read_image(img_b)]  # before loading the model: bad input fails fast
  step, latest = calibration.get('step'), latest_step(workdir)
  if step is not None and not os.path.isdir(os.path.join(checkpoint_dir(workdir), str(step), 'state')):
    raise FileNotFoundError(f'{os.path.join(workdir, THRESHOLD_FILE)} was calibrated on checkpoint step {step}, '
                            f'which is gone (latest is {latest}); re-run launch.evaluate on {workdir}')
  embed_fn, image_size = load_embedder(workdir, calibration['flip'], step)
  from facejax.inference.embed import embed_images
  emb = embed_images(embed_fn, images, image_size, batch_size=2)
  distance = float(verification.pair_distances(emb[:1], emb[1:], calibration['distance'])[0])
  threshold = float(calibration['threshold'])
  return {'distance': distance, 'threshold': threshold, 'same': distance < threshold,
          'distance_kind': calibration['distance'], 'flip': calibration['flip'] or 'none', 'step': step,
          'latest_step': latest, 'threshold_file': os.path.join(workdir, THRESHOLD_FILE), 'calibration': calibration}


def format_verification(v: dict) -> str:
  """The lines launch.verify prints; the last one is exactly 'same' or 'different'."""
  c = v['calibration']
  kind = 'squared L2' if v['distance_kind'] == 'euclidean' else '1 - cos'
  lines = [f'distance: {v["distance"]:.6f} ({v["distance_kind"]}: {kind} of L2-normalised embeddings, '
           f'flip TTA: {v["flip"]})',
           f'threshold: {v["threshold"]:.6f} (from {v["threshold_file"]}: {c.get("chosen_by", "?")} of '
           f'{c.get("evaluation", "?")}, checkpoint step {v["step"]}; same if distance < threshold)']
  if v['latest_step'] is not None and v['step'] is not None and v['latest_step'] != v['step']:
    lines.append(f'note: the run has a newer checkpoint (step {v["latest_step"]}) that is not calibrated; '
                 f're-run launch.evaluate to use it')
  lines.append('same' if v['same'] else 'different')
  return '\n'.join(lines)
