"""Test-session setup: CPU only, two host devices so every pmapped path runs with >1 device, compiled for speed
(tests/xla_flags.py), and a persistent XLA compilation cache shared by the tests and the launch scripts they start
(identical tiny configs compile once)."""
import os

from tests.xla_flags import xla_flags

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + xla_flags(2)).strip()
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.pytest_cache', 'jax'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')
