"""The XLA_FLAGS of every test process: pytest's own (tests/conftest.py) and the launch scripts tests start, the same
string for the same device count so that one process's compiled programs are found by the others in the persistent
compilation cache."""
import os

# XLA's CPU compiler at -O0 with its classic LLVM-IR fusion emitters. The suite compiles hundreds of small programs
# and runs each a few times, so compiling is most of its time; compiled this way `make test` takes about half as long
# (issue 37). The programs are the same and every test passes either way; float32 results move by rounding only
# (~1e-7 after a training step). Users' runs keep XLA's defaults; FACEJAX_TEST_XLA_DEFAULTS=1 tests with them too.
FAST_COMPILE = () if os.environ.get('FACEJAX_TEST_XLA_DEFAULTS') else (
    '--xla_backend_optimization_level=0', '--xla_cpu_use_fusion_emitters=false')


def xla_flags(devices: int | None = None) -> str:
  """XLA_FLAGS for a test process: `devices` host CPU devices (None: XLA's one), compiled as every test process is."""
  return ' '.join(([f'--xla_force_host_platform_device_count={devices}'] if devices else []) + list(FAST_COMPILE))
