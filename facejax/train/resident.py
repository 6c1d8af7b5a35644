"""The whole training set in device memory: every batch drawn, cropped, flipped and jittered on the devices.

A set of aligned face chips is small: 15k-60k chips at 150 px are 1-4 GB as uint8. A GPU trains the dlib lineage's
cut student, teacher included, faster than a host decodes JPEGs for it, so `config.data.resident=True` decodes the
source once, keeps it on every local device, and replaces the grain loader by `ResidentFeed`:

  order     global stream position g = batch number x global batch + device x per-device batch + i reads record
            perm_e[g mod N] of epoch e = g // N, perm_e a permutation drawn from (config.seed, e): every record once
            per epoch, as the loader's random sampler does (with other draws);
  augment   `facejax.data.loader.Augment`'s random-resized crop, flip and colour jitter, with its ranges, drawn per
            position and applied by `device_augment` (the loader's augment_on='device' path);
  state     {'position': batches handed out}: a checkpoint of it resumes on exactly the batches not yet trained on.
"""
from __future__ import annotations

import concurrent.futures
import time

import jax
import jax.numpy as jnp
import numpy as np

from facejax.train.feed import batch_sharding, replicate
from facejax.train.steps import AXIS


def decode_source(source, image_size: int, threads: int = 8) -> tuple[np.ndarray, np.ndarray]:
  """Every record of `source`, centre-cropped to [S, S, 3] as the loader's un-augmented path reads it ->
  (uint8 [N, S, S, 3], int32 [N] labels)."""
  from facejax.data.loader import CenterCrop, ReadRecord
  read, crop = ReadRecord(source, image_size), CenterCrop(image_size)

  def one(i):
    r = crop(read(i))
    return r['image'], r['label']

  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:  # PIL releases the GIL
    records = list(pool.map(one, range(len(source))))
  return np.stack([r[0] for r in records]), np.asarray([r[1] for r in records], np.int32)


def draw_augmentation(key, side: int, augment) -> jnp.ndarray:
  """One image's crop, flip and jitter, drawn in-graph from `key` with `augment`'s (a loader `Augment`) ranges, for
  a [side, side] canvas -> float32 [8] (x0, y0, x1, y1, flip, brightness, contrast, saturation): `device_augment`'s
  parameters, as `Augment.draw` makes them on the host."""
  u = jax.random.uniform(key, (8,))
  area = side * side * (augment.area[0] + u[0] * (augment.area[1] - augment.area[0]))
  lo, hi = np.log(augment.ratio[0]), np.log(augment.ratio[1])
  ratio = jnp.exp(lo + u[1] * (hi - lo))
  cw, ch = jnp.minimum(jnp.sqrt(area * ratio), side), jnp.minimum(jnp.sqrt(area / ratio), side)
  x0, y0 = u[2] * (side - cw), u[3] * (side - ch)
  flip = (u[4] < 0.5).astype(jnp.float32)
  jitter = 1.0 + augment.jitter * (2.0 * u[5:] - 1.0)
  return jnp.concatenate([jnp.stack([x0, y0, x0 + cw, y0 + ch, flip]), jitter])


class ResidentFeed:
  """{'image': uint8 [D, B/D, S, S, 3], 'label', 'index': int32 [D, B/D]} batches made on the devices from the
  whole of `source` held there (module doc). The same interface as `DeviceFeed` for the loop: next(), get_state(),
  set_state(), close(), wait_s."""

  def __init__(self, source, *, global_batch_size: int, image_size: int, seed: int, augment: bool = True,
               devices=None, threads: int = 8):
    from facejax.data.loader import Augment, device_augment
    self._sharding = batch_sharding(devices)
    n_dev = len(self._sharding.device_set)
    if global_batch_size % (n_dev * jax.process_count()):
      raise ValueError(f'ResidentFeed: global batch {global_batch_size} does not divide over {jax.process_count()} '
                       f'process(es) x {n_dev} device(s)')
    images, labels = decode_source(source, image_size, threads)
    n = len(images)
    if global_batch_size > n:
      raise ValueError(f'ResidentFeed: a global batch of {global_batch_size} is more than the {n} records of the '
                       'source (config.data.resident draws each epoch as one permutation)')
    self.num_records, self.nbytes = n, int(images.nbytes)
    self.position, self.wait_s = 0, []
    per_device = global_batch_size // (n_dev * jax.process_count())
    order_key, aug_key = jax.random.split(jax.random.PRNGKey(seed))
    aug = Augment(image_size)

    def draw(images, labels, position):
      g = position * global_batch_size + jax.lax.axis_index(AXIS) * per_device + jnp.arange(per_device)
      epoch, offset = g // n, g % n  # a batch spans at most two epochs (global batch <= n)
      perm = lambda e: jax.random.permutation(jax.random.fold_in(order_key, e), n)[offset]
      index = jnp.where(epoch == epoch[0], perm(epoch[0]), perm(epoch[0] + 1))
      out = {'image': images[index], 'label': labels[index], 'index': index}
      if augment:
        params = jax.vmap(lambda i: draw_augmentation(jax.random.fold_in(aug_key, i), image_size, aug))(g)
        out['image'] = device_augment(out['image'], params, image_size)
      return out

    self._data = replicate((images, labels), self._sharding)
    self._draw = jax.pmap(draw, axis_name=AXIS)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    t0 = time.perf_counter()
    position = replicate(np.int32(self.position), self._sharding)
    self.position += 1
    batch = self._draw(*self._data, position)
    self.wait_s.append(time.perf_counter() - t0)  # dispatch only: the draw runs on the devices
    return batch

  def get_state(self) -> dict:
    return {'position': self.position}

  def set_state(self, state: dict) -> None:
    self.position = int(state['position'])

  def close(self) -> None:
    pass
