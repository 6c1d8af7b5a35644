"""The input side of the training throughput benchmark (`facejax.train.throughput`): what feeds the timed step,
and what the input pipeline delivers on its own.

  ConstantFeed           data='device': the same on-device batch every step (pure compute);
  loader_feed            data='loader': the trainer's grain loader over config.data (optionally over records decoded
                         once into memory, `DecodedRecords`) behind a DeviceFeed, with the loader's own img/s
                         (`loader_throughput`, after `loader_warmup_batches`) in the record;
  prepare_bench_folders  the CASIA-WebFace-like identity folders the loader runs read, prepared as ArrayRecord.
"""
from __future__ import annotations

import concurrent.futures
import os
import time
from typing import Any

import jax
import numpy as np

from facejax.train.feed import DeviceFeed, device_augmentation


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
  the steady rate (docs/gpu_training.md has a measured case).
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


def loader_feed(config, image_size: int, num_classes: int, sharding, log) -> tuple[DeviceFeed, dict, Any]:
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
  if config.data.get('resident', False):  # the trainer's resident set: no loader, batches drawn on the devices
    from facejax.train.resident import ResidentFeed
    feed = ResidentFeed(source, global_batch_size=config.batch_size, image_size=image_size, seed=config.seed,
                        augment=config.data.augment)
    info.update(resident=True, resident_bytes=feed.nbytes, augment=bool(config.data.augment),
                source_s=round(time.perf_counter() - t0, 2))
    return feed, info, None
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

