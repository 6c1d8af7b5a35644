"""launch.train as users start it, in subprocesses: exact resume after SIGKILL, the same training on 1 and 8
devices, and in two processes (jax.distributed) as in one."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from facejax.runs import latest_step, restore_variables
from facejax.train import train
from tests.configs.tiny import get_config
from tests.xla_flags import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository


def run_train(workdir, config_arg='classify', overrides=(), device_count=2, extra_env=None, log=None):
  """launch.train in a subprocess; its output goes to a log file (a pipe nobody reads would block it)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=xla_flags(device_count), PYTHONPATH=ROOT, **(extra_env or {}))
  cmd = [sys.executable, '-m', 'launch.train', f'--config=tests/configs/tiny.py:{config_arg}', f'--workdir={workdir}',
         *overrides]
  log = open(log or f'{workdir}.log', 'a')
  p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
  p.log_path = log.name
  return p


def output(p) -> str:
  with open(p.log_path) as f:
    return f.read()[-4000:]


def assert_trees_equal(a, b, **tol):
  for (pa, x), (_, y) in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)):
    if tol:
      np.testing.assert_allclose(x, y, err_msg=jax.tree_util.keystr(pa), **tol)
    else:
      np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(pa))


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
  # The one process is this one (2 devices, tests/conftest.py) with the config launch.train builds from these flags:
  # the same run as a third subprocess, without its start-up and compilations.
  single = get_config('classify')
  single.total_steps = 4
  train(single, str(tmp_path / 'single'))
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
