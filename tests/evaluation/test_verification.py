"""Verification protocol: hand-computed toys, invariances, and agreement with a facenet-style O(N*T) reference."""
import json

import numpy as np
import pytest

from facejax.evaluation import report, verification as V
from facejax.runs import jsonable

GRID = np.arange(0, 4, 0.01)  # the classic facenet / insightface LFW grid


# ---- Independent reference, modelled on facenet's lfw.py (calculate_roc / calculate_val), loops and all. ----

def ref_kfold_split(n, k):
  """sklearn KFold(n_splits=k, shuffle=False).split: consecutive test blocks, first n % k one longer."""
  fold_sizes = np.full(k, n // k, dtype=int)
  fold_sizes[:n % k] += 1
  current = 0
  for size in fold_sizes:
    test = np.arange(current, current + size)
    yield np.setdiff1d(np.arange(n), test), test
    current += size


def ref_calculate_accuracy(threshold, dist, actual_issame):
  predict_issame = np.less(dist, threshold)
  tp = np.sum(np.logical_and(predict_issame, actual_issame))
  fp = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
  tn = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(actual_issame)))
  fn = np.sum(np.logical_and(np.logical_not(predict_issame), actual_issame))
  tpr = 0 if (tp + fn == 0) else float(tp) / float(tp + fn)
  fpr = 0 if (fp + tn == 0) else float(fp) / float(fp + tn)
  return tpr, fpr, float(tp + tn) / dist.size


def ref_candidates(dist):
  """Exact-search candidates by brute force: below, between and above the distinct distances."""
  u = np.unique(dist)
  return np.concatenate([[u[0] - 1], (u[:-1] + u[1:]) / 2, [u[-1] + 1]])


def ref_calculate_roc(thresholds, dist, actual_issame, nrof_folds=10):
  """Per-fold accuracies and thresholds; `thresholds=None` means ref_candidates of the training fold."""
  accuracy, best = [], []
  for train_set, test_set in ref_kfold_split(len(dist), nrof_folds):
    ths = ref_candidates(dist[train_set]) if thresholds is None else thresholds
    acc_train = np.zeros(len(ths))
    for threshold_idx, threshold in enumerate(ths):
      _, _, acc_train[threshold_idx] = ref_calculate_accuracy(threshold, dist[train_set], actual_issame[train_set])
    best_threshold_index = np.argmax(acc_train)
    best.append(ths[best_threshold_index])
    accuracy.append(ref_calculate_accuracy(ths[best_threshold_index], dist[test_set], actual_issame[test_set])[2])
  return np.array(accuracy), np.array(best)


def ref_calculate_val(thresholds, dist, actual_issame, far_target, nrof_folds=10):
  """calculate_val, with the threshold = largest one whose training FAR <= target (no interp1d)."""
  val = []
  for train_set, test_set in ref_kfold_split(len(dist), nrof_folds):
    ths = ref_candidates(dist[train_set]) if thresholds is None else thresholds
    d, y = dist[train_set], actual_issame[train_set]
    far_train = np.array([np.sum((d < t) & ~y) / np.sum(~y) for t in ths])
    threshold = max(ths[far_train <= far_target]) if np.any(far_train <= far_target) else -np.inf
    d, y = dist[test_set], actual_issame[test_set]
    val.append(np.sum((d < threshold) & y) / np.sum(y))
  return np.mean(val)


def ref_auc(dist, issame):
  """Mann-Whitney: P(d_diff > d_same) + P(tie) / 2, over all same x different pairs."""
  pos, neg = dist[issame][:, None], dist[~issame][None, :]
  return np.mean((neg > pos) + 0.5 * (neg == pos))


def classic_dist(e1, e2):
  return np.sum(np.square(np.subtract(e1, e2)), 1)


def random_pairs(n=600, dim=8, noise=1.0, seed=0):
  """L2-normalised float32 embeddings, alternating same/different blocks as in pairs.txt."""
  rng = np.random.default_rng(seed)
  issame = np.tile(np.repeat([True, False], 30), n // 60)
  e1 = rng.normal(size=(n, dim)).astype(np.float32)
  e2 = np.where(issame[:, None], e1, rng.normal(size=(n, dim))) + noise * rng.normal(size=(n, dim))
  e2 = e2.astype(np.float32)
  e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
  e2 /= np.linalg.norm(e2, axis=1, keepdims=True)
  return e1, e2, issame


# ---- Fold assignment. ----

def test_kfold_ids_are_the_classic_consecutive_blocks():
  np.testing.assert_array_equal(V.kfold_ids(23, 5), [0] * 5 + [1] * 5 + [2] * 5 + [3] * 4 + [4] * 4)
  np.testing.assert_array_equal(V.kfold_ids(6000, 10), np.repeat(np.arange(10), 600))
  for n, k in [(600, 10), (601, 10), (37, 4), (10, 10)]:
    ids = V.kfold_ids(n, k)
    for f, (_, test) in enumerate(ref_kfold_split(n, k)):
      np.testing.assert_array_equal(np.flatnonzero(ids == f), test)


# ---- Hand-computed toys. ----

def test_perfectly_separable():
  dist = np.array([0.1, 0.2, 0.9, 1.0] * 3)
  issame = np.array([True, True, False, False] * 3)
  r = V.evaluate_distances(dist, issame, num_folds=3)
  assert r['accuracy'] == 1 and r['accuracy_std'] == 0 and r['fold_accuracies'] == [1, 1, 1]
  assert r['threshold'] == pytest.approx(0.55) and r['fold_thresholds'] == pytest.approx([0.55] * 3)
  assert r['auc'] == 1 and r['eer'] == 0 and r['tar_at_far'] == {1e-2: 1, 1e-3: 1}
  g = V.evaluate_distances(dist, issame, num_folds=3, thresholds=GRID)
  assert g['accuracy'] == 1 and g['threshold'] == GRID[21]  # first grid value above 0.2


def test_all_equal_distances():
  issame = np.array([True, False, False, False] * 4)
  r = V.evaluate_distances(np.ones(16), issame, num_folds=4)
  # Only "accept none" (12/16 right) or "accept all" (4/16): every fold rejects everything.
  assert r['fold_accuracies'] == [0.75] * 4 and r['threshold'] == 0.0
  assert r['auc'] == 0.5 and r['eer'] == 0.5 and r['tar_at_far'] == {1e-2: 0, 1e-3: 0}
  np.testing.assert_array_equal(r['roc']['fpr'], [0, 1])
  # Balanced: both candidates tie and the first (smallest) threshold wins, as argmax does classically.
  r = V.evaluate_distances(np.full(8, 2.0), np.array([True, False] * 4), num_folds=2)
  assert r['threshold'] == 1.0 and r['accuracy'] == 0.5


def test_ties_at_the_threshold():
  # fold 0: 0.2 same, 0.9 diff; fold 1: 0.5 same, 0.5 diff (a same/diff tie).
  dist = np.array([0.2, 0.9, 0.5, 0.5])
  issame = np.array([True, False, True, False])
  r = V.evaluate_distances(dist, issame, num_folds=2)
  # fold 0 trains on {0.5, 0.5}: accept none (-0.5) ties accept all (1.5), first wins -> 0.2 rejected -> 1/2.
  # fold 1 trains on {0.2, 0.9}: 0.55 -> both 0.5s accepted -> 1/2.
  assert r['fold_thresholds'] == pytest.approx([-0.5, 0.55]) and r['fold_accuracies'] == [0.5, 0.5]
  # All pairs: splits below 0.2 / 0.5 / 0.9 / above get 2, 3, 3, 2 right; first best is 0.35.
  assert r['threshold'] == pytest.approx(0.35)
  assert r['auc'] == 0.875  # 3.5 of 4 (same, diff) orderings, the 0.5/0.5 tie counting 1/2
  assert r['eer'] == pytest.approx(0.25)  # between ROC points (0, .5) and (.5, 1)
  # A grid value equal to a distance: `dist < t` rejects the tied pairs.
  g = V.evaluate_distances(dist, issame, num_folds=2, thresholds=[0.5, 0.6])
  assert g['fold_thresholds'] == [0.5, 0.5] and g['fold_accuracies'] == [1.0, 0.5] and g['threshold'] == 0.5


# ---- Agreement with the reference. ----

@pytest.mark.parametrize('seed', [0, 1])
def test_grid_reproduces_classic_calculate_roc(seed):
  e1, e2, issame = random_pairs(seed=seed)
  r = V.evaluate(e1, e2, issame, thresholds=GRID)
  acc, best = ref_calculate_roc(GRID, classic_dist(e1, e2), issame)
  assert 0.6 < r['accuracy'] < 0.95  # a non-trivial problem
  assert r['fold_accuracies'] == acc.tolist() and r['fold_thresholds'] == best.tolist()
  assert r['accuracy'] == np.mean(acc) and r['accuracy_std'] == np.std(acc)
  # Distances that sit exactly on grid values: the strict `<` must match too.
  rng = np.random.default_rng(seed)
  on_grid = GRID[rng.integers(40, 160, size=600) + 60 * ~issame]
  r = V.evaluate_distances(on_grid, issame, thresholds=GRID)
  acc, best = ref_calculate_roc(GRID, on_grid, issame)
  assert r['fold_accuracies'] == acc.tolist() and r['fold_thresholds'] == best.tolist()


@pytest.mark.parametrize('rounding', [None, 2])
def test_exact_search_matches_bruteforce_reference(rounding):
  e1, e2, issame = random_pairs(seed=3)
  dist = classic_dist(e1, e2).astype(np.float64)
  if rounding is not None:
    dist = np.round(dist, rounding)  # many ties
  r = V.evaluate_distances(dist, issame)
  acc, best = ref_calculate_roc(None, dist, issame)
  assert r['fold_accuracies'] == acc.tolist() and r['fold_thresholds'] == pytest.approx(best.tolist(), abs=1e-12)
  # The chosen threshold is optimal on the training folds among *all* possible splits.
  for (train, _), t in zip(ref_kfold_split(600, 10), r['fold_thresholds']):
    d, y = dist[train], issame[train]
    best_split = max(np.mean((d <= v) == y) for v in np.append(d, -np.inf))
    assert np.mean((d < t) == y) == best_split
  # Over all pairs, exact search is at least as accurate as the grid.
  g = V.evaluate_distances(dist, issame, thresholds=GRID)
  assert np.mean((dist < r['threshold']) == issame) >= np.mean((dist < g['threshold']) == issame)


@pytest.mark.parametrize('thresholds', [None, GRID])
def test_tar_at_far_matches_reference(thresholds):
  e1, e2, issame = random_pairs(noise=0.6, seed=4)
  r = V.evaluate(e1, e2, issame, thresholds=thresholds, far_targets=(1e-1, 1e-2, 1e-3))
  dist = classic_dist(e1, e2).astype(np.float64)
  for far in (1e-1, 1e-2, 1e-3):
    assert r['tar_at_far'][far] == pytest.approx(ref_calculate_val(thresholds, dist, issame, far), abs=1e-15)
  assert r['tar_at_far'][1e-1] >= r['tar_at_far'][1e-2] >= r['tar_at_far'][1e-3]
  assert 0 < r['tar_at_far'][1e-2] < 1


def test_auc_and_roc_match_references():
  e1, e2, issame = random_pairs(seed=5)
  dist = np.round(classic_dist(e1, e2).astype(np.float64), 2)
  r = V.evaluate_distances(dist, issame)
  assert r['auc'] == pytest.approx(ref_auc(dist, issame), abs=1e-12)
  # ROC points by brute force at every candidate, and the trapezoid rule over them.
  ths = ref_candidates(dist)
  tpr = np.array([np.mean(dist[issame] < t) for t in ths])
  fpr = np.array([np.mean(dist[~issame] < t) for t in ths])
  np.testing.assert_allclose(r['roc']['thresholds'], ths, atol=1e-12)
  np.testing.assert_array_equal(r['roc']['tpr'], tpr)
  np.testing.assert_array_equal(r['roc']['fpr'], fpr)
  assert r['auc'] == pytest.approx(np.trapezoid(tpr, fpr), abs=1e-12)


def test_eer_sanity():
  e1, e2, issame = random_pairs(seed=6)
  r = V.evaluate(e1, e2, issame)
  fpr, fnr = r['roc']['fpr'], 1 - r['roc']['tpr']
  # The crossing lies between the best "lower" and "upper" ROC corners.
  assert np.max(np.minimum(fpr, fnr)) <= r['eer'] <= np.min(np.maximum(fpr, fnr))
  assert 0.05 < r['eer'] < 0.4 and r['eer'] == pytest.approx(1 - r['accuracy'], abs=0.1)
  # Pure noise: EER ~ 0.5, AUC ~ 0.5.
  rng = np.random.default_rng(0)
  noise = V.evaluate_distances(rng.uniform(size=4000), np.tile([True, False], 2000))
  assert abs(noise['eer'] - 0.5) < 0.05 and abs(noise['auc'] - 0.5) < 0.05


# ---- Invariances. ----

def _assert_same_result(a, b):
  for key in a:
    if key == 'folds_digest':
      continue  # fingerprints the pair order on purpose
    if key == 'roc':
      for k in a['roc']:
        np.testing.assert_array_equal(a['roc'][k], b['roc'][k])
    else:
      assert a[key] == b[key], key


@pytest.mark.parametrize('distance', ['euclidean', 'cosine'])
def test_symmetric_in_the_two_embeddings(distance):
  e1, e2, issame = random_pairs(seed=7)
  _assert_same_result(V.evaluate(e1, e2, issame, distance=distance), V.evaluate(e2, e1, issame, distance=distance))


@pytest.mark.parametrize('thresholds', [None, GRID])
def test_invariant_to_pair_order_within_folds(thresholds):
  e1, e2, issame = random_pairs(seed=8)
  rng = np.random.default_rng(0)
  r = V.evaluate(e1, e2, issame, thresholds=thresholds)
  within = np.concatenate([600 // 10 * f + rng.permutation(60) for f in range(10)])
  _assert_same_result(r, V.evaluate(e1[within], e2[within], issame[within], thresholds=thresholds))
  # Any order, if the folds travel with the pairs (fold ids need not be 0..k-1).
  anywhere = rng.permutation(600)
  folds = 10 * V.kfold_ids(600, 10) + 7
  _assert_same_result(r, V.evaluate(e1[anywhere], e2[anywhere], issame[anywhere], thresholds=thresholds,
                                    folds=folds[anywhere]))
  # Not invariant to re-blocking: shuffling across default folds changes which pairs train which fold.
  shuffled = V.evaluate(e1[anywhere], e2[anywhere], issame[anywhere], thresholds=thresholds)
  assert shuffled['fold_accuracies'] != r['fold_accuracies'] and shuffled['auc'] == pytest.approx(r['auc'])


def test_cosine_is_half_squared_l2_on_normalised_embeddings():
  e1, e2, issame = random_pairs(seed=9)
  euc, cos = V.evaluate(e1, e2, issame), V.evaluate(e1, e2, issame, distance='cosine')
  # Exact search scales with the distance, so only float rounding differs (no near-ties in this data).
  assert cos['fold_accuracies'] == euc['fold_accuracies'] and cos['auc'] == pytest.approx(euc['auc'])
  assert 2 * cos['threshold'] == pytest.approx(euc['threshold'], rel=1e-5)
  # Cosine ignores embedding scale; squared L2 does not, but exact-search accuracy does not care.
  scaled = V.evaluate(3 * e1, 3 * e2, issame)
  assert scaled['fold_accuracies'] == euc['fold_accuracies']
  assert V.evaluate(3 * e1, e2, issame, distance='cosine')['fold_accuracies'] == cos['fold_accuracies']


# ---- Errors. ----

@pytest.mark.parametrize('kwargs, match', [
    (dict(emb2=np.zeros((5, 4))), 'same shape'),
    (dict(issame=np.ones(7, bool)), r'issame: expected shape \(6,\)'),
    (dict(issame=np.array([0, 1, 2, 0, 1, 0])), 'booleans or 0/1'),
    (dict(emb1=np.where(np.arange(6)[:, None] == 4, np.nan, 1.0) * np.ones((6, 4))), 'emb1: .* row 4'),
    (dict(distance='l1'), 'distance: expected one of'),
    (dict(num_folds=1), 'num_folds: expected 2 <='),
    (dict(num_folds=7), 'num_folds: expected 2 <='),
    (dict(issame=np.array([True, True, True, False, False, False])), 'fold 0: expected both same and different'),
    (dict(thresholds=[0.1, np.nan]), 'thresholds: expected'),
    (dict(folds=np.zeros(6, int)), 'folds: expected at least 2'),
    (dict(folds=np.zeros(5, int)), r'folds: expected \(6,\)'),
    (dict(far_targets=(2.0,)), 'far_targets'),
])
def test_clear_errors(kwargs, match):
  rng = np.random.default_rng(0)
  args = dict(emb1=rng.normal(size=(6, 4)), emb2=rng.normal(size=(6, 4)),
              issame=np.array([True, False] * 3), num_folds=3)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    V.evaluate(**args)


def test_cosine_rejects_zero_embeddings():
  with pytest.raises(ValueError, match='pair 1 has a zero-norm'):
    V.pair_distances(np.ones((3, 2)), np.array([[1, 0], [0, 0], [0, 1]]), 'cosine')


# ---- Paired comparison. ----

def test_compare_matches_scipy_paired_t_test():
  stats = pytest.importorskip('scipy.stats')
  e1, e2, issame = random_pairs(seed=10)
  _, e3, _ = random_pairs(noise=0.9, seed=10)
  a, b = V.evaluate(e1, e3, issame), V.evaluate(e1, e2, issame)
  c = V.compare(a, b, 'better', 'worse')
  ref = stats.ttest_rel(a['fold_accuracies'], b['fold_accuracies'])
  assert c['t_stat'] == pytest.approx(ref.statistic, rel=1e-12) and c['p_value'] == pytest.approx(ref.pvalue, rel=1e-9)
  assert c['mean_diff'] == pytest.approx(a['accuracy'] - b['accuracy']) and c['df'] == 9
  assert c['summary'].startswith('better - worse: accuracy +') and 'paired t(9)' in c['summary']
  same = V.compare(a, a)
  assert same['mean_diff'] == 0 and same['p_value'] == 1
  with pytest.raises(ValueError, match='folds_digest differs'):
    V.compare(a, V.evaluate(e1, e2, issame, folds=np.arange(600) % 10))


def test_student_t_p_value_matches_scipy():
  stats = pytest.importorskip('scipy.stats')
  for df in (1, 2, 5, 9, 29, 200):
    for t in (0.0, 0.3, 1.0, 2.26, 4.0, 12.0, -3.0):
      assert V.student_t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9, abs=1e-300)
  assert V.student_t_two_sided_p(float('inf'), 9) == 0


# ---- Reports. ----

def test_reports(tmp_path):
  e1, e2, issame = random_pairs(seed=11)
  results = {'teacher': V.evaluate(e1, e2, issame), 'student': V.evaluate(e1, e2, issame, distance='cosine')}
  report.plot_roc(results, tmp_path / 'roc.png')
  assert (tmp_path / 'roc.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  rows = {'teacher': report.summary_row(results['teacher'], params=138_000_000, gflops=15.5, cpu_ms_b1=80.0),
          'student': report.summary_row(results['student'])}
  table = report.results_markdown(rows)
  assert table.count('\n') == 4 and '| teacher | 138.00M | 15.5 | 80.00 |' in table
  assert '| student | - | - | - |' in table
  assert f'{100 * results["teacher"]["accuracy"]:.2f} +- ' in table
  text = json.dumps(jsonable({'models': rows, 'result': results['teacher']}), allow_nan=False)
  assert json.loads(text)['result']['tar_at_far']['0.001'] == results['teacher']['tar_at_far'][1e-3]
