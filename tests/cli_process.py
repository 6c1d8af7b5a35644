"""Run a launch script the way a user does: `python -m launch.<script> ...` in a subprocess from the repo root (one CPU
device, compiled as the tests are: tests/xla_flags.py)."""
import os
import subprocess
import sys

from tests.xla_flags import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(script: str, *args: str) -> subprocess.CompletedProcess:
  """-> the finished process (stdout/stderr captured as text); one CPU device, 120 s limit."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, XLA_FLAGS=xla_flags())
  return subprocess.run([sys.executable, '-m', f'launch.{script}', *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)
