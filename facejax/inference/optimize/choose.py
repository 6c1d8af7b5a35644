"""dtype='auto': the fastest dtype policy (and conv lowering) on the CPU at hand whose embeddings agree
with float32.

No fixed per-CPU table: the candidates the CPU can run (`candidate_paths`: bfloat16 only with avx512_bf16 or AMX,
where the dots have hardware support; int8 everywhere, static scales when calibration faces are given, and in
oneDNN only with VNNI or AMX int8, where its int32 sums are exact; float32 also with each of `convs`, e.g. XLA's
native convs, which win on AVX2-only CPUs) are compiled and timed here, interleaved, and the fastest one whose
embeddings stay within `min_cosine` of float32's on held-out faces wins (`choose_fastest`). `choose_export` does
this on the serialized artifacts themselves, ONNX Runtime on facejax's ONNX export among them, so what is checked
is what is deployed. What the rule gave on each CPU kind: docs/cpu_inference.md.
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Callable, Sequence

import jax
import numpy as np

from facejax.inference import hardware

if TYPE_CHECKING:
  from facejax.inference.export import ExportedEmbedder

# Lowest per-face cosine to the float32 embedding a lower-precision path may have (docs/cpu_inference.md: the
# LFW View 2 accuracy of paths above it, next to the command that measures it).
MIN_COSINE = 0.995
ORT = 'float32/ort'  # choose_export's ONNX Runtime candidate


def candidate_paths(cpu_flags: list[str] | None, *, conv: str = 'auto', convs: Sequence[str] = (),
                    calibrated: bool = False) -> dict[str, tuple[str, str]]:
  """name -> (dtype, conv lowering) of every policy worth timing on a CPU with `cpu_flags`, the float32 reference
  with `conv` first: bfloat16 where the CPU has bf16 dot instructions (emulated bf16 is slower than float32);
  int8; float32 also with each of `convs`; bfloat16 and int8 also with 'onednn' when in `convs`. oneDNN's int8
  convs need static scales (`calibrated`) and int8 dot instructions (`hardware.has_int8_dots`)."""
  if jax.default_backend() != 'cpu':
    return {'float32': ('float32', conv)}
  bf16 = hardware.has_bf16_dots(cpu_flags)
  onednn_int8 = calibrated and hardware.has_int8_dots(cpu_flags)
  paths = {d: (d, conv) for d in ['float32'] + (['bfloat16'] if bf16 else []) + ['int8']}
  if conv == 'onednn' and not onednn_int8:
    paths.pop('int8')
  paths.update({f'float32/{c}': ('float32', c) for c in convs if c != conv})
  if 'onednn' in convs and conv != 'onednn':
    if bf16:
      paths['bfloat16/onednn'] = ('bfloat16', 'onednn')
    if onednn_int8:
      paths['int8/onednn'] = ('int8', 'onednn')
  return paths


def choose_fastest(embedders: dict[str, Callable], check: np.ndarray, *, batch_size: int = 1,
                   min_cosine: float = MIN_COSINE, rounds: int = 5, calls: int = 3) -> dict:
  """Embed `check` (what the embedders take, [N, ...]) with each of `embedders` (name -> fn(batch) -> [b, D]
  L2-normalised; the first is the reference) in batches of `batch_size`, the tail padded by repeating faces,
  then time each on one batch, interleaved, so a busy moment slows every candidate alike.

  -> {'best': the fastest name whose per-face cosine to the reference's embedding is >= `min_cosine` (the
  reference always agrees), 'candidates': {name: {'ms_median', 'min_cosine', 'agrees'}}}"""
  check = np.asarray(check)
  n, b = len(check), batch_size
  batches = np.resize(check, (-(-n // b) * b,) + check.shape[1:]).reshape((-1, b) + check.shape[1:])
  agreement, reference = {}, None
  for name, fn in embedders.items():
    emb = np.concatenate([np.asarray(fn(batch)) for batch in batches])[:n]
    reference = emb if reference is None else reference
    agreement[name] = float(np.min(np.sum(emb * reference, axis=1)))
  times = {name: [] for name in embedders}
  for _ in range(rounds):
    for name, fn in embedders.items():
      t0 = time.perf_counter()
      for _ in range(calls):
        jax.block_until_ready(fn(batches[0]))
      times[name].append((time.perf_counter() - t0) / calls * 1e3)
  first = next(iter(embedders))
  candidates = {name: {'ms_median': round(float(np.median(times[name])), 3), 'min_cosine': round(agreement[name], 6),
                       'agrees': name == first or agreement[name] >= min_cosine} for name in embedders}
  best = min((name for name, c in candidates.items() if c['agrees']), key=lambda name: candidates[name]['ms_median'])
  return {'best': best, 'candidates': candidates}


def _choice(found: dict, paths: dict, *, calibrated: bool, batch_size: int, min_cosine: float) -> dict:
  """choose_fastest's result -> the record `choose_dtype` and `choose_export` return (module docstrings)."""
  candidates = {name: {'dtype': dtype, 'conv': lowering, **found['candidates'][name]}
                for name, (dtype, lowering) in paths.items()}
  best = candidates[found['best']]
  return {'dtype': best['dtype'], 'conv': best['conv'], 'calibrated': best['dtype'] == 'int8' and calibrated,
          'batch_size': batch_size, 'min_cosine': min_cosine, 'candidates': candidates, **hardware.cpu_info()}


def choose_dtype(model, variables, *, image_size: int, check: np.ndarray, calibration: np.ndarray | None = None,
                 batch_size: int = 1, min_cosine: float = MIN_COSINE, rounds: int = 5, calls: int = 3,
                 conv: str = 'auto', convs: Sequence[str] = ()) -> dict:
  """Time every `candidate_paths` policy of `optimize_for_inference` at `batch_size` (jitted in this process)
  and pick the fastest whose embeddings of `check` (float model inputs [N, S, S, 3], faces not in
  `calibration`) have a per-face cosine of at least `min_cosine` to float32's. int8 uses static scales from
  `calibration` when given.

  -> {'dtype', 'conv', 'calibrated', 'batch_size', 'min_cosine', 'candidates': {name: {'dtype', 'conv',
  'ms_median', 'min_cosine', 'agrees'}}, 'cpu', 'cpu_flags'}, a candidate named by its dtype ('float32/xla',
  'bfloat16/onednn', 'int8/onednn' with another conv); float32 always agrees, so it is the fallback."""
  from facejax.inference.optimize import optimize_for_inference
  check = np.asarray(check, np.float32)
  paths = candidate_paths(hardware.cpu_info().get('cpu_flags'), conv=conv, convs=convs,
                          calibrated=calibration is not None)
  embedders = {}
  for name, (dtype, lowering) in paths.items():
    fn = optimize_for_inference(model, variables, image_size=image_size, conv=lowering, dtype=dtype,
                                calibration=calibration if dtype == 'int8' else None)
    embedders[name] = jax.jit(fn).lower(check[:batch_size]).compile(compiler_options=fn.compiler_options or None)
  found = choose_fastest(embedders, check, batch_size=batch_size, min_cosine=min_cosine, rounds=rounds, calls=calls)
  return _choice(found, paths, calibrated=calibration is not None, batch_size=batch_size, min_cosine=min_cosine)


def ort_unavailable() -> str | None:
  """None when ONNX Runtime and the ONNX exporter are installed; else what to install."""
  import importlib.util
  missing = [m for m in ('onnxruntime', 'jax2onnx', 'onnx') if importlib.util.find_spec(m) is None]
  return f"{', '.join(missing)} not installed (pip install 'facejax[bench]')" if missing else None


def choose_export(model, variables, preprocessing, image_size: int, *, check: np.ndarray,
                  calibration: np.ndarray | None = None, batch_size: int = 1, conv: str = 'auto',
                  convs: Sequence[str] = (), flip: str | None = None, platforms: Sequence[str] = ('cpu',),
                  onnx_dir: str | None = None, min_cosine: float = MIN_COSINE, rounds: int = 5,
                  calls: int = 3) -> tuple[dict, 'ExportedEmbedder', str | None]:
  """`launch.export --dtype=auto`: every `candidate_paths` policy is exported (`export_embedder`) and read back
  from its own serialized bytes, so the executable that is checked against float32 and timed is the one a user
  loads. With `onnx_dir` (and ONNX Runtime installed), ONNX Runtime on facejax's float32 ONNX export, written
  there, is a candidate too (`ORT`). `check`: uint8 face crops [N, S, S, 3] not in `calibration` (model inputs).

  -> (the `choose_dtype` record for facejax's own paths, plus 'fastest' (any candidate, ORT included) and,
  when ORT was timed, 'ort_speedup' (facejax's best ms / ORT's), or 'ort' saying why it was not; the chosen
  facejax path as an `ExportedEmbedder` (its `exported` and `metadata` are what `save_exported` takes); the
  ONNX file's path, or None)."""
  from facejax.inference.export import ExportedEmbedder, embedding_function, export_embedder
  paths = candidate_paths(hardware.cpu_info().get('cpu_flags'), conv=conv, convs=convs,
                          calibrated=calibration is not None)
  embedders = {}
  for name, (dtype, lowering) in paths.items():
    options = {'dtype': dtype, 'conv': lowering}
    if dtype == 'int8' and calibration is not None:
      options['calibration'] = calibration
    meta = {}
    blob = export_embedder(model, variables, preprocessing, image_size, flip=flip, optimize=options,
                           platforms=platforms, metadata=meta).serialize()
    embedders[name] = ExportedEmbedder(jax.export.deserialize(blob), meta)
  why_not_ort = ort_unavailable() if onnx_dir else 'not asked for'
  onnx_path = None
  if why_not_ort is None:
    from facejax.inference.onnx_export import OnnxEmbedder, export_onnx
    fn, _ = embedding_function(model, variables, preprocessing, image_size, flip=flip, optimize={'conv': 'xla'})
    onnx_path = os.path.join(onnx_dir, 'embedder.onnx')
    export_onnx(fn, image_size, onnx_path)
    embedders[ORT] = OnnxEmbedder(onnx_path)
  found = choose_fastest(embedders, check, batch_size=batch_size, min_cosine=min_cosine, rounds=rounds, calls=calls)
  ort = found['candidates'].pop(ORT, None)
  own = min((n for n, c in found['candidates'].items() if c['agrees']),
            key=lambda n: found['candidates'][n]['ms_median'])
  choice = _choice({'best': own, 'candidates': found['candidates']}, paths, calibrated=calibration is not None,
                   batch_size=batch_size, min_cosine=min_cosine)
  choice['fastest'] = found['best']
  if ort is None:
    choice['ort'] = why_not_ort
  else:
    choice['candidates'][ORT] = {'dtype': 'float32', 'conv': 'onnxruntime', **ort}
    choice['ort_speedup'] = round(choice['candidates'][own]['ms_median'] / ort['ms_median'], 3)
  return choice, embedders[own], onnx_path
