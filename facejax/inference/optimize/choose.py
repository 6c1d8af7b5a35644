"""dtype='auto': the fastest dtype policy (and conv lowering) on the CPU at hand whose embeddings agree
with float32.

No fixed per-CPU table: the candidates the CPU can run (bfloat16 only with avx512_bf16 or AMX, where the dots have
hardware support; int8 everywhere, static scales when calibration faces are given; float32 also with each of
`convs`, e.g. XLA's native convs, which win on AVX2-only CPUs; bfloat16, and int8 with calibration faces, also
with oneDNN's convs when `convs` holds 'onednn') are compiled and timed here, interleaved, and the fastest one
whose embeddings stay within `min_cosine` of float32's on held-out faces wins. What the rule gave on each CPU
kind: docs/cpu_inference.md.
"""
from __future__ import annotations

import time
from typing import Sequence

import jax
import numpy as np

from facejax.inference import hardware

# Lowest per-face cosine to the float32 embedding a lower-precision path may have (docs/cpu_inference.md: the
# LFW View 2 accuracy of paths above it, next to the command that measures it).
MIN_COSINE = 0.995


def candidate_dtypes(cpu_flags: list[str] | None) -> list[str]:
  """float32, bfloat16 where the CPU has bf16 dot instructions (emulated bf16 is slower than float32), int8."""
  if jax.default_backend() != 'cpu':
    return ['float32']
  return ['float32'] + (['bfloat16'] if hardware.has_bf16_dots(cpu_flags) else []) + ['int8']


def choose_dtype(model, variables, *, image_size: int, check: np.ndarray, calibration: np.ndarray | None = None,
                 batch_size: int = 1, min_cosine: float = MIN_COSINE, rounds: int = 5, calls: int = 3,
                 conv: str = 'auto', convs: Sequence[str] = ()) -> dict:
  """Time every candidate dtype policy of `optimize_for_inference` at `batch_size` (with `conv`; float32 also
  with each of `convs`; bfloat16, and int8 when `calibration` is given, also with 'onednn' if there) and pick
  the fastest whose embeddings of `check` (float model inputs [N, S, S, 3], faces not in `calibration`) have a
  per-face cosine of at least `min_cosine` to float32's. int8 uses static scales from `calibration` when given.

  -> {'dtype', 'conv', 'calibrated', 'batch_size', 'min_cosine', 'candidates': {name: {'dtype', 'conv',
  'ms_median', 'min_cosine', 'agrees'}}, 'cpu', 'cpu_flags'}, a candidate named by its dtype ('float32/xla',
  'bfloat16/onednn', 'int8/onednn' with another conv); float32 always agrees, so it is the fallback."""
  from facejax.inference.optimize import optimize_for_inference
  info = hardware.cpu_info()
  check = np.asarray(check, np.float32)
  n, b = len(check), batch_size
  # The check faces in batches of `batch_size` (the tail padded by repeating them), so one executable per
  # candidate both embeds them and is timed.
  batches = np.resize(check, (-(-n // b) * b,) + check.shape[1:]).reshape((-1, b) + check.shape[1:])
  dtypes = candidate_dtypes(info.get('cpu_flags'))
  paths = {d: (d, conv) for d in dtypes}
  paths.update({f'float32/{c}': ('float32', c) for c in convs if c != conv})
  if 'onednn' in convs and conv != 'onednn':
    if 'bfloat16' in dtypes:
      paths['bfloat16/onednn'] = ('bfloat16', 'onednn')
    if calibration is not None:  # oneDNN's int8 convs need static activation scales
      paths['int8/onednn'] = ('int8', 'onednn')
  if conv == 'onednn' and calibration is None:
    paths.pop('int8')  # likewise
  compiled, agreement, reference = {}, {}, None
  for name, (dtype, lowering) in paths.items():
    fn = optimize_for_inference(model, variables, image_size=image_size, conv=lowering, dtype=dtype,
                                calibration=calibration if dtype == 'int8' else None)
    exe = jax.jit(fn).lower(batches[0]).compile(compiler_options=fn.compiler_options or None)
    emb = np.concatenate([np.asarray(exe(batch)) for batch in batches])[:n]
    reference = emb if reference is None else reference
    agreement[name] = float(np.min(np.sum(emb * reference, axis=1)))
    compiled[name] = exe
  x = jax.numpy.asarray(batches[0])  # on the device once: the timed calls copy nothing
  times = {d: [] for d in compiled}
  for _ in range(rounds):  # interleaved, so a busy moment slows every candidate alike
    for name, exe in compiled.items():
      t0 = time.perf_counter()
      for _ in range(calls):
        jax.block_until_ready(exe(x))
      times[name].append((time.perf_counter() - t0) / calls * 1e3)
  candidates = {name: {'dtype': dtype, 'conv': lowering, 'ms_median': round(float(np.median(times[name])), 3),
                       'min_cosine': round(agreement[name], 6),
                       'agrees': dtype == 'float32' or agreement[name] >= min_cosine}
                for name, (dtype, lowering) in paths.items()}
  best = min((c for c in candidates.values() if c['agrees']), key=lambda c: c['ms_median'])
  return {'dtype': best['dtype'], 'conv': best['conv'], 'calibrated': best['dtype'] == 'int8' and
          calibration is not None, 'batch_size': batch_size, 'min_cosine': min_cosine, 'candidates': candidates,
          **info}
