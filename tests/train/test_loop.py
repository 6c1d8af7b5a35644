"""The trainer in this process: each task learns, NaN guard, freezing and the config guard, device-side augmentation,
checkpoints, periodic validation. Runs in subprocesses (SIGKILL, device counts, two processes): test_processes.py;
cached and live teachers: test_teacher_cache.py."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from facejax.runs import restore_variables
from facejax.train import train
from facejax.train.state import TrainState, make_optimizer
from facejax.train.steps import make_p_train_step
from tests.configs.tiny import get_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


def losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r['loss'] for r in map(json.loads, f) if 'loss' in r]


@pytest.mark.parametrize('task', ['classify', 'siamese'])
def test_task_reduces_loss(tmp_path, task):
  c = get_config(task)
  c.total_steps = 30
  c.optim.learning_rate = 0.1 if task == 'classify' else 0.03
  c.data.augment = False
  train(c, str(tmp_path))
  ls = losses(str(tmp_path))
  assert np.mean(ls[-5:]) < 0.8 * np.mean(ls[:5]), ls


def test_distill_reduces_loss_and_matches_teacher(tmp_path):
  teacher = get_config('classify')
  teacher.total_steps = 2  # as the other 2-step classify runs here and in test_teacher_cache.py: one compile
  train(teacher, str(tmp_path / 'teacher'))
  c = get_config('distill')
  c.total_steps = 30
  c.optim.learning_rate = 0.1
  c.data.augment = False
  c.model.kwargs.width = 0.125
  c.distill.teacher_workdir = str(tmp_path / 'teacher')
  c.distill.soft_weight = 0.5
  train(c, str(tmp_path / 'student'))
  ls = losses(str(tmp_path / 'student'))
  assert np.mean(ls[-5:]) < 0.8 * np.mean(ls[:5]), ls


def test_nonfinite_step_is_skipped_and_counted():
  """A batch that makes the loss NaN leaves params and optimizer state untouched and is counted."""
  params = {'w': jnp.ones((3,))}

  def loss_fn(params, batch_stats, batch, frozen, rng):
    loss = jnp.sum(params['w'] ** 2) * batch['scale'].mean()
    return loss, ({'loss': loss}, batch_stats)

  cfg = get_config().optim
  cfg.schedule = 'constant'
  tx, schedule = make_optimizer(cfg, 10, params)
  zero = jnp.zeros((), jnp.int32)
  state = TrainState(step=zero, params=params, batch_stats={}, opt_state=tx.init(params), rng=jax.random.PRNGKey(0),
                     nonfinite_total=zero, nonfinite_streak=zero)
  n = jax.local_device_count()
  p_step = make_p_train_step(loss_fn, tx, schedule)
  from flax import jax_utils
  pstate = jax_utils.replicate(state)
  for scale, changed in ((1.0, True), (np.nan, False), (np.inf, False), (1.0, True)):
    before = np.asarray(pstate.params['w'])
    pstate, metrics = p_step(pstate, {'scale': np.full((n, 2), scale, np.float32)}, jax_utils.replicate({}))
    assert (not np.array_equal(np.asarray(pstate.params['w']), before)) == changed
    assert np.all(np.isfinite(np.asarray(pstate.params['w'])))
  assert int(pstate.nonfinite_total[0]) == 2 and int(pstate.nonfinite_streak[0]) == 0 and int(pstate.step[0]) == 4


def test_too_many_nonfinite_steps_stop_the_run(tmp_path):
  c = get_config()
  c.total_steps = 12
  c.optim.learning_rate = 1e30  # first update overflows the params; every later loss is NaN
  c.optim.clip_norm = 0.0
  c.max_nonfinite_streak = 3
  with pytest.raises(FloatingPointError, match=r'step \d+: \d+ consecutive non-finite steps'):
    train(c, str(tmp_path))


def test_transfer_freezing_and_config_guard(tmp_path):
  source = get_config()
  source.total_steps = 2
  train(source, str(tmp_path / 'source'))
  c = get_config()
  c.total_steps = 4
  c.init.path = str(tmp_path / 'source')
  c.optim.freeze = ('backbone/conv1_1', 'backbone/bn1_1')
  train(c, str(tmp_path / 'frozen'))
  src, out = restore_variables(str(tmp_path / 'source')), restore_variables(str(tmp_path / 'frozen'))
  np.testing.assert_array_equal(out['params']['backbone']['conv1_1']['kernel'],
                                src['params']['backbone']['conv1_1']['kernel'])
  assert not np.array_equal(out['params']['backbone']['conv2_1']['kernel'],
                            src['params']['backbone']['conv2_1']['kernel'])
  # Re-running the finished run returns at once; a changed config is refused with the field named.
  assert train(c, str(tmp_path / 'frozen')) == {'step': 4, 'resumed_finished': True}
  c.optim.learning_rate = 0.5
  with pytest.raises(ValueError, match=r'different config.*optim.learning_rate.*--config.resume=override'):
    train(c, str(tmp_path / 'frozen'))


def test_augment_on_device_trains_like_the_host_and_old_workdirs_resume(tmp_path):
  """data.augment_on='device' trains on the host's draws made into pixels on the devices: the first loss matches
  the host-augmented run's. A workdir saved before the field existed resumes under its default ('host'), and one
  saved before config.val took the pair-set schema (val.source='synthetic', val.kwargs) or before
  distill.hint_weight or the cosine classifier (model.classifier, cosine_scale, classify.margin) existed resumes
  too."""
  first = {}
  for where in ('host', 'device'):
    c = get_config()
    c.total_steps, c.data.augment_on = 2, where
    train(c, str(tmp_path / where))
    first[where] = losses(str(tmp_path / where))
  assert np.isfinite(first['device']).all() and first['device'][0] == pytest.approx(first['host'][0], rel=1e-2)
  assert first['device'][0] != first['host'][0]  # the images did come from device_augment
  path = tmp_path / 'host' / 'config.json'
  saved = json.loads(path.read_text())
  del saved['data']['augment_on'], saved['distill']['hint_weight'], saved['classify']['margin']
  del saved['model']['classifier'], saved['model']['cosine_scale']
  saved['val'] = {'source': 'synthetic', 'kwargs': saved['val'].pop('synthetic')}
  path.write_text(json.dumps(saved))
  c = get_config()
  c.total_steps = 2
  assert train(c, str(tmp_path / 'host')) == {'step': 2, 'resumed_finished': True}
  c.data.augment_on = 'device'
  with pytest.raises(ValueError, match=r"data.augment_on: 'host' -> 'device'"):
    train(c, str(tmp_path / 'host'))


def test_checkpoint_restores_without_model_code(tmp_path):
  c = get_config()
  c.total_steps = 2
  train(c, str(tmp_path))
  code = ('import sys, orbax.checkpoint as ocp; '
          f'tree = ocp.StandardCheckpointer().restore({str(tmp_path / "checkpoints" / "2" / "state")!r}); '
          'assert not any(m.startswith("facejax") for m in sys.modules); '
          'print(sorted(tree), int(tree["step"]), sorted(tree["params"]))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
  assert "2 ['backbone', 'classifier', 'embedding']" in out


def test_periodic_validation_and_tensorboard(tmp_path):
  c = get_config()
  c.total_steps = 4
  c.eval_every = 2
  c.val.synthetic = ml_collections.ConfigDict(dict(num_identities=6, images_per_identity=2, image_size=16,
                                                   identity_offset=1000, num_folds=2, pairs_per_fold=4))
  train(c, str(tmp_path))
  with open(tmp_path / 'metrics.jsonl') as f:
    val = [r for r in map(json.loads, f) if 'val_accuracy' in r]
  assert [r['step'] for r in val] == [2, 4] and all(0 <= r['val_accuracy'] <= 1 for r in val)
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(tmp_path / 'tb'))
