"""Calibration and the decision rule: which threshold a pair is judged by, and verifying a pair (launch.verify).

Every evaluation keeps its calibration per pair set in RUN/eval/<name>/threshold.json; RUN/threshold.json is the
default launch.verify applies (`facejax.runs.read_threshold`). A pair is 'same' when distance < threshold.

dlib's rule. A run whose model.json has a "descriptor" entry with "normalised": false (dlib's converted net) and no
threshold.json is verified with its published rule: euclidean distance of the raw (un-normalised) descriptors
< "threshold" (0.6), until launch.evaluate calibrates one on the user's pairs.
"""
from __future__ import annotations

import os

import numpy as np

from facejax.data.align import align_photo, describe_align, resolve_align
from facejax.evaluation import verification
from facejax.inference.embedder import describe_model, load_embedder, read_image
from facejax.runs import calibrated_pair_sets, checkpoint_dir, read_threshold, threshold_path

THRESHOLD_SEARCH = ('exact', 'classic')
DLIB_THRESHOLD = 0.6  # dlib's published rule: same person if the euclidean distance of raw descriptors < 0.6
DLIB_RULE = "dlib's published rule for raw descriptors; run launch.evaluate on your pairs to calibrate"


def classic_thresholds() -> np.ndarray:
  """The classic facenet / insightface LFW grid on squared L2 of normalised embeddings."""
  return np.arange(0, 4, 0.01)


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
