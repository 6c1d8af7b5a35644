"""launch.learning_curve: every kept checkpoint of a run verified, each step equal to evaluating that checkpoint."""
import json
import os

import ml_collections
import numpy as np
import pytest

from configs import lfw_eval
from facejax.evaluation.evaluator import evaluate_run
from facejax.evaluation.learning_curve import learning_curve
from facejax.runs import checkpoint_steps
from facejax.train import train
from tests.cli_process import launch
from tests.configs.tiny import get_config


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """4 classify steps of the tiny config, a checkpoint every 2 and all of them kept (keep_checkpoints=0)."""
  c = get_config('classify')
  c.total_steps, c.checkpoint_every, c.keep_checkpoints = 4, 1, 0
  c.model.image_size = 48
  c.data.kwargs = ml_collections.ConfigDict(dict(num_identities=4, images_per_identity=4, image_size=48))
  workdir = str(tmp_path_factory.mktemp('run'))
  train(c, workdir)
  return workdir


def eval_config():
  c = lfw_eval.get_config()
  c.data.update(num_identities=12, images_per_identity=3, num_folds=2, pairs_per_fold=12)
  c.batch_size, c.progress = 16, False
  return c


def test_keep_zero_keeps_every_checkpoint(run_dir):
  assert checkpoint_steps(run_dir) == [1, 2, 3, 4]


def test_each_point_is_that_checkpoints_evaluation(run_dir):
  curve = learning_curve(eval_config(), run_dir, steps=[1, 4])
  assert [p['step'] for p in curve['points']] == [1, 4]
  assert [p['images_seen'] for p in curve['points']] == [8, 32]  # the tiny config's batch of 8
  latest = evaluate_run(eval_config(), run_dir)  # the latest checkpoint, as launch.evaluate runs it
  assert curve['points'][1]['accuracy'] == latest['result']['accuracy']
  assert curve['points'][1]['auc'] == latest['result']['auc']
  first = json.load(open(os.path.join(run_dir, 'eval', 'synthetic_pairs', 'step_1', 'results.json')))
  assert first['run']['step'] == 1
  assert first['result']['auc'] != latest['result']['auc']  # a different checkpoint gives different embeddings
  for f in ('learning_curve.json', 'learning_curve.md', 'learning_curve.png'):
    assert os.path.isfile(os.path.join(run_dir, 'eval', 'synthetic_pairs', f))


def test_a_step_is_never_calibrated_and_evaluations_are_reused(run_dir):
  threshold = os.path.join(run_dir, 'threshold.json')
  before = os.path.getmtime(threshold) if os.path.exists(threshold) else None
  c = eval_config()
  c.calibrate = True
  learning_curve(c, run_dir, steps=[2])
  after = os.path.getmtime(threshold) if os.path.exists(threshold) else None
  assert after == before
  step_file = os.path.join(run_dir, 'eval', 'synthetic_pairs', 'step_2', 'results.json')
  mtime = os.path.getmtime(step_file)
  curve = learning_curve(eval_config(), run_dir, steps=[2])  # read back, not evaluated again
  assert os.path.getmtime(step_file) == mtime
  assert np.isfinite(curve['points'][0]['accuracy'])


def test_missing_step_and_empty_run_errors(run_dir, tmp_path):
  with pytest.raises(ValueError, match=r'steps \[7\]: not among the checkpoints kept .*keep_checkpoints=0'):
    learning_curve(eval_config(), run_dir, steps=[7])
  proc = launch('learning_curve', '--config=configs/lfw_eval.py', f'--workdir={tmp_path}')
  assert proc.returncode != 0
  assert f'{tmp_path}: no checkpoints' in proc.stderr
