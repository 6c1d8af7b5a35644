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

from facejax.train import checkpoint as ckpt
from facejax.train import train
from facejax.train.state import TrainState, make_optimizer
from facejax.train.steps import make_p_train_step
from tests.configs.tiny import get_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
  return ckpt.restore_variables(workdir)['params']


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
  deadline = time.time() + 300
  while (ckpt.latest_step(str(killed)) or 0) < 2:
    assert p.poll() is None, 'run ended before it could be killed: ' + output(p)
    assert time.time() < deadline, 'no checkpoint appeared'
    time.sleep(0.05)
  p.send_signal(signal.SIGKILL)
  p.wait()
  killed_at = ckpt.latest_step(str(killed))
  assert 2 <= killed_at < 40
  p = run_train(killed, overrides=steps)
  assert p.wait() == 0, output(p)
  with open(killed / 'metrics.jsonl') as f:
    assert json.loads(f.readline())['step'] == 1
  assert_trees_equal(ckpt.restore_variables(str(killed), 40), ckpt.restore_variables(str(straight), 40))
