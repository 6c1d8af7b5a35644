"""grain input pipelines: sample -> read/decode -> crop/augment -> batch -> [devices, per_device, ...].

Every stage is a grain `MapDataset`, so batch n is a pure function of (seed, n): the iterator state is just
the next batch position (JSON), resuming is exact, and worker threads/processes only change speed.
Pixels stay uint8 RGB in [0, 255]; each model normalises inside its jitted code (models.preprocessing.Preprocessing).
"""
from __future__ import annotations

import sys
import time
from typing import Iterator

import grain
import numpy as np
from absl import flags
from PIL import Image

from facejax.data.decode import decode_image

_INFINITE = sys.maxsize


def record_labels(source) -> np.ndarray:
  """int32 [N] labels of a record source: its `labels` attribute, else read from every record."""
  labels = getattr(source, 'labels', None)
  if labels is None:
    labels = [source[i]['label'] for i in range(len(source))]
  labels = np.asarray(labels, np.int32)
  if labels.shape != (len(source),):
    raise ValueError(f'{source!r}: expected labels of shape ({len(source)},), got {labels.shape}')
  return labels


class RandomPositions(grain.MapDataset):
  """Infinite record indices: position n of this process -> one epoch-wise shuffle of all records.

  Global position g = n * process_count + process_index walks through a fresh permutation every epoch, so the
  processes read disjoint records of the same global stream.
  """

  def __init__(self, num_records: int, seed: int, process_index: int = 0, process_count: int = 1):
    super().__init__()
    if num_records < 1:
      raise ValueError('RandomPositions: expected a non-empty source, got 0 records')
    self._n, self._seed = num_records, seed
    self._pi, self._pc = process_index, process_count
    self._perm_epoch, self._perm = -1, None

  def __len__(self) -> int:
    return _INFINITE

  def __str__(self) -> str:
    return f'RandomPositions(num_records={self._n}, seed={self._seed})'

  def global_position(self, n: int) -> int:
    return n * self._pc + self._pi

  def __getitem__(self, n):
    if isinstance(n, slice):
      return self.slice(n)
    epoch, k = divmod(self.global_position(n), self._n)
    if epoch != self._perm_epoch:  # one permutation cached per worker; positions are read nearly in order
      self._perm = np.random.default_rng([self._seed, epoch, 0xE9]).permutation(self._n)
      self._perm_epoch = epoch
    return int(self._perm[k])


class IdentityPositions(grain.MapDataset):
  """Infinite record indices in P x K blocks: each block of `batch_size` positions holds P = batch_size / K
  distinct identities with K images each (drawn without replacement when the identity has >= K images).

  Identities are visited in an epoch-wise shuffle; an epoch uses floor(U / P) * P of the U identities so a
  batch never straddles two epochs (and never repeats an identity).
  """

  def __init__(self, labels: np.ndarray, batch_size: int, images_per_identity: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    super().__init__()
    k = images_per_identity
    if k < 1 or batch_size % k:
      raise ValueError(f'identity sampler: expected batch_size ({batch_size}) divisible by images_per_identity '
                       f'({k})')
    self._k, self._p, self._b = k, batch_size // k, batch_size
    uniq, inverse = np.unique(labels, return_inverse=True)
    if len(uniq) < self._p:
      raise ValueError(f'identity sampler: a batch needs {self._p} distinct identities (batch_size / '
                       f'images_per_identity = {batch_size} / {k}), the source has {len(uniq)}')
    order = np.argsort(inverse, kind='stable')
    self._members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    self._per_epoch = len(uniq) // self._p * self._p
    self._seed, self._pi, self._pc = seed, process_index, process_count
    self._perm_epoch, self._perm = -1, None

  def __len__(self) -> int:
    return _INFINITE

  def __str__(self) -> str:
    return f'IdentityPositions(P={self._p}, K={self._k}, identities={len(self._members)}, seed={self._seed})'

  def global_position(self, n: int) -> int:
    """Position in the stream one process with the global batch would read: process i's batch t is block
    t * process_count + i of it."""
    batch, slot = divmod(n, self._b)
    return (batch * self._pc + self._pi) * self._b + slot

  def __getitem__(self, n):
    if isinstance(n, slice):
      return self.slice(n)
    g, j = divmod(self.global_position(n), self._k)  # global identity position, image j of it
    epoch, k = divmod(g, self._per_epoch)
    if epoch != self._perm_epoch:
      self._perm = np.random.default_rng([self._seed, epoch, 0x1D]).permutation(len(self._members))
      self._perm_epoch = epoch
    members = self._members[self._perm[k]]
    rng = np.random.default_rng([self._seed, g, 0x1E])
    if len(members) >= self._k:
      return int(members[rng.permutation(len(members))[j]])
    return int(members[rng.integers(len(members), size=self._k)[j]])


class ReadRecord:
  """Record index -> {'image': uint8 [H, W, 3], 'label': int32, 'index': int32} (decoding bytes if needed;
  `reduce_to`: see `decode_image`)."""

  def __init__(self, source, reduce_to: int = 0):
    self.source, self.reduce_to = source, reduce_to

  def __call__(self, index: int) -> dict:
    record = self.source[index]
    return {'image': as_rgb_array(record['image'], self.reduce_to), 'label': np.int32(record['label']),
            'index': np.int32(index)}


def as_rgb_array(image, reduce_to: int = 0) -> np.ndarray:
  """uint8 [H, W, 3] array, or encoded bytes -> uint8 [H, W, 3] RGB (`reduce_to`: see `decode_image`)."""
  if isinstance(image, (bytes, np.bytes_)):
    return decode_image(bytes(image), reduce_to=reduce_to)
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'expected a uint8 [H, W, 3] RGB image or encoded bytes, got {image.dtype} {image.shape}')
  return image


def resize_box(image: np.ndarray, box: tuple[float, float, float, float], size: int,
               flip: bool = False) -> np.ndarray:
  """Crop box (x0, y0, x1, y1) in pixels of uint8 [H, W, 3], resized to [size, size, 3] (antialiased) and
  mirrored left-right if `flip`."""
  h, w = image.shape[:2]
  if box == (0, 0, w, h) and h == w == size and not flip:
    return image
  im = Image.fromarray(image).resize((size, size), Image.BILINEAR, box=box)
  if flip:  # in Pillow: a third of the cost of copying a reversed numpy view
    im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return np.asarray(im)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, 3] -> its central square, resized to [size, size, 3]."""
  h, w = image.shape[:2]
  side = min(h, w)
  x0, y0 = (w - side) / 2, (h - side) / 2
  return resize_box(image, (x0, y0, x0 + side, y0 + side), size)


class CenterCrop:
  """grain map: record -> record with the image center-cropped and resized to [S, S, 3]."""

  def __init__(self, image_size: int):
    self.image_size = image_size

  def __call__(self, record: dict) -> dict:
    return {**record, 'image': center_crop(record['image'], self.image_size)}


class Augment:
  """grain random_map: random-resized crop (mild for faces), horizontal flip, light colour jitter -> [S, S, 3].

  area: fraction of the central square kept; ratio: aspect ratio range; jitter: max relative change of
  brightness, contrast and saturation.
  """

  def __init__(self, image_size: int, area=(0.75, 1.0), ratio=(0.9, 1.1), jitter: float = 0.2):
    self.image_size, self.area, self.ratio, self.jitter = image_size, area, ratio, jitter

  def source_side(self) -> int:
    """Shortest image side whose smallest crop still spans image_size pixels: decoding larger is wasted."""
    return int(np.ceil(self.image_size / np.sqrt(self.area[0] / max(self.ratio[1], 1 / self.ratio[0]))))

  def draw(self, h: int, w: int, rng: np.random.Generator) -> tuple[tuple, bool, tuple | None]:
    """One image's random choices -> (crop box (x0, y0, x1, y1) in pixels, flip, (brightness, contrast,
    saturation) or None without jitter)."""
    side = min(h, w)
    area = side * side * rng.uniform(*self.area)
    ratio = np.exp(rng.uniform(np.log(self.ratio[0]), np.log(self.ratio[1])))
    cw, ch = min(np.sqrt(area * ratio), w), min(np.sqrt(area / ratio), h)
    x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    flip = bool(rng.uniform() < 0.5)
    jitter = tuple(float(v) for v in rng.uniform(1 - self.jitter, 1 + self.jitter, 3)) if self.jitter else None
    return (x0, y0, x0 + cw, y0 + ch), flip, jitter

  def __call__(self, record: dict, rng: np.random.Generator) -> dict:
    image = record['image']
    box, flip, jitter = self.draw(*image.shape[:2], rng)
    out = resize_box(image, box, self.image_size, flip)
    if jitter:
      out = colour_jitter(out, *jitter)
    return {**record, 'image': out}


class AugmentOnDevice:
  """grain random_map with the pixels left to the accelerator: `augment`'s draws (the same as `augment` makes
  for the record) travel as numbers and `device_augment` applies them inside jit; the host only decodes.

  record -> {'image': uint8 [C, C, 3] canvas (the image at the top left, its last row and column repeated to
  fill; an image with a side over C is first shrunk on the host to fit, which blurs it a little more),
  'aug': float32 [8] (crop box x0, y0, x1, y1 in canvas pixels, flip, brightness, contrast, saturation)}.
  `canvas_side(augment, image)` picks C from a typical image."""

  def __init__(self, augment: Augment, canvas: int):
    self.augment, self.canvas = augment, canvas

  def __call__(self, record: dict, rng: np.random.Generator) -> dict:
    image, c = record['image'], self.canvas
    h, w = image.shape[:2]
    box, flip, jitter = self.augment.draw(h, w, rng)
    if max(h, w) > c:
      nw, nh = max(1, round(w * c / max(h, w))), max(1, round(h * c / max(h, w)))
      image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
      box = (box[0] * nw / w, box[1] * nh / h, box[2] * nw / w, box[3] * nh / h)
      h, w = nh, nw
    if (h, w) != (c, c):
      image = np.pad(image, ((0, c - h), (0, c - w), (0, 0)), mode='edge')
    aug = np.array([*box, flip, *(jitter or (1.0, 1.0, 1.0))], np.float32)
    return {**record, 'image': image, 'aug': aug}


def canvas_side(augment: Augment, image: np.ndarray) -> int:
  """`AugmentOnDevice`'s canvas side for images like `image` (decoded as the loader decodes): large enough for it
  (face datasets are mostly one size: no resizing on the host), at least `augment.source_side()`, at most twice."""
  side = augment.source_side()
  return int(min(2 * side, max(side, *image.shape[:2])))


def device_augment(images, aug, size: int):
  """`AugmentOnDevice` canvases uint8 [B, C, C, 3] and their draws float32 [B, 8] -> uint8 [B, size, size, 3],
  in jit: what `Augment` computes on the host (crop resized linear + antialiased, rounded; mirrored; colour
  jitter, rounded and clipped), up to interpolation rounding (Pillow works in fixed point)."""
  import jax  # here only: grain's worker processes import this module and need no jax
  import jax.numpy as jnp

  def one(image, p):
    scale = jnp.stack([size / (p[3] - p[1]), size / (p[2] - p[0])])
    x = jax.image.scale_and_translate(image.astype(jnp.float32), (size, size, 3), (0, 1), scale,
                                      -jnp.stack([p[1], p[0]]) * scale, 'linear', antialias=True)
    x = jnp.clip(jnp.floor(x + 0.5), 0, 255)
    x = jnp.where(p[4] > 0.5, x[:, ::-1], x)
    b, c, s = p[5], p[6], p[7]
    grey = x @ jnp.asarray(_GREY)
    offset = grey * (c * (1 - s)) + (grey.mean() * (b - c) + 0.5)
    return jnp.clip(x * (c * s) + offset[..., None], 0, 255).astype(jnp.uint8)

  return jax.vmap(one)(images, aug)


_GREY = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma


def colour_jitter(image: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8: saturation s (blend with the pixel's grey), contrast c (around the mean grey g),
  brightness b (shift by (b - 1) g), i.e. the one affine map y = c s x + c (1 - s) grey + (b - c) g, evaluated
  in place in float32, rounded and clipped to [0, 255]."""
  b, c, s = brightness, contrast, saturation
  x = image.astype(np.float32)
  grey = x @ _GREY
  offset = grey * np.float32(c * (1 - s))
  offset += np.float32(grey.mean() * (b - c) + 0.5)
  x *= np.float32(c * s)
  x += offset[..., None]
  return np.clip(x, 0, 255, out=x).astype(np.uint8)


class AugmentAtPosition:
  """grain map_with_index: (position n of this process, record) -> augment(record, rng), the rng drawn for the
  record's global stream position (`positions.global_position(n)`), so the crop, flip and jitter at a position do
  not depend on how many processes share the stream. For one process this is grain's own `random_map` stream:
  Philox seeded with `seed`, counter [0, 0, 0, position]."""

  def __init__(self, augment, positions, seed: int):
    self.augment, self.positions = augment, positions
    self._key = np.random.Philox(seed).state['state']['key']

  def __call__(self, n: int, record: dict) -> dict:
    counter = np.array([0, 0, 0, self.positions.global_position(n)], np.uint64)
    return self.augment(record, np.random.Generator(np.random.Philox(counter=counter, key=self._key)))


class ShardForDevices:
  """Batched record [B, ...] -> [D, B / D, ...] for pmap."""

  def __init__(self, num_devices: int):
    self.num_devices = num_devices

  def __call__(self, batch: dict) -> dict:
    d = self.num_devices
    return {k: v.reshape((d, v.shape[0] // d) + v.shape[1:]) for k, v in batch.items()}


def train_loader(source, *, global_batch_size: int, image_size: int, seed: int, num_devices: int,
                 augment: bool = True, augment_on: str = 'host', sampler: str = 'random',
                 images_per_identity: int = 4, process_index: int = 0, process_count: int = 1, num_threads: int = 2,
                 prefetch: int = 4, num_workers: int = 0) -> grain.DatasetIterator:
  """Infinite training batches from a record source (len, source[i] -> {'image', 'label', ...}).

  next(it) -> {'image': uint8 [D, B/D, S, S, 3] RGB, 'label': int32 [D, B/D], 'index': int32 [D, B/D]} with
  D = num_devices and B = global_batch_size / process_count (this process's share). sampler: 'random'
  (epoch-wise shuffles) or 'identity' (P identities x K = images_per_identity images per batch).
  augment_on='device' (with augment): the batches hold `AugmentOnDevice` canvases [D, B/D, C, C, 3] and
  their draws 'aug' [D, B/D, 8] instead; `device_augment` makes the images on the accelerator.
  it.get_state() is a JSON-serialisable dict; it.set_state(state) resumes bit-exactly (on a loader built with
  the same arguments; the state's layout depends on num_workers). num_threads and num_workers (processes,
  grain mp_prefetch; close() the iterator to stop them) change throughput only, never the batches.
  """
  if global_batch_size % process_count:
    raise ValueError(f'train_loader: global_batch_size {global_batch_size} is not divisible by process_count '
                     f'{process_count}')
  batch_size = global_batch_size // process_count
  if batch_size % num_devices:
    raise ValueError(f'train_loader: per-process batch {batch_size} is not divisible by num_devices '
                     f'{num_devices}')
  if not 0 <= process_index < process_count:
    raise ValueError(f'train_loader: expected 0 <= process_index < {process_count}, got {process_index}')
  if sampler == 'random':
    positions = RandomPositions(len(source), seed, process_index, process_count)
  elif sampler == 'identity':
    positions = IdentityPositions(record_labels(source), batch_size, images_per_identity, seed, process_index,
                                  process_count)
  else:
    raise ValueError(f"train_loader: unknown sampler {sampler!r}; expected 'random' or 'identity'")
  if augment_on not in ('host', 'device'):
    raise ValueError(f"train_loader: augment_on={augment_on!r}: expected 'host' or 'device'")
  # Large JPEGs decode at a reduced scale that still covers the output (decode_image's reduce_to).
  if augment:
    aug = Augment(image_size)
    read = ReadRecord(source, aug.source_side())
    ds = positions.map(read)
    if augment_on == 'device':
      aug = AugmentOnDevice(aug, canvas_side(aug, read(0)['image']))
    ds = ds.map_with_index(AugmentAtPosition(aug, positions, seed * 1000003))
  else:
    ds = positions.map(ReadRecord(source, image_size)).map(CenterCrop(image_size))
  ds = ds.batch(batch_size, drop_remainder=True).map(ShardForDevices(num_devices))
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch))
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags; outside absl.app use defaults
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter(it_ds)


def stage_timings(source, image_size: int, n: int = 64, rounds: int = 3) -> dict:
  """ms per image of each train_loader stage over the first n records of `source` (best of `rounds`), on this
  thread: record read, decode, crop + resize + flip, colour jitter (launch.benchmark_data prints them)."""
  n = min(n, len(source))
  records = [source[i] for i in range(n)]
  crop = Augment(image_size, jitter=0.0)
  side = crop.source_side()  # decoded as train_loader decodes
  images = [as_rgb_array(r['image'], side) for r in records]
  crops = [crop({'image': x}, np.random.default_rng(k))['image'] for k, x in enumerate(images)]
  stages = {'read': lambda k: source[k], 'decode': lambda k: as_rgb_array(records[k]['image'], side),
            'crop_resize_flip': lambda k: crop({'image': images[k]}, np.random.default_rng(k)),
            'colour_jitter': lambda k: colour_jitter(crops[k], 1.1, 0.9, 1.15)}
  out = {}
  for name, fn in stages.items():
    best = float('inf')
    for _ in range(rounds):
      start = time.perf_counter()
      for k in range(n):
        fn(k)
      best = min(best, (time.perf_counter() - start) / n * 1e3)
    out[name] = round(best, 3)
  return {'image_size': image_size, 'ms_per_image': out,
          'images_per_s_one_thread': round(1e3 / sum(out.values()), 1)}


def eval_batches(images, batch_size: int, image_size: int) -> Iterator[np.ndarray]:
  """Deterministic center-crop/resize of a random-access image source (images[k] -> uint8 [H, W, 3] or encoded
  bytes); yields uint8 [b, S, S, 3] in order (the last batch may be smaller)."""
  for start in range(0, len(images), batch_size):
    stop = min(start + batch_size, len(images))
    yield np.stack([center_crop(as_rgb_array(images[k]), image_size) for k in range(start, stop)])
