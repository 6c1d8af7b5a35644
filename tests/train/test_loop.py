"""The trainer: each task learns, exact resume after SIGKILL, device-count invariance, NaN guard, freezing."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from facejax.runs import latest_step, restore_variables
from facejax.train import train
from facejax.train.state import TrainState, make_optimizer
from facejax.train.steps import make_p_train_step
from tests.configs.tiny import get_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


def losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r['loss'] for r in map(json.loads, f) if 'loss' in r]


def run_train(workdir, config_arg='classify', overrides=(), device_count=2, extra_env=None, log=None):
  """launch.train in a subprocess; its output goes to a log file (a pipe nobody reads would block it)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=f'--xla_force_host_platform_device_count={device_count}',
             PYTHONPATH=ROOT, **(extra_env or {}))
  cmd = [sys.executable, '-m', 'launch.train', f'--config=tests/configs/tiny.py:{config_arg}', f'--workdir={workdir}',
         *overrides]
  log = open(log or f'{workdir}.log', 'a')
  p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
  p.log_path = log.name
  return p


def output(p) -> str:
  with open(p.log_path) as f:
    return f.read()[-4000:]


def final_params(workdir):
  return restore_variables(workdir)['params']


def assert_trees_equal(a, b, **tol):
  for (pa, x), (_, y) in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)):
    if tol:
      np.testing.assert_allclose(x, y, err_msg=jax.tree_util.keystr(pa), **tol)
    else:
      np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(pa))


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
  teacher.total_steps = 4
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


def test_exact_resume_after_sigkill(tmp_path):
  """Kill -9 mid-run, re-run on the same workdir: the final params equal an uninterrupted run bitwise."""
  steps = ['--config.total_steps=40', '--config.checkpoint_every=2']
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  p = run_train(straight, overrides=steps)
  assert p.wait() == 0, output(p)
  p = run_train(killed, overrides=steps)
  for _ in range(6000):  # poll every 50 ms, give up after 5 minutes
    if (latest_step(str(killed)) or 0) >= 2:
      break
    assert p.poll() is None, 'run ended before it could be killed: ' + output(p)
    time.sleep(0.05)
  else:
    pytest.fail('no checkpoint appeared within 5 minutes: ' + output(p))
  p.send_signal(signal.SIGKILL)
  p.wait()
  killed_at = latest_step(str(killed))
  assert 2 <= killed_at < 40
  p = run_train(killed, overrides=steps)
  assert p.wait() == 0, output(p)
  with open(killed / 'metrics.jsonl') as f:
    assert json.loads(f.readline())['step'] == 1
  assert_trees_equal(restore_variables(str(killed), 40), restore_variables(str(straight), 40))


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
  distill.hint_weight existed resumes too."""
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
  del saved['data']['augment_on'], saved['distill']['hint_weight']
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


def test_device_count_does_not_change_training(tmp_path):
  """Same global batch on 1 and 8 devices: cross-device BN statistics and pmean'd gradients give the same params
  up to float32 summation order (rtol 1e-4, atol 1e-5 after 4 SGD steps)."""
  runs = {}
  for n in (1, 8):
    p = run_train(tmp_path / f'dev{n}', overrides=['--config.total_steps=4'], device_count=n)
    assert p.wait() == 0, output(p)
    runs[n] = restore_variables(str(tmp_path / f'dev{n}'), 4)
  assert_trees_equal(runs[1], runs[8], rtol=1e-4, atol=1e-5)


def test_two_processes_agree_with_one(tmp_path):
  """2 processes (jax.distributed on 127.0.0.1, 1 CPU device each, disjoint data shards) vs 1 process with
  2 devices: same global batches (augmentation included), same params up to summation order."""
  steps = ['--config.total_steps=4']
  p = run_train(tmp_path / 'single', overrides=steps, device_count=2)
  assert p.wait() == 0, output(p)
  import socket
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  procs = [run_train(tmp_path / 'multi', overrides=steps + [f'--jax_coordinator=127.0.0.1:{port}',
                                                             '--jax_num_processes=2', f'--jax_process_id={i}'],
                     device_count=1, log=f'{tmp_path}/multi{i}.log') for i in range(2)]
  for q in procs:
    assert q.wait(timeout=600) == 0, output(q)
  assert_trees_equal(restore_variables(str(tmp_path / 'single'), 4),
                     restore_variables(str(tmp_path / 'multi'), 4), rtol=1e-4, atol=1e-5)


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


def _cached_and_live(tmp_path, task: str, steps: int, configure, model=lambda c: None):
  """`task` trained from a 2-step tiny teacher twice, its outputs cached and run live -> (the last config, {cache:
  metric records}); `configure(c)` sets the task's own fields, `model(c)` both models'."""
  teacher = get_config()
  teacher.total_steps = 2
  model(teacher)
  train(teacher, str(tmp_path / 'teacher'))
  runs = {}
  for cache in (False, True):
    c = get_config(task)
    c.total_steps = steps
    c.data.augment = False
    c.distill.update(teacher_workdir=str(tmp_path / 'teacher'), cache_teacher=cache)
    model(c)
    configure(c)
    train(c, str(tmp_path / f'cache{cache}'))
    with open(tmp_path / f'cache{cache}' / 'metrics.jsonl') as f:
      runs[cache] = [r for r in map(json.loads, f) if 'loss' in r]
  return c, runs


def test_cached_teacher_outputs_match_running_the_teacher(tmp_path):
  c, runs = _cached_and_live(tmp_path, 'distill', 4, lambda c: c.distill.update(soft_weight=0.5))
  np.testing.assert_allclose([r['loss'] for r in runs[True]], [r['loss'] for r in runs[False]], rtol=1e-4)
  c.data.augment = True
  with pytest.raises(ValueError, match='cache_teacher=True needs config.data.augment=False'):
    train(c, str(tmp_path / 'bad'))


def test_siamese_with_a_mimic_anchor_adds_the_teachers_embedding_loss(tmp_path):
  c, runs = _cached_and_live(tmp_path, 'siamese', 3, lambda c: c.siamese.update(mimic_weight=0.5))
  np.testing.assert_allclose([r['loss'] for r in runs[True]], [r['loss'] for r in runs[False]], rtol=1e-4)
  assert all(r['embed_loss'] > 0 for r in runs[True])
  c.distill.teacher_workdir = ''
  with pytest.raises(ValueError, match='mimic_weight > 0 needs config.distill.teacher_workdir'):
    train(c, str(tmp_path / 'no_teacher'))


def _small_dlib(c, width=0.25):
  c.model.update(name='dlib_resnet', image_size=128, embed_dim=128, preprocessing='dlib')
  c.model.kwargs = ml_collections.ConfigDict(dict(width=width, blocks=(1, 1, 1, 1, 1)))
  c.data.kwargs.update(image_size=128, images_per_identity=4)


def test_distill_hints_from_the_cache_match_the_live_teacher(tmp_path):
  """Each stage of the student regresses the teacher's (FitNets-style hints): cached and live agree, the hint
  term is in the loss, and a narrower student without the channels it was cut from is told what it needs."""
  c, runs = _cached_and_live(tmp_path, 'distill', 3, lambda c: c.distill.update(hint_weight=0.5), _small_dlib)
  np.testing.assert_allclose([r['loss'] for r in runs[True]], [r['loss'] for r in runs[False]], rtol=1e-4)
  for r in runs[True]:
    assert 0 < r['hint_loss'] and r['loss'] == pytest.approx(r['embed_loss'] + 0.5 * r['hint_loss'], rel=1e-5)
  _small_dlib(c, width=0.125)
  with pytest.raises(ValueError, match=r"stage 0 is .* in the student and .* in the teacher.*'stage_channels'"):
    train(c, str(tmp_path / 'narrower'))


def test_hint_channels_come_from_the_cut_students_metadata(tmp_path):
  from facejax.runs import CONVERTED_METADATA
  from facejax.train.tasks import hint_channels
  c = get_config('distill')
  assert hint_channels(c) is None  # hint_weight 0: no hints
  c.distill.hint_weight = 1.0
  assert hint_channels(c) == ()  # no cut student: every channel of every stage
  (tmp_path / CONVERTED_METADATA).write_text(json.dumps({'stage_channels': [[3, 1], [0]]}))
  c.init.path = str(tmp_path)
  assert hint_channels(c) == ((3, 1), (0,))
