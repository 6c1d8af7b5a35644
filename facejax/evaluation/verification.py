"""Face verification metrics: the LFW 10-fold protocol, ROC/AUC/EER, TAR@FAR and paired comparisons.

Pure numpy. A pair is predicted "same" when `distance < threshold` (strict, as in the classic facenet and
insightface LFW scripts); lower distance means more similar.

Protocol (what `evaluate` computes, so numbers from different runs are comparable):
- Folds: consecutive equal blocks of the pair list (sklearn `KFold(n_splits, shuffle=False)`; on LFW View 2 the
  ten 600-pair blocks of pairs.txt), or explicit fold ids.
- Accuracy: for each fold, the threshold with the best accuracy on the *other* folds (first/smallest one on ties)
  is applied to the held-out fold; `accuracy` is the mean of the fold accuracies, `accuracy_std` their
  population std (ddof=0, as the classic scripts print), `accuracy_sem` the standard error std(ddof=1)/sqrt(k).
- Thresholds: `thresholds=None` searches every distinct split of the training distances exactly (candidates are
  midpoints between consecutive distinct distances, plus one below the smallest and one above the largest); an
  explicit grid (e.g. `np.arange(0, 4, 0.01)`) is searched as given, reproducing the classic per-fold accuracies.
- TAR@FAR (the classic VAL@FAR): per fold, the largest candidate threshold whose FAR on the other folds is
  <= the target; TAR (and the achieved FAR) measured on the held-out fold, averaged over folds. Unlike facenet's
  `calculate_val` there is no linear interpolation of thresholds (FAR is a step function of the threshold).
- ROC, AUC, EER: threshold-free, over all pairs, exact (AUC = Mann-Whitney statistic with ties counted 1/2; EER
  where FAR = FRR on the piecewise-linear ROC). They do not depend on `thresholds` or folds.
- `threshold`: the best-accuracy threshold over all pairs (same search as the folds use); the value a verify
  CLI should apply to new pairs. Its accuracy on those pairs is optimistic; report `accuracy` instead.
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np

DISTANCES = ('euclidean', 'cosine')


def l2_normalise(x) -> np.ndarray:
  """[..., D] -> the same rows scaled to unit L2 norm (all-zero rows stay zero); keeps the dtype."""
  x = np.asarray(x)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pair_distances(emb1, emb2, distance: str = 'euclidean') -> np.ndarray:
  """[N, D], [N, D] -> [N] float64 distances.

  'euclidean': squared L2, `sum((a - b)**2)` (the classic LFW distance; in [0, 4] for L2-normalised embeddings).
  'cosine': `1 - cos(a, b)` in [0, 2] (for L2-normalised embeddings exactly half the squared L2).
  Computed in the embeddings' float precision (at least float32) with the classic scripts' expression, so grid
  thresholds compare against bit-identical distances; returned as float64.
  """
  if distance not in DISTANCES:
    raise ValueError(f'distance: expected one of {DISTANCES}, got {distance!r}')
  emb1, emb2 = _as_float(emb1, 'emb1'), _as_float(emb2, 'emb2')
  if emb1.ndim != 2 or emb1.shape != emb2.shape:
    raise ValueError(f'emb1, emb2: expected two [N, D] arrays of the same shape, got {emb1.shape} and {emb2.shape}')
  for name, emb in (('emb1', emb1), ('emb2', emb2)):
    bad = ~np.all(np.isfinite(emb), axis=1)
    if bad.any():
      raise ValueError(f'{name}: expected finite embeddings, row {int(np.argmax(bad))} has NaN/inf '
                       f'({int(bad.sum())} bad rows in all)')
  if distance == 'euclidean':
    dist = np.sum(np.square(np.subtract(emb1, emb2)), 1)
  else:
    norms = np.linalg.norm(emb1, axis=1) * np.linalg.norm(emb2, axis=1)
    if np.any(norms == 0):
      raise ValueError(f'cosine distance: pair {int(np.argmax(norms == 0))} has a zero-norm embedding')
    dist = 1.0 - np.sum(emb1 * emb2, 1) / norms
  return dist.astype(np.float64)


def kfold_ids(num_pairs: int, num_folds: int = 10) -> np.ndarray:
  """[num_pairs] int fold id per pair: consecutive blocks, the first `num_pairs % num_folds` one longer.

  Identical to the test splits of sklearn `KFold(num_folds, shuffle=False)` used by the classic LFW scripts.
  """
  if num_folds < 2 or num_folds > num_pairs:
    raise ValueError(f'num_folds: expected 2 <= num_folds <= num_pairs={num_pairs}, got {num_folds}')
  sizes = np.full(num_folds, num_pairs // num_folds)
  sizes[:num_pairs % num_folds] += 1
  return np.repeat(np.arange(num_folds), sizes)


def evaluate(emb1, emb2, issame, num_folds: int = 10, distance: str = 'euclidean', thresholds=None, folds=None,
             far_targets: Sequence[float] = (1e-2, 1e-3)) -> dict:
  """Verification metrics for N pairs of embeddings (protocol in the module docstring).

  Args:
    emb1, emb2: [N, D] embeddings of the two images of each pair.
    issame: [N] bool (or 0/1), True for same-identity pairs.
    num_folds: number of consecutive equal folds; ignored when `folds` is given.
    distance: 'euclidean' (squared L2) or 'cosine' (1 - cos).
    thresholds: None for the exact search, or a 1-D array of candidate thresholds searched in the given order.
    folds: optional [N] int fold id per pair (e.g. `VerificationPairs.fold`); overrides `num_folds`.
    far_targets: FARs at which to report TAR.

  Returns a dict: accuracy, accuracy_std (ddof=0), accuracy_sem, fold_accuracies, fold_thresholds, threshold,
  auc, eer, tar_at_far {far: tar}, tar_at_far_std, far_achieved {far: mean held-out FAR},
  roc {'fpr', 'tpr', 'thresholds'} (ascending thresholds), distance, num_pairs, num_folds, fold_sizes,
  folds_digest (fingerprint of folds + labels, checked by `compare`), threshold_search ('exact' or 'grid').
  """
  dist = pair_distances(emb1, emb2, distance)
  result = evaluate_distances(dist, issame, num_folds=num_folds, thresholds=thresholds, folds=folds,
                              far_targets=far_targets)
  result['distance'] = distance
  return result


def evaluate_distances(dist, issame, num_folds: int = 10, thresholds=None, folds=None,
                       far_targets: Sequence[float] = (1e-2, 1e-3)) -> dict:
  """`evaluate` on precomputed [N] distances (lower = same); same arguments and result, `distance` = None."""
  dist = np.asarray(dist)
  if dist.ndim != 1 or not np.issubdtype(dist.dtype, np.number):
    raise ValueError(f'dist: expected a 1-D numeric array, got shape {dist.shape} dtype {dist.dtype}')
  dist = dist.astype(np.float64)
  if not np.all(np.isfinite(dist)):
    raise ValueError(f'dist: expected finite distances, pair {int(np.argmax(~np.isfinite(dist)))} is NaN/inf')
  n = dist.shape[0]
  issame = _as_labels(issame, n)
  folds = _as_folds(folds, n, num_folds)
  fold_names = np.unique(folds)
  for f in fold_names:
    num_pos = int(issame[folds == f].sum())
    if num_pos == 0 or num_pos == int((folds == f).sum()):
      raise ValueError(f'fold {f}: expected both same and different pairs, got {num_pos} same of '
                       f'{int((folds == f).sum())}')
  far_targets = tuple(float(t) for t in far_targets)
  if any(not 0 <= t <= 1 for t in far_targets):
    raise ValueError(f'far_targets: expected FARs in [0, 1], got {far_targets}')
  if thresholds is not None:
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim != 1 or thresholds.size == 0 or not np.all(np.isfinite(thresholds)):
      raise ValueError(f'thresholds: expected a non-empty 1-D array of finite values, got shape {thresholds.shape}')

  fold_acc, fold_thr = [], []
  fold_tar = {t: [] for t in far_targets}
  fold_far = {t: [] for t in far_targets}
  for f in fold_names:
    test = folds == f
    cand, tp, fp = _threshold_counts(dist[~test], issame[~test], thresholds)
    num_pos, num_neg = int(issame[~test].sum()), int((~issame[~test]).sum())
    best = cand[np.argmax(tp + (num_neg - fp))]
    d, y = dist[test], issame[test]
    fold_acc.append(np.sum((d < best) == y) / d.size)
    fold_thr.append(float(best))
    for target in far_targets:
      ok = fp / num_neg <= target
      # Largest threshold meeting the target; if none of a grid does, accept nothing.
      thr = cand[ok].max() if ok.any() else -np.inf
      fold_tar[target].append(np.sum((d < thr) & y) / y.sum())
      fold_far[target].append(np.sum((d < thr) & ~y) / (~y).sum())
  fold_acc = np.asarray(fold_acc)

  cand, tp, fp = _threshold_counts(dist, issame, thresholds)
  threshold = float(cand[np.argmax(tp + (np.sum(~issame) - fp))])
  roc = roc_curve(dist, issame)
  return {
      'accuracy': float(np.mean(fold_acc)),
      'accuracy_std': float(np.std(fold_acc)),
      'accuracy_sem': float(np.std(fold_acc, ddof=1) / np.sqrt(fold_acc.size)),
      'fold_accuracies': [float(a) for a in fold_acc],
      'fold_thresholds': fold_thr,
      'threshold': threshold,
      'auc': auc(roc['fpr'], roc['tpr']),
      'eer': eer(roc['fpr'], roc['tpr']),
      'tar_at_far': {t: float(np.mean(fold_tar[t])) for t in far_targets},
      'tar_at_far_std': {t: float(np.std(fold_tar[t])) for t in far_targets},
      'far_achieved': {t: float(np.mean(fold_far[t])) for t in far_targets},
      'roc': roc,
      'distance': None,
      'num_pairs': n,
      'num_folds': int(fold_names.size),
      'fold_sizes': [int(np.sum(folds == f)) for f in fold_names],
      'folds_digest': _folds_digest(folds, issame),
      'threshold_search': 'exact' if thresholds is None else 'grid',
  }


def roc_curve(dist, issame) -> dict:
  """Exact ROC of `dist < t` over all pairs: {'fpr', 'tpr', 'thresholds'}, [K+1] each for K distinct distances.

  Thresholds ascend from one that accepts nothing (fpr = tpr = 0) to one that accepts everything (1, 1).
  """
  dist, issame = np.asarray(dist, dtype=np.float64), np.asarray(issame, dtype=bool)
  cand, tp, fp = _exact_counts(dist, issame)
  return {'fpr': fp / np.sum(~issame), 'tpr': tp / np.sum(issame), 'thresholds': cand}


def auc(fpr, tpr) -> float:
  """Trapezoid area under a ROC given by points with nondecreasing fpr."""
  fpr, tpr = np.asarray(fpr), np.asarray(tpr)
  return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def eer(fpr, tpr) -> float:
  """Equal error rate: the FAR where FAR = 1 - TPR, linearly interpolated between ROC points (fpr ascending)."""
  fpr, tpr = np.asarray(fpr), np.asarray(tpr)
  gap = fpr - (1 - tpr)  # nondecreasing along the ROC, from -1 to 1
  i = int(np.argmax(gap >= 0))
  if i == 0:
    return float(fpr[0])
  alpha = -gap[i - 1] / (gap[i] - gap[i - 1])
  return float(fpr[i - 1] + alpha * (fpr[i] - fpr[i - 1]))


def compare(result_a: dict, result_b: dict, name_a: str = 'A', name_b: str = 'B') -> dict:
  """Paired comparison of two `evaluate` results on the same pairs and folds: fold accuracy of A minus B.

  Returns {'fold_diffs', 'mean_diff', 'std_diff' (ddof=1), 'sem_diff', 't_stat', 'df', 'p_value' (two-sided
  paired t-test), 'summary'}. The folds share training data, so the test is somewhat optimistic (Nadeau &
  Bengio 2003); treat p-values near 0.05 as inconclusive.
  """
  a, b = np.asarray(result_a['fold_accuracies']), np.asarray(result_b['fold_accuracies'])
  if a.shape != b.shape or a.size < 2:
    raise ValueError(f'compare: expected the same number (>= 2) of fold accuracies, got {a.size} and {b.size}')
  for key in ('num_pairs', 'fold_sizes', 'folds_digest'):
    if key in result_a and key in result_b and result_a[key] != result_b[key]:
      raise ValueError(f'compare: results must come from the same pairs and folds, {key} differs: '
                       f'{result_a[key]} vs {result_b[key]}')
  diffs = a - b
  k = diffs.size
  mean, std = float(np.mean(diffs)), float(np.std(diffs, ddof=1))
  sem = std / math.sqrt(k)
  if sem > 0:
    t_stat = mean / sem
  else:
    t_stat = 0.0 if mean == 0 else math.copysign(math.inf, mean)
  p_value = student_t_two_sided_p(t_stat, k - 1)
  summary = (f'{name_a} - {name_b}: accuracy {100 * mean:+.2f} +- {100 * sem:.2f} pp (mean +- s.e. over {k} '
             f'paired folds), paired t({k - 1}) = {t_stat:.2f}, two-sided p = {p_value:.3g}')
  return {'fold_diffs': [float(d) for d in diffs], 'mean_diff': mean, 'std_diff': std, 'sem_diff': sem,
          't_stat': float(t_stat), 'df': k - 1, 'p_value': p_value, 'summary': summary}


def student_t_two_sided_p(t: float, df: float) -> float:
  """P(|T| >= |t|) for Student's t with `df` degrees of freedom: I_{df/(df+t^2)}(df/2, 1/2)."""
  if df <= 0:
    raise ValueError(f'df: expected > 0, got {df}')
  if math.isinf(t):
    return 0.0
  return _betainc(df / 2, 0.5, df / (df + t * t))


def _betainc(a: float, b: float, x: float) -> float:
  """Regularised incomplete beta I_x(a, b) by its continued fraction (Numerical Recipes `betai`)."""
  if x <= 0:
    return 0.0
  if x >= 1:
    return 1.0
  log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
  # The fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry I_x(a, b) = 1 - I_{1-x}(b, a).
  if x < (a + 1) / (a + b + 2):
    return math.exp(log_front) * _betacf(a, b, x) / a
  return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _betacf(a: float, b: float, x: float, max_iter: int = 500, eps: float = 1e-16) -> float:
  tiny = 1e-300
  c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
  d = 1.0 / (d if abs(d) > tiny else tiny)
  h = d
  for m in range(1, max_iter + 1):
    for aa in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
               -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
      d = 1.0 + aa * d
      d = 1.0 / (d if abs(d) > tiny else tiny)
      c = 1.0 + aa / c
      c = c if abs(c) > tiny else tiny
      h *= d * c
    if abs(d * c - 1.0) < eps:
      break
  return h


def _threshold_counts(dist: np.ndarray, issame: np.ndarray, thresholds):
  """Candidate thresholds and, for each, how many same (tp) and different (fp) pairs have `dist < t`."""
  if thresholds is None:
    return _exact_counts(dist, issame)
  pos, neg = np.sort(dist[issame]), np.sort(dist[~issame])
  return thresholds, np.searchsorted(pos, thresholds, 'left'), np.searchsorted(neg, thresholds, 'left')


def _exact_counts(dist: np.ndarray, issame: np.ndarray):
  """One candidate per distinct split of the sorted distances, ascending: candidate k accepts the k smallest
  distinct values. O(N log N)."""
  order = np.argsort(dist, kind='stable')
  d, y = dist[order], issame[order]
  values, starts = np.unique(d, return_index=True)
  accepted = np.append(starts, d.size)  # candidate k accepts the first accepted[k] sorted pairs
  tp_cum = np.concatenate([[0], np.cumsum(y)])
  tp = tp_cum[accepted]
  fp = accepted - tp
  mid = values[:-1] + (values[1:] - values[:-1]) / 2
  # Neighbouring floats have no midpoint; the upper value itself still splits them under `<`.
  mid = np.where(mid > values[:-1], mid, values[1:])
  low, high = values[0] - 1.0, values[-1] + 1.0
  low = low if low < values[0] else np.nextafter(values[0], -np.inf)
  high = high if high > values[-1] else np.nextafter(values[-1], np.inf)
  return np.concatenate([[low], mid, [high]]), tp, fp


def _folds_digest(folds: np.ndarray, issame: np.ndarray) -> str:
  """Fingerprint of the fold assignment and labels, so `compare` can refuse results from different splits."""
  fold_index = np.unique(folds, return_inverse=True)[1].astype(np.int64)
  return hashlib.sha1(fold_index.tobytes() + issame.astype(np.uint8).tobytes()).hexdigest()[:16]


def _as_float(x, name: str) -> np.ndarray:
  x = np.asarray(x)
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
    raise ValueError(f'{name}: expected a numeric array, got dtype {x.dtype}')
  return x.astype(np.promote_types(x.dtype, np.float32), copy=False)


def _as_labels(issame, n: int) -> np.ndarray:
  issame = np.asarray(issame)
  if issame.shape != (n,):
    raise ValueError(f'issame: expected shape ({n},) (one label per pair), got {issame.shape}')
  if issame.dtype != bool:
    if not np.all((issame == 0) | (issame == 1)):
      raise ValueError(f'issame: expected booleans or 0/1, got values {np.unique(issame)[:5]}')
    issame = issame.astype(bool)
  return issame


def _as_folds(folds, n: int, num_folds: int) -> np.ndarray:
  if folds is None:
    return kfold_ids(n, num_folds)
  folds = np.asarray(folds)
  if folds.shape != (n,) or not np.issubdtype(folds.dtype, np.integer):
    raise ValueError(f'folds: expected ({n},) integer fold ids (one per pair), got shape {folds.shape} '
                     f'dtype {folds.dtype}')
  if np.unique(folds).size < 2:
    raise ValueError(f'folds: expected at least 2 distinct fold ids, got {np.unique(folds)}')
  return folds
