"""Identity leakage between a training set and a test set's people, checked by face (numpy only).

Training identities with anonymous names (CelebA's numbers) may be test people (LFW's). Each identity is reduced
to the L2-normalised mean of its images' normalised embeddings (a big, frozen face model's); a training identity
whose mean lies closer than a threshold (squared L2) to a test person's mean is a suspected overlap.

The threshold is calibrated on the test people themselves (`identity_threshold`): a single-pair verification
threshold does not transfer to means (averaging brings different people's means closer too, so with thousands of
test people every training identity would have some test person within it). Each test person with >= 2 images is
split into two halves; the threshold is the `far` quantile of the distance from one half's mean to the nearest
*other* person (so about `far` of truly new identities get flagged by chance), and the fraction of people whose two
halves lie closer than it says how often a true overlap would be caught.
"""
from __future__ import annotations

import numpy as np

from facejax.evaluation.verification import l2_normalise


def identity_means(embeddings: np.ndarray, identities) -> tuple[list[str], np.ndarray]:
  """float [N, D] embeddings and N identity names -> (sorted unique names, float32 [K, D] L2-normalised means)."""
  identities = np.asarray([str(i) for i in identities])
  if len(identities) != len(embeddings):
    raise ValueError(f'identities: expected one per embedding ({len(embeddings)}), got {len(identities)}')
  names, inverse = np.unique(identities, return_inverse=True)
  sums = np.zeros((len(names), embeddings.shape[1]), np.float64)
  np.add.at(sums, inverse, embeddings)
  means = l2_normalise(sums)
  return [str(n) for n in names], means.astype(np.float32)


def identity_threshold(embeddings: np.ndarray, identities, far: float = 0.01) -> dict:
  """Mean-to-mean threshold from the test people (see the module docstring) -> {'threshold', 'far', 'recall'
  (people whose halves' means are closer than it), 'people' (with >= 2 images)}."""
  embeddings = np.asarray(embeddings, np.float32)
  names, means = identity_means(embeddings, identities)
  identities = np.asarray([str(i) for i in identities])
  index = {n: k for k, n in enumerate(names)}
  halves, owners = [], []
  for name in names:
    rows = np.flatnonzero(identities == name)
    if len(rows) >= 2:
      for half in (rows[0::2], rows[1::2]):
        halves.append(embeddings[half].sum(0))
      owners.append(index[name])
  if not owners:
    raise ValueError('identity_threshold: no test person has >= 2 images to calibrate on')
  halves = l2_normalise(np.asarray(halves, np.float64))
  a, b = halves[0::2], halves[1::2]
  genuine = np.maximum(2.0 - 2.0 * np.sum(a * b, axis=1), 0.0)
  to_all = np.maximum(2.0 - 2.0 * a @ means.T.astype(np.float64), 0.0)
  to_all[np.arange(len(owners)), owners] = np.inf  # the nearest *other* person
  threshold = float(np.quantile(to_all.min(axis=1), far))
  return {'threshold': threshold, 'far': float(far), 'recall': float(np.mean(genuine < threshold)),
          'people': len(owners)}


def leakage_check(train_emb: np.ndarray, train_ids, test_emb: np.ndarray, test_ids, threshold: float,
                  nearest: int = 10) -> dict:
  """-> {'threshold', 'train_identities', 'test_identities', 'suspects': [{'train', 'test', 'distance'}] (every
  training identity whose nearest test person is closer than `threshold`, closest first), 'nearest': the
  `nearest` closest (training, test) identity pairs whatever their distance, 'distance_quantiles' of each
  training identity's nearest test distance (min, 1 %, 5 %, median)}."""
  train_names, train_means = identity_means(np.asarray(train_emb, np.float32), train_ids)
  test_names, test_means = identity_means(np.asarray(test_emb, np.float32), test_ids)
  dist = np.maximum(2.0 - 2.0 * train_means @ test_means.T, 0.0)  # squared L2 of unit vectors
  closest = dist.argmin(axis=1)
  closest_d = dist[np.arange(len(train_names)), closest]
  order = np.argsort(closest_d, kind='stable')
  pairs = [{'train': train_names[i], 'test': test_names[closest[i]], 'distance': float(closest_d[i])}
           for i in order]
  return {'threshold': float(threshold), 'train_identities': len(train_names), 'test_identities': len(test_names),
          'suspects': [p for p in pairs if p['distance'] < threshold], 'nearest': pairs[:nearest],
          'distance_quantiles': {q: float(np.quantile(closest_d, float(q))) for q in ('0', '0.01', '0.05', '0.5')}}


def leakage_text(check: dict) -> str:
  """A markdown paragraph for reports."""
  s = check['suspects']
  cal = check.get('calibration')
  how = (f' (calibrated on {cal["people"]} test people split in halves: {100 * cal["far"]:g} % of new identities '
         f'flagged by chance, {100 * cal["recall"]:.1f} % of true overlaps caught)' if cal else '')
  lines = [f'Identity leakage (by face): {check["train_identities"]} training identities against '
           f'{check["test_identities"]} test people, suspected when identity means are closer than '
           f'{check["threshold"]:.4f} (squared L2){how}: **{len(s)} suspected**'
           + (f', {"dropped from training" if check.get("dropped") else "kept (leakage.drop=False)"}' if s else '')
           + '.']
  q = check['distance_quantiles']
  lines.append(f'Nearest test person per training identity: min {q["0"]:.4f}, 1 % {q["0.01"]:.4f}, '
               f'5 % {q["0.05"]:.4f}, median {q["0.5"]:.4f}.')
  lines.append('Closest pairs: ' + ', '.join(f'{p["train"]} ~ {p["test"]} ({p["distance"]:.4f})'
                                             for p in check['nearest'][:max(5, len(s))]) + '.')
  return '\n'.join(lines) + '\n'
