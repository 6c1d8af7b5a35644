"""The verification evaluator: embed every image a pair set uses once, then the 10-fold protocol.

`evaluate_pairs` validates a model in memory while training; `evaluate_run` (launch.evaluate, the pipeline)
evaluates a run directory or an export and writes
- RUN/eval/<name>/{config.json, results.json, results.md, roc.png} (`M.jaxexport.eval/<name>/` for an export): one
  evaluation; <name> is config.name or the data source, so LFW and synthetic evaluations sit side by side.
  Re-running replaces them (evaluation is deterministic).
- RUN/eval/<name>/threshold.json: every evaluation's calibration, kept per pair set: the best-accuracy threshold
  over *all* pairs of that evaluation (exact search or the classic grid, as configured; `verification.evaluate`'s
  'threshold'), with the distance kind, the embedding (normalised or raw), the flip mode and the checkpoint step it
  was computed for. A pair is 'same' when distance < threshold.
- RUN/threshold.json (`M.jaxexport.threshold.json`): the calibration `launch.verify` applies by default, written
  only when asked (config.calibrate=True): a second pair set never silently replaces it. `launch.verify
  --pairs=<name>` picks RUN/eval/<name>/threshold.json instead, and verify prints which pairs its threshold came
  from.

Photos of a model that expects aligned chips are aligned first (`facejax.data.align.resolve_align`); one without a
face is kept by the no-face policy config.no_face (`facejax.data.no_face`: second detectors, then the centre
crop) and counted; the protocol says which detector found each face ('faces_found_by'). With config.cache_dir the
chips of a pair set are computed once (in config.workers processes) and shared by every model evaluated on it.

Reference (config.reference='dlib'): dlib's own pipeline (its detector, 5-point predictor, `compute_face_descriptor`
and raw euclidean distance) on the same photos, chips and folds, beside facejax's numbers with normalised and raw
distances, so a difference can be traced to the network, the distance or the chips.
"""
from __future__ import annotations

import json
import os

import ml_collections
import numpy as np

from facejax.data.align import ALIGN_MODES, describe_align, dlib_descriptors, resolve_align
from facejax.data.no_face import FALLBACK_TEXT, POLICIES, check_policy, count_found_by, describe_policy
from facejax.data.pair_chips import aligned_chips
from facejax.data.pairs import load_pairs, resolve_source
from facejax.evaluation import report, verification
from facejax.evaluation.threshold import DLIB_THRESHOLD, THRESHOLD_SEARCH, classic_thresholds
from facejax.inference.embed import flip_mode
from facejax.inference.embedder import describe_model, load_embedder
from facejax.runs import THRESHOLD_FILE, eval_dir, jsonable, threshold_path, write_threshold

EMBEDDINGS = ('normalised', 'raw')
REFERENCES = ('', 'dlib')


def evaluate_pairs(model_io, variables: dict, pairs, *, batch_size: int = 64, flip: str | None = None,
                   distance: str = 'euclidean', thresholds=None) -> dict:
  """model_io: anything with .model, .preprocessing, .image_size (facejax.train.tasks.ModelIO);
  pairs: facejax.data.VerificationPairs. -> `verification.evaluate` result, plus 'embeddings' [N, D]."""
  from facejax.inference.embed import embed_images, make_embed_fn
  embed_fn = make_embed_fn(model_io.model, variables, model_io.preprocessing, model_io.image_size, flip=flip or None)
  emb = embed_images(embed_fn, pairs.images, model_io.image_size, batch_size=batch_size)
  result = verification.evaluate(emb[pairs.left], emb[pairs.right], pairs.issame,
                                 num_folds=int(pairs.fold.max()) + 1, distance=distance, thresholds=thresholds,
                                 folds=pairs.fold)
  result['embeddings'] = emb
  return result


def dlib_reference(pairs, chips: np.ndarray, emb_raw: np.ndarray, config: ml_collections.ConfigDict,
                   thresholds=None) -> dict:
  """dlib's own pipeline on the same chips and folds, beside facejax's raw embeddings of them -> {'rows': {label:
  results row}, 'results': {label: verification.evaluate}, 'dlib_fixed_threshold': accuracy of dlib's published
  rule (raw euclidean < 0.6) mean/std over folds, 'dlib_images_per_s', 'comparison': facejax vs dlib (paired)}."""
  descriptors, dlib_images_per_s = _dlib_descriptors_cached(chips, config.cache_dir, config.workers, config.progress)
  variants = {'facejax, normalised': verification.l2_normalise(emb_raw), 'facejax, raw': emb_raw,
              'dlib native, normalised': verification.l2_normalise(descriptors), 'dlib native, raw': descriptors}
  results, rows = {}, {}
  for label, emb in variants.items():
    results[label] = verification.evaluate(emb[pairs.left], emb[pairs.right], pairs.issame, distance='euclidean',
                                           thresholds=thresholds, folds=pairs.fold)
    rows[label] = report.summary_row(results[label], threshold=results[label]['threshold'])
  same = (np.linalg.norm(descriptors[pairs.left].astype(np.float64) - descriptors[pairs.right], axis=-1)
          < DLIB_THRESHOLD)
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
  flip_mode(config.flip)
  check_policy(config.no_face, 'config.no_face')
  for field, allowed in (('embedding', EMBEDDINGS), ('reference', REFERENCES)):
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


def evaluate_run(config: ml_collections.ConfigDict, workdir: str, step: int | None = None) -> dict:
  """Embed every image the pairs use once, run the 10-fold protocol, write RUN/eval/<name>/ (its threshold.json
  included) and, with config.calibrate, RUN/threshold.json (`M.jaxexport.eval/<name>/` and
  `M.jaxexport.threshold.json` for an export). `step`: a run's checkpoint other than the latest, written to
  RUN/eval/<name>/step_<step>/ and never calibrated (launch.learning_curve).
  Returns {'result' (verification.evaluate), 'row', 'out_dir', 'calibration', 'protocol', 'reference' (or None),
  'calibrated', 'embeddings' [N, D] and 'names' (the pair set's images)}."""
  import time
  from facejax.inference.embed import embed_images
  _check_eval_config(config)
  desc = describe_model(workdir)
  flip = flip_mode(config.flip)
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
  from facejax.inference.optimize import onednn_options
  embed_fn, image_size = load_embedder(workdir, flip, raw=raw, step=step,
                                       optimize=config.optimize and onednn_options())
  pairs, described = load_pairs(config.data, image_size)
  name = config.name or described['source']
  out_dir = eval_dir(workdir, name) if step is None else os.path.join(eval_dir(workdir, name), f'step_{step}')
  calibrate = config.calibrate and step is None
  step = desc['step'] if step is None else step

  images, aligned = pairs.images, None
  if align is not None:
    aligned = aligned_chips(pairs, align, config.no_face, config.cache_dir, config.workers, config.progress)
    images = aligned['chips']
  t0 = time.perf_counter()
  emb = embed_images(embed_fn, images, image_size, batch_size=config.batch_size, progress=config.progress)
  embed_seconds = time.perf_counter() - t0
  emb_raw = emb if raw else None
  if raw and config.embedding == 'normalised':
    emb = verification.l2_normalise(emb)
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
    found_by = aligned['found_by']
    no_face = [pairs.names[k] for k in np.flatnonzero(found_by == 'none')]
    missed = [pairs.names[k] for k in np.flatnonzero((found_by != align['detector']) & aligned['readable'])]
    protocol.update(
        no_face=len(no_face), no_face_images=no_face[:50], no_face_policy=config.no_face,
        no_face_steps=describe_policy(config.no_face), no_face_fallback=FALLBACK_TEXT[POLICIES[config.no_face][1]],
        faces_found_by=count_found_by(found_by),
        detector_missed=len(missed), detector_missed_images=missed[:50],
        no_face_ms_per_photo=1e3 * float(aligned['no_face_seconds']) / max(len(missed), 1),
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
  if calibrate:
    write_threshold(threshold_path(workdir), calibration)
  return {'result': result, 'row': row, 'out_dir': out_dir, 'calibration': calibration, 'protocol': protocol,
          'reference': reference, 'calibrated': bool(calibrate), 'embeddings': emb, 'names': pairs.names}


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
  """'; faces found by hog 7661, mmod 40; ...' for results.md (what found each face, and the no-face policy)."""
  text = ''
  if protocol.get('faces_found_by'):
    text += '; faces found by ' + ', '.join(f'{k} {v}' for k, v in protocol['faces_found_by'].items())
  if protocol.get('detector_missed'):
    steps = POLICIES[protocol['no_face_policy']][0]
    text += (f'; no-face policy {protocol["no_face_policy"]!r} on the {protocol["detector_missed"]} photo(s) the '
             'detector missed' + (f' ({protocol["no_face_steps"]}, {protocol["no_face_ms_per_photo"]:.0f} ms per '
                                  'photo)' if steps else ''))
  if protocol.get('no_face'):
    text += (f'; no face found in {protocol["no_face"]} image(s), kept as the {protocol["no_face_fallback"]} '
             f'(e.g. {protocol["no_face_images"][0]})')
  return text
