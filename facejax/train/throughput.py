"""Training throughput of the trainer's own step: images/s, step time, compile time, MFU and device memory.

`benchmark_training(config, steps=30, warmup=5, data='device')` builds what `facejax.train.train` builds (the
task, the optimizer, the TrainState, the pmapped step with the state donated) and times it on

  data='device'    one random uint8 batch already sharded over the local devices, reused every step: pure
                   compute, the ceiling the input pipeline has to reach;
  data='loader'    the real grain `train_loader` over `config.data` (a prepared ArrayRecord dataset or the
                   synthetic source), moved to the devices ahead of the step by `DeviceFeed`.

Timing dispatches `window` steps back to back and blocks once at the end of each window (no host sync per
step). `img_per_s` is images over the wall time of all timed steps, so every stall of the input pipeline counts;
`step_ms_median` (the median window) is the step's own speed when the loader keeps up, and `window_ms` shows
where it did not. FLOPs are one device's model FLOPs: the convolutions and matmuls of the forward and backward
pass in the step's jaxpr (`jaxpr_flops`, counted as XLA counts them), the same on every backend (on GPU XLA's
own count of the compiled step cannot see inside the cuDNN/cuBLAS calls; it is kept as `gflops_xla_compiled`).
MFU = those FLOPs x steps / timed wall time / the chip's dense bf16 peak (`PEAK_BF16_TFLOPS`, or
`peak_tflops=`).

The `bench` config section (`facejax.train.config.bench_section()`; `benchmark_config()` there builds the bench
configs) holds what only the benchmark needs: a fixed class count (so the device and pipeline runs compile the
same program), a randomly initialised distillation teacher named by registry name (no teacher run directory
needed), and the input-pipeline knobs. `--profile_dir` traces are summarised by `facejax.train.profile`.

What feeds the step (the constant batch, the loader and its own img/s, the bench dataset) is
`facejax.train.throughput_input`; the markdown tables of the records are `facejax.train.throughput_report`.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import jax
import ml_collections
import numpy as np

from facejax.inference.hardware import cpu_info
from facejax.train.config import bench_section
from facejax.train.feed import batch_sharding, replicate
from facejax.train.profile import latest_xplane, trace_summary, write_text
from facejax.train.setup import TrainingSetup, compute_dtype, load_teacher, model_io, setup
from facejax.train.steps import AXIS
from facejax.train.tasks import ModelIO, _teacher_outputs, hint_channels, task_needs
from facejax.train.throughput_input import ConstantFeed, loader_feed

# Dense bf16 peak per chip, TFLOP/s (vendor datasheets, no sparsity). Matched as substrings of device_kind,
# longest first: 'NVIDIA H100 PCIe' must not read as the SXM part.
PEAK_BF16_TFLOPS = {
    'H100 PCIe': 756.0,
    'H100 NVL': 835.0,
    'H100': 989.0,  # SXM5 (device_kind 'NVIDIA H100 80GB HBM3')
    'H200': 989.0,
    'GH200': 989.0,
    'A100': 312.0,
    'L4': 121.0,
    'TPU v4': 275.0,
    'TPU v5 lite': 197.0,
    'TPU v5e': 197.0,
    'TPU v5p': 459.0,
    'TPU v6 lite': 918.0,
    'TPU v6e': 918.0,
}


def peak_tflops_for(device_kind: str) -> float | None:
  """Dense bf16 TFLOP/s of one chip of this `device_kind`, None when unknown (CPU, unlisted chips)."""
  for name in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
    if name.lower() in device_kind.lower():
      return PEAK_BF16_TFLOPS[name]
  return None


# ---------------------------------------------------------------------------------------------------- setup


def random_teacher(config: ml_collections.ConfigDict, num_classes: int) -> tuple[ModelIO, dict]:
  """The distillation teacher `config.bench.teacher` names, with random weights (host-drawn, no compile)."""
  from facejax.inference.benchmark import random_variables
  from facejax.models import PREPROCESSING, build_model
  t = config.bench.teacher
  if t.preprocessing not in PREPROCESSING:
    raise ValueError(f'config.bench.teacher.preprocessing={t.preprocessing!r}: expected one of '
                     f'{sorted(PREPROCESSING)}')
  model = build_model(t.name, num_classes, t.embed_dim, dtype=compute_dtype(config), **t.kwargs.to_dict())
  variables = random_variables(model, t.image_size, config.seed + 1, method='forward')
  return ModelIO(model, PREPROCESSING[t.preprocessing], t.image_size), variables


def build_training(config: ml_collections.ConfigDict, num_classes: int) -> TrainingSetup:
  """The trainer's own `setup` for `config`, its teacher from config.distill.teacher_workdir or (random weights)
  config.bench.teacher, its initial weights from the trainer (bench.init='trainer') or drawn on the host. With
  config.distill.cache_teacher the teacher is not run in the step: its outputs for `host_batch` are the cache the
  step looks up by `batch['index']`, as the trainer's cached distillation does."""
  teacher = None
  needs = task_needs(config)
  if needs.teacher:
    if config.distill.teacher_workdir:
      teacher = load_teacher(config)
    elif config.bench.teacher.name:
      teacher = random_teacher(config, num_classes)
    else:
      raise ValueError(f'config.task={config.task}: set config.distill.teacher_workdir (a finished run) or '
                       'config.bench.teacher.name (a registry model with random weights)')
  if config.bench.init not in ('numpy', 'trainer'):
    raise ValueError(f"config.bench.init={config.bench.init!r}: expected 'numpy' or 'trainer'")
  variables = None
  if config.bench.init == 'numpy':
    from facejax.inference.benchmark import random_variables
    variables = random_variables(model_io(config, num_classes).model, config.model.image_size, config.seed,
                                 method='forward')
  cache = None
  if needs.cache:
    io, teacher_vars = teacher
    size = max(config.model.image_size, io.image_size)
    images = host_batch(config, size, num_classes, 1)['image'][0]
    out = _teacher_outputs(io, {'teacher': teacher_vars}, {'image': images}, hint_channels(config))
    cache = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32),
                                   {k: v for k, v in out.items() if k in ('embedding', 'logits', 'stages')})
  return setup(config, num_classes, teacher, cache, variables=variables)


def host_batch(config: ml_collections.ConfigDict, image_size: int, num_classes: int, n_dev: int) -> dict:
  """One random batch on the host, split over `n_dev` devices: {'image': uint8 [D, B/D, S, S, 3], 'label': int32
  [D, B/D], 'index': int32 [D, B/D] (the record indices 0..B-1, where a teacher cache is looked up)}. Labels follow
  the configured sampler (P x K identity blocks for 'identity', so contrastive pairs exist)."""
  batch = config.batch_size // jax.process_count()
  rng = np.random.default_rng(config.seed)
  images = rng.integers(0, 256, (n_dev, batch // n_dev, image_size, image_size, 3), dtype=np.uint8)
  if config.data.sampler == 'identity':
    labels = (np.arange(batch) // config.data.images_per_identity) % num_classes
  else:
    labels = rng.integers(0, num_classes, batch)
  return {'image': images, 'label': labels.reshape(n_dev, -1).astype(np.int32),
          'index': np.arange(batch, dtype=np.int32).reshape(n_dev, -1)}


def device_batch(config: ml_collections.ConfigDict, image_size: int, num_classes: int, sharding) -> dict:
  """`host_batch`, on the devices of `sharding`."""
  return jax.device_put(host_batch(config, image_size, num_classes, len(sharding.device_set)), sharding)


# ------------------------------------------------------------------------------------------------- timing


_CACHE_HITS = [0]  # persistent compilation cache hits seen by this process (jax.monitoring events)


def _count_cache_hits(event: str, **kwargs) -> None:
  del kwargs
  if event == '/jax/compilation_cache/cache_hits':
    _CACHE_HITS[0] += 1


def _listen_for_cache_hits() -> None:
  if not getattr(_listen_for_cache_hits, 'done', False):
    jax.monitoring.register_event_listener(_count_cache_hits)
    _listen_for_cache_hits.done = True


def _memory(devices, compiled) -> dict:
  out = {}
  stats = [d.memory_stats() for d in devices]
  if all(stats):
    out['peak_bytes_in_use'] = int(max(s.get('peak_bytes_in_use', 0) for s in stats))
    out['bytes_limit'] = int(max(s.get('bytes_limit', 0) for s in stats))
  try:
    m = compiled.memory_analysis()
    for k in ('argument_size_in_bytes', 'output_size_in_bytes', 'alias_size_in_bytes', 'temp_size_in_bytes',
              'generated_code_size_in_bytes'):
      if hasattr(m, k):
        out[f'compiled_{k.replace("_size_in_bytes", "_bytes")}'] = int(getattr(m, k))
  except Exception:  # pylint: disable=broad-except  # not every backend implements it
    pass
  return out


def _first(tree):
  return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)


def _label(config) -> str:
  if config.task == 'distill':
    teacher = config.bench.teacher.name or os.path.basename(config.distill.teacher_workdir.rstrip('/'))
    return f'{teacher}->{config.model.name}'
  return config.model.name


def _error(e: BaseException) -> str:
  return f'{type(e).__name__}: {e}'[:500]


def _profiled_steps(compiled, pstate, feed, frozen, steps: int, log_dir: str):
  """`steps` more training steps under jax.profiler (trace written under log_dir, Python tracer off: its frames
  would dominate the file); -> (pstate, last metrics or None, trace_summary or {'error'})."""
  try:
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0
    jax.profiler.start_trace(log_dir, profiler_options=options)
  except Exception as e:  # pylint: disable=broad-except  # a profiler that cannot start must not cost the record
    return pstate, None, {'error': _error(e)}
  metrics = None
  try:
    t0 = time.perf_counter()
    for _ in range(steps):
      pstate, metrics = compiled(pstate, next(feed), frozen)
    jax.block_until_ready(metrics)
    wall_s = time.perf_counter() - t0
  finally:
    jax.profiler.stop_trace()
  try:
    return pstate, metrics, trace_summary(latest_xplane(log_dir), steps=steps, wall_s=wall_s)
  except Exception as e:  # pylint: disable=broad-except
    return pstate, metrics, {'error': _error(e), 'log_dir': log_dir}


def benchmark_training(config: ml_collections.ConfigDict, *, steps: int = 30, warmup: int = 5,
                       data: str = 'device', window: int | None = None, peak_tflops: float | None = None,
                       profile_dir: str | None = None, profile_steps: int = 3, hlo_out: str | None = None,
                       log: Callable[[str], None] | None = None) -> dict:
  """Time `steps` training steps of `config` after `warmup`; -> one JSON-serialisable record (module doc).

  data: 'device' (one on-device batch reused: pure compute) or 'loader' (the grain loader of config.data,
  fed ahead of the step by DeviceFeed(config.bench.prefetch)). window: steps per host sync (default
  config.bench.window). peak_tflops: per-chip dense bf16 peak for MFU (default config.bench.peak_tflops, then
  PEAK_BF16_TFLOPS by device kind).
  profile_dir: after the timed steps, `profile_steps` more under jax.profiler, written there; the record's
  'profile' is their `trace_summary`. hlo_out: the compiled step's optimized HLO text is written there (gzipped
  for a .gz path). Neither touches the timed steps.
  """
  if data not in ('device', 'loader'):
    raise ValueError(f"data={data!r}: expected 'device' or 'loader'")
  if steps < 1 or warmup < 0:
    raise ValueError(f'steps={steps}, warmup={warmup}: expected steps >= 1 and warmup >= 0')
  log = log or (lambda s: None)
  config = ml_collections.ConfigDict(config)
  if 'bench' not in config:
    with config.unlocked():
      config.bench = bench_section()
  window = max(1, min(window or config.bench.window, steps))
  devices = jax.local_devices()
  n_dev = len(devices)
  if config.batch_size % (n_dev * jax.process_count()):
    raise ValueError(f'config.batch_size={config.batch_size} must divide evenly over {jax.process_count()} '
                     f'process(es) x {n_dev} local device(s)')
  t_start = time.perf_counter()
  num_classes = int(config.bench.num_classes)
  if num_classes <= 0:
    from facejax import data as fdata
    num_classes = int(fdata.make_source(config.data.source, **config.data.kwargs.to_dict()).num_classes)
  setup = build_training(config, num_classes)
  sharding = batch_sharding(devices)
  image_size = setup.student.image_size
  # As the trainer loads them: at the larger input size of student and teacher, each model resizing to its own.
  load_size = max(image_size, setup.teacher.image_size if setup.teacher else 0)
  pstate = replicate(setup.state, sharding)
  frozen = replicate(setup.frozen, sharding)
  example = device_batch(config, load_size, num_classes, sharding)
  jax.block_until_ready((pstate, frozen, example))
  setup_s = time.perf_counter() - t_start
  log(f'setup {setup_s:.1f}s: {_label(config)} {config.task}, {setup.params / 1e6:.2f}M params, '
      f'batch {config.batch_size} on {n_dev} x {devices[0].device_kind}')

  _listen_for_cache_hits()
  hits_before = _CACHE_HITS[0]
  t_lower = time.perf_counter()
  lowered = setup.p_step.lower(pstate, example, frozen)
  t_compile = time.perf_counter()
  compiled = lowered.compile()
  compile_s, lower_s = time.perf_counter() - t_lower, t_compile - t_lower
  cache_hit = _CACHE_HITS[0] > hits_before
  log(f'compiled in {compile_s:.1f}s (trace+lower {lower_s:.1f}s){", from the persistent cache" if cache_hit else ""}')
  hlo = {}
  if hlo_out:
    try:
      hlo = {'hlo_file': hlo_out, 'hlo_file_bytes': write_text(hlo_out, compiled.as_text())}
    except Exception as e:  # pylint: disable=broad-except  # not every backend prints its executable
      hlo = {'hlo_error': _error(e)}

  from facejax.inference.flops import compiled_flops, jaxpr_flops
  one_device = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), (pstate, example, frozen))
  flops = jaxpr_flops(setup.step_fn, *one_device, axis_env=[(AXIS, jax.device_count())])
  flops_xla = compiled_flops(compiled)  # pmap compiles one device's program

  record: dict = {}
  loader = None
  if data == 'device':
    feed = ConstantFeed(example)
    record.update(data_source='device: one random uint8 batch, on the devices, reused every step', cache=None)
  else:
    del example
    feed, info, loader = loader_feed(config, load_size, num_classes, sharding, log)
    record.update(info)

  try:
    for _ in range(warmup):
      pstate, metrics = compiled(pstate, next(feed), frozen)
    if warmup:
      jax.block_until_ready(metrics)
    feed.wait_s.clear()
    window_s, done = [], 0
    while done < steps:
      n = min(window, steps - done)
      t0 = time.perf_counter()
      for _ in range(n):
        pstate, metrics = compiled(pstate, next(feed), frozen)
      jax.block_until_ready(metrics)
      window_s.append((time.perf_counter() - t0, n))
      done += n
    profile = None
    if profile_dir and profile_steps > 0:
      pstate, profiled_metrics, profile = _profiled_steps(compiled, pstate, feed, frozen, profile_steps, profile_dir)
      metrics = profiled_metrics if profiled_metrics is not None else metrics
      log(f'profiled {profile_steps} steps into {profile_dir}: '
          + (profile['error'] if 'error' in profile else
             f'device busy {profile["device_busy_ms_per_step"]} of {profile["wall_ms_per_step"]} ms/step'))
  finally:
    feed.close()
    if loader is not None and hasattr(loader, 'close'):
      loader.close()

  per_step = np.asarray([s / n for s, n in window_s])
  step_s = float(np.median(per_step))
  total_s = sum(s for s, _ in window_s)
  last = {k: float(v) for k, v in _first(metrics).items()}
  nonfinite = int(_first(pstate.nonfinite_total))
  kind = devices[0].device_kind
  peak = peak_tflops or config.bench.peak_tflops or peak_tflops_for(kind)
  per_device_batch = config.batch_size // jax.process_count() // n_dev
  teacher = setup.teacher
  record = {
      'task': config.task,
      'model': config.model.name,
      'model_kwargs': config.model.kwargs.to_dict(),
      'teacher': (config.bench.teacher.name or config.distill.teacher_workdir) if teacher else None,
      'label': _label(config),
      'data': data,
      **record,
      'batch_size': int(config.batch_size),
      'per_device_batch': per_device_batch,
      'image_size': image_size,
      'load_size': load_size,
      'teacher_image_size': teacher.image_size if teacher else None,
      'teacher_cached': bool(config.distill.cache_teacher) if teacher else None,  # looked up, not run, in the step
      'dtype': 'bfloat16' if config.half_precision else 'float32',
      'num_classes': num_classes,
      'params': setup.params,
      'teacher_params': setup.teacher_params,
      'steps': steps,
      'warmup': warmup,
      'window': window,
      'img_per_s': round(steps * config.batch_size / total_s, 1),
      'img_per_s_median_window': round(config.batch_size / step_s, 1),
      'step_ms_median': round(step_s * 1e3, 3),
      'step_ms_min': round(float(per_step.min()) * 1e3, 3),
      'step_ms_max': round(float(per_step.max()) * 1e3, 3),
      'window_ms': [round(float(x) * 1e3, 2) for x in per_step],
      'host_wait_ms_median': round(float(np.median(feed.wait_s)) * 1e3, 3) if feed.wait_s else 0.0,
      'host_wait_frac': round(float(np.sum(feed.wait_s)) / total_s, 4) if feed.wait_s else 0.0,
      'compile_s': round(compile_s, 2),
      'lower_s': round(lower_s, 2),
      'compile_cache_hit': cache_hit,  # compile_s then measures loading the executable, not compiling it
      'setup_s': round(setup_s, 2),
      'gflops_per_step_per_device': round(flops / 1e9, 3),
      'flops_source': 'jaxpr: convolutions and matmuls, forward and backward',
      'gflops_xla_compiled': None if flops_xla is None else round(flops_xla / 1e9, 3),
      'train_gflops_per_image': round(flops / per_device_batch / 1e9, 3),
      'tflops_per_s_per_device': round(flops * steps / total_s / 1e12, 2),
      'peak_tflops': peak,
      'mfu': round(flops * steps / total_s / (peak * 1e12), 4) if peak else None,
      'memory': _memory(devices, compiled),
      **hlo,
      'profile': profile,
      'final_loss': last.get('loss'),
      'metrics': last,
      'nonfinite_total': nonfinite,
      'backend': jax.default_backend(),
      'device_kind': kind,
      'num_devices': n_dev,
      'process_count': jax.process_count(),
      'jax_version': jax.__version__,
      'cpu_count': os.cpu_count(),
      **cpu_info(),  # the host's CPU model and flags: CPU timings differ by kind
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }
  log(f'{record["label"]} {config.task} [{data}]: {record["img_per_s"]} img/s, {record["step_ms_median"]} ms/step, '
      f'MFU {record["mfu"]}, compile {record["compile_s"]}s')
  return record
