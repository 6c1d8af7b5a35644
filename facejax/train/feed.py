"""Batches onto the devices ahead of the step: the pmap input sharding, replication, and `DeviceFeed`.

The trainer hands the pmapped step numpy batches by default; pmap then copies them to the devices inside the
call, on the training thread. `DeviceFeed` does the copy `depth` batches ahead (from a background thread, or
flax-style from the training thread) and keeps the wrapped iterator's state in step with what was consumed, so
exact resume survives the read-ahead.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from facejax.train.steps import AXIS


def batch_sharding(devices=None) -> NamedSharding:
  """Leading axis split over the local devices: what the pmapped step reads ([D, B/D, ...])."""
  devices = devices or jax.local_devices()
  return NamedSharding(Mesh(np.asarray(devices), (AXIS,)), PartitionSpec(AXIS))


def replicate(tree, sharding):
  """A copy of `tree` on every device of `sharding`, stacked on a new leading axis (what pmap expects)."""
  n = len(sharding.device_set)
  return jax.tree_util.tree_map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x)[None], (n,) + np.shape(x)), sharding), tree)


class DeviceFeed:
  """Host batches ({'image', 'label', ...} numpy [D, B/D, ...]) -> the step's input, `depth` batches ahead.

  mode 'thread'      a background thread pulls host batches and `jax.device_put`s them (async copies) into a
                     queue of `depth`: the training thread only dispatches steps.
  mode 'device_put'  flax's prefetch_to_device: `depth` batches put on the devices ahead, pulled and put by
                     the training thread between dispatches.
  mode 'none'        numpy straight into the step (pmap copies it to the devices inside the call).
  `wait_s` collects the seconds the training thread waited in each `next()`. `transform` (a pmapped function,
  e.g. from `device_augmentation`) is dispatched on each batch once it is on the devices.

  Reading ahead moves the wrapped iterator past the batches the step has consumed. With `track_state=True`
  the iterator's `get_state()` is read after every pull, and `get_state()` here returns the state after the
  last batch handed out: checkpoint that, and a resumed run sees exactly the batches it has not trained on.
  """

  def __init__(self, iterator: Iterator[dict], sharding, *, mode: str = 'thread', depth: int = 2,
               keys: tuple[str, ...] = ('image', 'label'), track_state: bool = False,
               transform: Callable[[dict], dict] | None = None):
    if mode not in ('thread', 'device_put', 'none'):
      raise ValueError(f"DeviceFeed: mode={mode!r}: expected 'thread', 'device_put' or 'none'")
    self._it, self._sharding, self.mode, self._depth, self._keys = iterator, sharding, mode, max(1, depth), keys
    self._track, self._transform = track_state, transform
    self._state = iterator.get_state() if track_state else None
    self.wait_s: list[float] = []
    self._ahead: list = []
    self._stop = threading.Event()
    if mode == 'thread':
      self._queue: queue.Queue = queue.Queue(maxsize=self._depth)
      self._thread = threading.Thread(target=self._fill, name='DeviceFeed', daemon=True)
      self._thread.start()

  def _pull(self, put: bool) -> tuple[dict, Any]:
    batch = next(self._it)
    state = self._it.get_state() if self._track else None
    batch = {k: batch[k] for k in self._keys}
    if put:
      batch = jax.device_put(batch, self._sharding)
    return (batch if self._transform is None else self._transform(batch)), state

  def _fill(self):
    try:
      while not self._stop.is_set():
        item = self._pull(put=True)
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            pass
    except BaseException as e:  # pylint: disable=broad-except  # re-raised in the training thread
      self._queue.put(e)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    t0 = time.perf_counter()
    if self.mode == 'thread':
      item = self._queue.get()
      if isinstance(item, BaseException):
        raise item
    elif self.mode == 'device_put':
      try:
        while len(self._ahead) < self._depth:
          self._ahead.append(self._pull(put=True))
      except StopIteration:
        if not self._ahead:
          raise
      item = self._ahead.pop(0)
    else:
      item = self._pull(put=False)
    self.wait_s.append(time.perf_counter() - t0)
    batch, self._state = item
    return batch

  def get_state(self):
    """The wrapped iterator's state after the last batch returned by `next` (needs track_state=True)."""
    if not self._track:
      raise ValueError('DeviceFeed.get_state: construct it with track_state=True')
    return self._state

  def close(self):
    self._stop.set()
    if self.mode == 'thread':
      self._thread.join(timeout=5)


def device_augmentation(data_config, image_size: int) -> tuple[tuple[str, ...], Callable[[dict], dict] | None]:
  """What a DeviceFeed needs for `data_config` (config.data): the extra batch keys to keep and the `transform`.
  With augment_on='device': ('aug',) and a pmapped function that makes each batch's augmented uint8 [S, S, 3]
  images from its `AugmentOnDevice` canvases and draws on the devices (`facejax.data.loader.device_augment`)
  and drops 'aug'; otherwise ((), None)."""
  if not (data_config.augment and data_config.augment_on == 'device'):
    return (), None
  from facejax.data.loader import device_augment

  def make(batch: dict) -> dict:
    out = {k: v for k, v in batch.items() if k != 'aug'}
    out['image'] = device_augment(batch['image'], batch['aug'], image_size)
    return out

  return ('aug',), jax.pmap(make, axis_name=AXIS)
