"""The machine a timing ran on: usable threads, the CPU features the dtype policies depend on, peak memory.

numpy-free and jax-free, so the optimizer (bf16 warning), the benchmarks and the launch scripts share it.
"""
from __future__ import annotations

import os
import resource


def num_threads() -> int:
  """CPU threads this process may use (the XLA CPU thread pool is sized from the same affinity mask)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


CPU_FLAGS = ('avx2', 'avx512f', 'avx512_vnni', 'avx_vnni', 'avx512_bf16', 'amx_bf16', 'amx_int8')  # the dtype policies'


def cpu_info() -> dict:
  """{'cpu': model name, 'cpu_flags': the CPU_FLAGS this machine has} from /proc/cpuinfo (Linux; {} elsewhere):
  recorded with every timing, since bf16 and int8 speed depends on them (AMX: bf16 3-5x float32 matmuls)."""
  try:
    with open('/proc/cpuinfo') as f:
      text = f.read()
  except OSError:
    return {}
  fields = dict(line.split(':', 1) for line in text.split('\n\n')[0].splitlines() if ':' in line)
  fields = {k.strip(): v.strip() for k, v in fields.items()}
  flags = set(fields.get('flags', '').split())
  return {'cpu': fields.get('model name', ''), 'cpu_flags': [f for f in CPU_FLAGS if f in flags]}


def has_bf16_dots(cpu_flags: list[str] | None) -> bool:
  """Whether a CPU with `cpu_flags` (`cpu_info()['cpu_flags']`; None: unknown, assumed yes) has bf16 dot-product
  instructions (avx512_bf16 or AMX): without them bf16 matmuls are emulated and oneDNN has no bf16 convolution."""
  return cpu_flags is None or bool({'avx512_bf16', 'amx_bf16'} & set(cpu_flags))


def has_int8_dots(cpu_flags: list[str] | None) -> bool:
  """Whether a CPU with `cpu_flags` (None: unknown, assumed not) has int8 dot-product instructions (avx512_vnni,
  avx_vnni or AMX int8). Without them oneDNN's x86 int8 kernels multiply u8 x s8 pairs with vpmaddubsw, which
  saturates each pairwise sum to int16 (oneDNN's "Nuances of int8 computations"): their sums are not the exact
  int32 ones, so facejax runs int8 convolutions in oneDNN only where this holds."""
  return bool(cpu_flags and {'avx512_vnni', 'avx_vnni', 'amx_int8'} & set(cpu_flags))


def cpu_text(info: dict) -> str:
  """'MODEL (flag, flag)' of a `cpu_info()` dict, for reports next to their timings."""
  flags = ', '.join(info.get('cpu_flags') or []) or 'none of the listed flags'
  return f"{info.get('cpu') or 'unknown CPU'} ({flags})"


def peak_rss_mb() -> float:
  """Peak resident set size of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
  return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
