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
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from facejax import markdown
from facejax.inference.hardware import cpu_info, cpu_text
from facejax.train.config import TINY_FIELDS, bench_section
from facejax.train.feed import DeviceFeed, batch_sharding, device_augmentation, replicate
from facejax.train.profile import latest_xplane, trace_summary, write_text
from facejax.train.setup import TrainingSetup, compute_dtype, load_teacher, model_io, setup
from facejax.train.steps import AXIS
from facejax.train.tasks import ModelIO, _teacher_outputs, hint_channels

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
  if config.task == 'distill' or (config.task == 'siamese' and config.siamese.get('mimic_weight', 0.0)):
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
  if teacher is not None and config.distill.cache_teacher:
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


# ----------------------------------------------------------------------------------------------- input feed


class ConstantFeed:
  """The same on-device batch every step (data='device')."""

  def __init__(self, batch: dict):
    self.batch, self.wait_s = batch, []

  def __iter__(self):
    return self

  def __next__(self):
    return self.batch

  def close(self):
    pass


class DecodedRecords:
  """A record source with every image decoded once into memory (uint8 [H, W, 3]); decoding runs on `threads`
  threads (PIL releases the GIL). The loader then only crops, augments and batches."""

  def __init__(self, source, threads: int = 8):
    from facejax.data.loader import as_rgb_array
    self.num_classes = source.num_classes
    self._labels = None if getattr(source, 'labels', None) is None else np.asarray(source.labels)

    def read(i):
      r = source[i]
      return {**r, 'image': as_rgb_array(r['image'])}

    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
      self._records = list(pool.map(read, range(len(source))))
    self.nbytes = int(sum(r['image'].nbytes for r in self._records))

  @property
  def labels(self):
    if self._labels is None:
      self._labels = np.asarray([r['label'] for r in self._records], np.int32)
    return self._labels

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, i) -> dict:
    return self._records[int(i)]

  def __getstate__(self):
    raise TypeError('DecodedRecords holds the decoded images in this process: use it with num_workers=0 '
                    '(grain threads), not worker processes')


def loader_warmup_batches(num_workers: int, prefetch: int, per_worker_buffer: int = 1) -> int:
  """Batches to skip before timing a grain loader: twice (one round of start-up + the rounds its buffers hold).

  With `num_workers` processes batches arrive round-robin, so a full round is needed before the slowest worker has
  delivered its first batch; meanwhile each worker fills its read-ahead (`prefetch` batches) and its queue to the
  main process (`per_worker_buffer`, grain's default 1), which then drain at once. The factor 2 covers workers
  refilling while the buffers drain."""
  workers = max(num_workers, 1)
  buffered = prefetch + (per_worker_buffer if num_workers > 0 else 0)
  return 2 * workers * (buffered + 1)


def loader_throughput(iterator, batch_size: int, seconds: float, *, warmup_batches: int = 0,
                      max_warmup_s: float = 30.0, max_batches: int = 5000) -> dict | None:
  """Steady-state images/s of a host loader on its own -> {'img_per_s', 'batches', 'window_s', 'warmup_batches',
  'warmup_s'}; None when seconds <= 0.

  Untimed warm-up first: `warmup_batches` batches (`loader_warmup_batches`), or `max_warmup_s`, whichever comes
  first. A fresh grain loader's worker processes start one after another, so its first batches arrive at the pace
  of process start-up and then the batches buffered meanwhile arrive at once; a window that includes either misses
  the steady rate (README, "Training throughput", has a measured case).
  Then a window of `seconds` (at most `max_batches` batches) is timed from the end of the warm-up:
  img_per_s = batches x batch_size / (time to the window's last batch)."""
  if seconds <= 0:
    return None
  start = time.perf_counter()
  skipped = 0
  while skipped < warmup_batches and time.perf_counter() - start < max_warmup_s:
    next(iterator)
    skipped += 1
  t0 = time.perf_counter()
  n, t = 0, t0
  while n < 2 or (t - t0 < seconds and n < max_batches):
    next(iterator)
    n, t = n + 1, time.perf_counter()
  return {'img_per_s': n * batch_size / (t - t0), 'batches': n, 'window_s': t - t0, 'warmup_batches': skipped,
          'warmup_s': t0 - start}


def _auto_workers(n: int) -> int:
  return max(0, (os.cpu_count() or 1) - 4) if n < 0 else n


def _loader_feed(config, image_size: int, num_classes: int, sharding, log) -> tuple[DeviceFeed, dict, Any]:
  """The trainer's grain loader over config.data, optionally with decoded records cached, behind a DeviceFeed."""
  from facejax import data as fdata
  b = config.bench
  t0 = time.perf_counter()
  source = fdata.make_source(config.data.source, **config.data.kwargs.to_dict())
  if int(source.num_classes) > num_classes:
    raise ValueError(f'config.bench.num_classes={num_classes}: the data source has {source.num_classes} '
                     'identities; raise it or set 0 (from the source)')
  info = {'data_source': config.data.source, 'records': len(source), 'identities': int(source.num_classes),
          'dataset_dir': getattr(source, 'dataset_dir', None), 'cache': b.cache,
          'encoded': hasattr(source, 'dataset_dir')}  # TfdsSource: JPEG/PNG bytes decoded on every read
  workers = _auto_workers(b.num_workers)
  if b.cache == 'decoded':
    if workers:
      raise ValueError('config.bench.cache=decoded keeps the images in this process: set '
                       'config.bench.num_workers=0 and raise config.bench.num_threads instead')
    source = DecodedRecords(source, threads=max(b.num_threads, 2))
    info['cache_bytes'] = source.nbytes
  elif b.cache != 'none':
    raise ValueError(f"config.bench.cache={b.cache!r}: expected 'none' or 'decoded'")
  info['source_s'] = round(time.perf_counter() - t0, 2)
  n_dev = len(sharding.device_set)
  loader = fdata.train_loader(source, global_batch_size=config.batch_size, image_size=image_size, seed=config.seed,
                              num_devices=n_dev, augment=config.data.augment, augment_on=config.data.augment_on,
                              sampler=config.data.sampler, images_per_identity=config.data.images_per_identity,
                              process_index=jax.process_index(), process_count=jax.process_count(),
                              num_threads=b.num_threads, prefetch=b.grain_prefetch, num_workers=workers)
  info.update(num_workers=workers, num_threads=b.num_threads, grain_prefetch=b.grain_prefetch,
              prefetch=b.prefetch, prefetch_depth=b.prefetch_depth, augment=bool(config.data.augment),
              augment_on=config.data.augment_on if config.data.augment else None, sampler=config.data.sampler)
  if b.loader_seconds > 0:
    m = loader_throughput(loader, config.batch_size // jax.process_count(), b.loader_seconds,
                          warmup_batches=loader_warmup_batches(workers, b.grain_prefetch))
    info.update(loader_img_per_s=round(m['img_per_s'], 1), loader_batches=m['batches'],
                loader_window_s=round(m['window_s'], 2), loader_warmup_batches=m['warmup_batches'],
                loader_warmup_s=round(m['warmup_s'], 2))
    log(f'loader alone: {info["loader_img_per_s"]} img/s over {m["batches"]} batches, after '
        f'{m["warmup_batches"]} warm-up batches in {m["warmup_s"]:.1f}s ({workers} workers x {b.num_threads} threads)')
  extra_keys, transform = device_augmentation(config.data, image_size)
  # The trainer's keys: 'index' looks up a teacher cache (the benchmark's covers one batch; gathers clamp beyond it).
  return DeviceFeed(loader, sharding, mode=b.prefetch, depth=b.prefetch_depth,
                    keys=('image', 'label', 'index') + extra_keys, transform=transform), info, loader


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
    feed, info, loader = _loader_feed(config, load_size, num_classes, sharding, log)
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


# ----------------------------------------------------------------------------------------------------- data


def prepare_bench_folders(data_dir: str, *, num_identities: int = 200, images_per_identity: int = 8,
                          image_size: int = 250, name: str = 'bench', processes: int | None = None) -> str:
  """A CASIA-WebFace-like identity-folder dataset (synthetic faces as image_size^2 JPEGs, quality 90), prepared
  as ArrayRecord under data_dir for make_source('folders', data_dir=..., name=...). Renders in `processes`
  worker processes; reused if already prepared. -> the prepared dataset dir."""
  from facejax.data.folders import prepare_folders, prepared_dir
  from facejax.data.synthetic import write_identity_folders
  out = prepared_dir(data_dir, name)
  if os.path.exists(os.path.join(out, 'dataset_info.json')):
    return out
  root = write_identity_folders(os.path.join(data_dir, f'{name}_jpeg'), num_identities, images_per_identity,
                                image_size, processes=processes)
  return prepare_folders(root, data_dir, name=name, val_fraction=0.0)[0]


# --------------------------------------------------------------------------------------------------- tables


def _kwargs_text(record: dict) -> str:
  """' key=v1/v2 ...' of a record's model kwargs ('' without): variants of one model stay apart in tables."""
  kwargs = record.get('model_kwargs') or {}
  show = lambda v: '/'.join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
  return ''.join(f' {k}={show(v)}' for k, v in sorted(kwargs.items()))


def summary_table(records: list[dict]) -> str:
  """Markdown: one row per measurement (task, model, data, batch, img/s, step ms, MFU, compile s, memory)."""
  def fmt(v, f='{:.1f}'):
    return '-' if v is None else f.format(v)

  head = ['name', 'task', 'model', 'data', 'batch', 'img/s', 'step ms', 'MFU', 'compile s', 'peak mem GiB',
          'loader img/s']
  cells = []
  for r in records:
    if 'error' in r:
      cells.append([r.get('name', '?'), f"failed: {r['error'][:80]}"] + [''] * 9)
      continue
    data = r['data'] if r['data'] == 'device' else (f"loader ({r.get('prefetch')}, {r.get('num_workers')}w, "
                                                      f"cache {r.get('cache')})")
    mem = r.get('memory', {}).get('peak_bytes_in_use')
    cells.append([r.get('name', ''), r['task'], f"{r['label']}@{r['image_size']}{_kwargs_text(r)}", data,
                  r['batch_size'],
                  fmt(r['img_per_s'], '{:.0f}'), fmt(r['step_ms_median'], '{:.2f}'),
                  fmt(None if r['mfu'] is None else 100 * r['mfu'], '{:.1f}%'),
                  f"{fmt(r['compile_s'])}{' (cache)' if r.get('compile_cache_hit') else ''}",
                  fmt(None if mem is None else mem / 2**30, '{:.1f}'), fmt(r.get('loader_img_per_s'), '{:.0f}')])
  lines = [markdown.table(head, cells, 'llllrrrrrrr')]
  if records:
    r = next((x for x in records if 'device_kind' in x), {})
    lines.append('')
    lines.append(f"{r.get('num_devices', '?')} x {r.get('device_kind', '?')} ({r.get('backend', '?')}), jax "
                 f"{r.get('jax_version', '?')}, peak {r.get('peak_tflops')} TFLOP/s bf16 per chip"
                 + (f'; host CPU {cpu_text(r)}' if r.get('cpu') else ''))
  return '\n'.join(lines)


def paired_table(records: list[dict]) -> str:
  """Markdown: on-device batch vs the real pipeline (thread prefetch, no cache), the augmentation on the host and
  on the device, for each task / model / batch / model kwargs / XLA flags measured on device, with the device
  run's MFU and compile time (first of each); the ratio is the faster pipeline's."""
  def key(r):
    return (r['task'], r['label'], r['image_size'], r['batch_size'], json.dumps(r.get('model_kwargs') or {}),
            r.get('xla_flags') or '')

  device, pipeline = {}, {}
  for r in records:
    if 'error' in r:
      continue
    if r['data'] == 'device':
      device.setdefault(key(r), r)
    elif r.get('prefetch') == 'thread' and r.get('cache') in (None, 'none'):
      pipeline.setdefault((key(r), r.get('augment_on') or 'host'), r)
  head = ['task', 'model', 'batch', 'img/s on-device batch', 'img/s pipeline, augment on host',
          'img/s pipeline, augment on device', 'pipeline / device', 'MFU', 'compile s']
  cells = []
  shown = [r for r in records if 'error' not in r]
  common = set.intersection(*(set((r.get('xla_flags') or '').split()) for r in shown)) if shown else set()
  for k, d in device.items():
    rates = [pipeline[(k, on)]['img_per_s'] if (k, on) in pipeline else None for on in ('host', 'device')]
    best = max((x for x in rates if x is not None), default=None)
    kwargs = ', '.join(f'{a}={b}' for a, b in json.loads(k[4]).items() if a not in TINY_FIELDS)
    flags = ' '.join(f for f in k[5].split() if f not in common)
    mfu = '-' if d['mfu'] is None else f"{100 * d['mfu']:.1f}%"
    cells.append([d['task'], f"{d['label']}@{d['image_size']}{f' ({kwargs})' if kwargs else ''}"
                             f"{f' [{flags}]' if flags else ''}", d['batch_size'], f"{d['img_per_s']:,.0f}"]
                 + ['-' if x is None else f'{x:,.0f}' for x in rates]
                 + ['-' if best is None else format(best / d['img_per_s'], '.2f'), mfu,
                    f"{d['compile_s']:.1f}{' (cache)' if d.get('compile_cache_hit') else ''}"])
  lines = [markdown.table(head, cells, 'llrrrrrrr')]
  if common:
    lines += ['', f"XLA_FLAGS of every run: {' '.join(sorted(common))}"]
  return '\n'.join(lines)
