"""Procedural synthetic data: face identities (the embedded default) and an object task for pretraining.

Everything is pure numpy and deterministic: identity `i`'s traits are a function of `(seed, identity_offset + i)`
only, and image `j` of that identity of `(seed, identity_offset + i, j)`, so disjoint identity ranges give
disjoint train/test identities and any record can be regenerated on the fly in any worker.

A face is drawn in face coordinates (u right, v down, the face ellipse spans about [-0.5, 0.5] x [-0.7, 0.7])
as soft-edged layers (hair, neck, face, fringe, brows, eyes, nose, mouth, optional moustache/glasses). The
pixel grid is mapped into face coordinates by the per-image pose (shift, in-plane rotation, scale), and a
horizontal squash plus feature offset fakes a slight yaw. Lighting, colour cast, background and noise are
applied in image space. `difficulty` scales every per-image nuisance; 0 renders each identity identically.

`write_identity_folders` writes the faces out as a JPEG identity-folder tree (root/<identity>/<index>.jpg), the
layout `facejax.data.folders.prepare_folders` reads.
"""
from __future__ import annotations

import concurrent.futures
import functools
import io
import os

import numpy as np

from facejax.data.lfw import VerificationPairs

_SKIN_LIGHT = np.array([236, 200, 170], np.float32)
_SKIN_DARK = np.array([95, 62, 42], np.float32)
_HAIR = np.array([[25, 20, 18], [80, 50, 30], [140, 95, 55], [215, 180, 110], [150, 60, 30], [170, 170, 170]],
                 np.float32)
_IRIS = np.array([[70, 45, 25], [60, 100, 150], [70, 110, 70], [110, 80, 50]], np.float32)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel centres in [-1, 1]: x [S, S] (right), y [S, S] (down); cached, read-only."""
  c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
  x, y = np.meshgrid(c, c)
  x.flags.writeable = y.flags.writeable = False
  return x, y


_NOISE_BANK: dict[str, np.ndarray] = {}


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
  """float32 [S, S, 3] unit Gaussian noise: a random window of a fixed bank (drawing fresh noise per image
  would dominate the rendering time)."""
  if 'bank' not in _NOISE_BANK:
    _NOISE_BANK['bank'] = np.random.default_rng(0x0153).standard_normal((320, 320, 3), dtype=np.float32)
  bank = _NOISE_BANK['bank']
  if size > bank.shape[0] // 2:
    return rng.standard_normal((size, size, 3), dtype=np.float32)
  oy, ox = rng.integers(0, bank.shape[0] - size, 2)
  noise = bank[oy:oy + size, ox:ox + size]
  return noise[::-1] if rng.integers(2) else noise


class _Canvas:
  """An image [S, S, 3] float32 with the pose that maps pixels to face coordinates (u, v).

  Layers are painted only inside the pixel window that can contain them, so small features (eyes, nostrils)
  cost a few dozen pixels rather than the whole grid.
  """

  def __init__(self, size, scale, angle, tx, ty):
    self.size = size
    scale, angle, tx, ty = float(scale), float(angle), float(tx), float(ty)  # keep arrays float32
    x, y = _grid(size)
    self.cos, self.sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    self.scale, self.tx, self.ty = scale, tx, ty
    xs, ys = (x - tx) / scale, (y - ty) / scale
    self.u = self.cos * xs + self.sin * ys
    self.v = -self.sin * xs + self.cos * ys
    self.px = 2.0 / (size * scale)  # one pixel in face units
    self.cos, self.sin = float(self.cos), float(self.sin)
    self.img = np.empty((size, size, 3), np.float32)

  def window(self, cu, cv, radius):
    """Pixel slices covering the face-space disc of `radius` around (cu, cv)."""
    x = self.scale * (self.cos * cu - self.sin * cv) + self.tx
    y = self.scale * (self.sin * cu + self.cos * cv) + self.ty
    s = self.size
    r = radius * self.scale * s / 2 + 2
    cx, cy = (x + 1) / 2 * s, (y + 1) / 2 * s
    x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 1, s)
    y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 1, s)
    return slice(y0, max(y1, y0)), slice(x0, max(x1, x0))

  def ellipse(self, win, cu, cv, ru, rv, angle=0.0):
    """Soft (anti-aliased) filled ellipse alpha inside window `win`."""
    du, dv = self.u[win] - cu, self.v[win] - cv
    if angle:
      c, s = np.cos(angle), np.sin(angle)
      du, dv = c * du + s * dv, -s * du + c * dv
    r = np.sqrt((du / ru) ** 2 + (dv / rv) ** 2)
    return np.clip((1 - r) * (min(ru, rv) / self.px) + 0.5, 0, 1)

  def paint(self, win, alpha, colour):
    """Alpha-blend a flat colour [3] into the window."""
    patch = self.img[win]
    patch += alpha[..., None] * (np.asarray(colour, np.float32) - patch)

  def blob(self, cu, cv, ru, rv, colour, angle=0.0, opacity=1.0):
    win = self.window(cu, cv, max(ru, rv))
    alpha = self.ellipse(win, cu, cv, ru, rv, angle)
    self.paint(win, alpha * opacity if opacity != 1 else alpha, colour)
    return win, alpha


def _face_traits(rng: np.random.Generator) -> dict:
  """Stable per-identity latent traits."""
  t = {}
  t['w'] = rng.uniform(0.40, 0.56)  # face half-width
  t['h'] = rng.uniform(0.58, 0.74)  # face half-height
  t['jaw'] = rng.uniform(0.0, 0.35)  # chin narrowing
  t['skin'] = _SKIN_LIGHT + rng.uniform(0, 1) * (_SKIN_DARK - _SKIN_LIGHT) + rng.normal(0, 8, 3)
  t['hair'] = _HAIR[rng.integers(len(_HAIR))] + rng.normal(0, 12, 3)
  t['hair_volume'] = rng.uniform(1.0, 1.25)
  t['hair_len'] = rng.uniform(-0.3, 0.9)  # how far down the sides the hair reaches
  t['fringe'] = rng.uniform(0.25, 0.75)  # fringe line height (fraction of h above centre)
  t['parting'] = rng.uniform(-0.4, 0.4)  # fringe slope
  t['eye_dx'] = rng.uniform(0.15, 0.24)
  t['eye_y'] = rng.uniform(-0.2, -0.05)
  t['eye_w'] = rng.uniform(0.06, 0.10)
  t['eye_h'] = rng.uniform(0.03, 0.055)
  t['iris'] = _IRIS[rng.integers(len(_IRIS))] + rng.normal(0, 10, 3)
  t['brow_gap'] = rng.uniform(0.07, 0.13)
  t['brow_len'] = rng.uniform(0.07, 0.12)
  t['brow_t'] = rng.uniform(0.012, 0.03)
  t['brow_tilt'] = rng.uniform(-0.35, 0.35)
  t['nose_y'] = rng.uniform(0.08, 0.18)
  t['nose_len'] = rng.uniform(0.08, 0.16)
  t['nose_w'] = rng.uniform(0.035, 0.07)
  t['mouth_y'] = rng.uniform(0.30, 0.42)
  t['mouth_w'] = rng.uniform(0.10, 0.19)
  t['lip_t'] = rng.uniform(0.015, 0.035)
  t['lip'] = t['skin'] * rng.uniform(0.55, 0.8) + np.array([40, 0, 0], np.float32)
  t['smile'] = rng.uniform(-0.04, 0.06)
  t['moustache'] = rng.uniform() < 0.15
  t['glasses'] = rng.uniform() < 0.15
  t['frame'] = rng.uniform(0, 80, 3)
  return t


def render_face(traits: dict, rng: np.random.Generator, size: int, difficulty: float) -> np.ndarray:
  """One face image of an identity: traits (see `_face_traits`), per-image rng -> uint8 [S, S, 3] RGB."""
  d = float(difficulty)
  t = traits
  # Pose: image -> face coordinates.
  scale = 1.05 * np.exp(rng.normal(0, 0.07 * d))
  tx, ty = rng.normal(0, 0.06 * d, 2)
  cv = _Canvas(size, scale, rng.normal(0, 0.14 * d), tx, ty + 0.08)
  u, v, px, img = cv.u, cv.v, cv.px, cv.img
  yaw = rng.uniform(-0.5, 0.5) * d
  # Yaw: squash the face horizontally, slide the inner features towards the far side.
  squash = 1 - 0.18 * abs(yaw)
  shift = 0.12 * yaw
  # Background: a random flat colour with a gradient; clothes: a random colour.
  img[:] = 128 + d * (rng.uniform(20, 235, 3) - 128)
  w, h = t['w'] * squash, t['h']
  hair = t['hair'] + rng.normal(0, 6 * d, 3)
  skin = t['skin']
  cv.blob(0, h + 0.75, w * 2.3, 0.6, 100 + d * (rng.uniform(0, 255, 3) - 100))
  # Hair behind the head, down to hair_len.
  win = cv.window(0, -0.12, 1.3 * h * t['hair_volume'])
  back = cv.ellipse(win, 0, -0.12, w * t['hair_volume'] * 1.08, h * t['hair_volume'])
  back *= np.clip((t['hair_len'] * h - v[win]) / px + 0.5, 0, 1)
  cv.paint(win, back, hair)
  # Neck, then the face: an ellipse whose width narrows towards the chin.
  win = cv.window(0, h, h)
  neck = np.clip((0.45 * w - np.abs(u[win])) / px + 0.5, 0, 1) * np.clip((h + 0.4 - v[win]) / px, 0, 1)
  neck *= (v[win] > 0)
  cv.paint(win, neck, skin * 0.85)
  win = cv.window(0, 0, h)
  uw, vw = u[win], v[win]
  wv = w * (1 - t['jaw'] * np.clip(vw / h, 0, 1))
  r = np.sqrt((uw / wv) ** 2 + (vw / h) ** 2)
  cv.paint(win, np.clip((1 - r) * (w / px) + 0.5, 0, 1), skin)
  # Fringe: hair over the forehead above a sloped line, inside the hair outline.
  win = cv.window(0, -0.05, 1.1 * h)
  line = -t['fringe'] * h + t['parting'] * u[win]
  fringe = np.clip((line - v[win]) / px + 0.5, 0, 1) * cv.ellipse(win, 0, -0.05, w * 1.05 * t['hair_volume'],
                                                                   h * 1.02)
  cv.paint(win, fringe, hair)
  # Expression: eye openness and mouth curve.
  open_ = np.clip(1 - rng.uniform(0, 0.6) * d, 0.15, 1)
  smile = t['smile'] + rng.normal(0, 0.03 * d)
  ey = t['eye_y']
  for side in (-1, 1):
    cu = side * t['eye_dx'] * squash + shift
    far = 1 - 0.25 * max(0.0, side * yaw)  # the eye turning away looks smaller
    cv.blob(cu, ey - t['brow_gap'], t['brow_len'] * far, t['brow_t'], hair * 0.8, angle=side * t['brow_tilt'])
    ew, eh = t['eye_w'] * far, t['eye_h'] * open_
    win, white = cv.blob(cu, ey, ew, max(eh, px * 0.5), (235, 235, 230))
    ic = cu + 0.3 * shift
    cv.paint(win, cv.ellipse(win, ic, ey, t['eye_h'] * 0.9, t['eye_h'] * 0.9) * white, t['iris'])
    cv.paint(win, cv.ellipse(win, ic, ey, t['eye_h'] * 0.4, t['eye_h'] * 0.4) * white, (15, 15, 15))
    if t['glasses']:
      win = cv.window(cu, ey, ew * 1.8)
      ring = cv.ellipse(win, cu, ey, ew * 1.7, ew * 1.3) - cv.ellipse(win, cu, ey, ew * 1.7 - 0.02, ew * 1.3 - 0.02)
      cv.paint(win, np.clip(ring, 0, 1), t['frame'])
  # Nose: a shadow ellipse and two nostrils.
  nu = 1.6 * shift
  cv.blob(nu, t['nose_y'], t['nose_w'], t['nose_len'], skin * 0.75, opacity=0.6)
  for side in (-1, 1):
    cv.blob(nu + side * t['nose_w'] * 0.6, t['nose_y'] + t['nose_len'] * 0.8, t['nose_w'] * 0.3,
            t['nose_w'] * 0.2, skin * 0.4)
  # Mouth: a curved band (parabola), soft at both ends.
  mw = t['mouth_w'] * squash
  win = cv.window(shift, t['mouth_y'], mw + 0.1)
  mu = u[win] - shift
  centre = t['mouth_y'] + smile * (1 - (mu / mw) ** 2)
  band = np.clip((t['lip_t'] - np.abs(v[win] - centre)) / px + 0.5, 0, 1)
  band *= np.clip((mw - np.abs(mu)) / px + 0.5, 0, 1)
  cv.paint(win, band, t['lip'])
  if t['moustache']:
    cv.blob(shift, t['mouth_y'] - 0.06, mw * 1.1, 0.025, hair)
  # Lighting (directional gradient, brightness, contrast, colour cast) and sensor noise, in image space.
  x, y = _grid(size)
  ldir = rng.normal(0, 1, 2)
  ldir /= np.linalg.norm(ldir) + 1e-6
  gain = np.exp(rng.normal(0, 0.05 * d, 3)).astype(np.float32) * np.float32(np.exp(rng.normal(0, 0.15 * d)))
  light = 1 + np.float32(rng.uniform(0, 0.5 * d)) * (np.float32(ldir[0]) * x + np.float32(ldir[1]) * y)
  img *= light[..., None]
  img *= gain
  mean = img.mean()
  img -= mean
  img *= np.float32(np.exp(rng.normal(0, 0.15 * d)))
  img += mean
  sigma = rng.uniform(0, 8 * d)
  if sigma > 0:
    img += _noise(rng, size) * np.float32(sigma)
  img += 0.5
  return np.clip(img, 0, 255).astype(np.uint8)


class SyntheticFaces:
  """Procedural face identities; a grain RandomAccessDataSource.

  Record i (identity i // images_per_identity, image i % images_per_identity):
  {'image': uint8 [S, S, 3] RGB (read-only when cached), 'label': int32 in [0, num_identities), 'identity': str,
  'index': int32 i}. Images are rendered on first access (~1 ms at 64x64) and cached if all fit in cache_bytes.
  """

  def __init__(self, num_identities: int, images_per_identity: int, image_size: int = 64,
               difficulty: float = 1.0, seed: int = 0, identity_offset: int = 0, cache_bytes: int = 256 << 20):
    if num_identities < 1 or images_per_identity < 1:
      raise ValueError(f'SyntheticFaces: expected num_identities >= 1 and images_per_identity >= 1, got '
                       f'{num_identities} and {images_per_identity}')
    if image_size < 8:
      raise ValueError(f'SyntheticFaces: expected image_size >= 8, got {image_size}')
    self.num_identities = self.num_classes = int(num_identities)
    self.images_per_identity = int(images_per_identity)
    self.image_size = int(image_size)
    self.difficulty = float(difficulty)
    self.seed = int(seed)
    self.identity_offset = int(identity_offset)
    # Rendered images are kept (per process) when they all fit in cache_bytes: later epochs cost nothing.
    self._cache = {} if len(self) * self.image_size ** 2 * 3 <= cache_bytes else None

  def __len__(self) -> int:
    return self.num_identities * self.images_per_identity

  def __getstate__(self):
    state = dict(self.__dict__)
    if state['_cache'] is not None:
      state['_cache'] = {}  # worker processes render (and cache) their own
    return state

  @property
  def labels(self) -> np.ndarray:
    """int32 [N]: the label of every record (used by the identity sampler without rendering)."""
    return np.repeat(np.arange(self.num_identities, dtype=np.int32), self.images_per_identity)

  def identity_name(self, label: int) -> str:
    return f'synth_{self.identity_offset + label:06d}'

  def __getitem__(self, i) -> dict:
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f'SyntheticFaces: index {i} out of range [0, {len(self)})')
    label, j = divmod(i, self.images_per_identity)
    image = None if self._cache is None else self._cache.get(i)
    if image is None:
      ident = self.identity_offset + label
      traits = _face_traits(np.random.default_rng([self.seed, ident, 0]))
      image = render_face(traits, np.random.default_rng([self.seed, ident, 1, j]), self.image_size,
                          self.difficulty)
      if self._cache is not None:
        image.flags.writeable = False  # shared between callers
        self._cache[i] = image
    return {'image': image, 'label': np.int32(label), 'identity': self.identity_name(label), 'index': np.int32(i)}

  def __repr__(self) -> str:
    return (f'SyntheticFaces(num_identities={self.num_identities}, images_per_identity={self.images_per_identity}, '
            f'image_size={self.image_size}, difficulty={self.difficulty}, seed={self.seed}, '
            f'identity_offset={self.identity_offset})')


def _polygon_radius(theta, sides: int, star: float):
  """Boundary radius (unit circumradius) of a regular polygon / star at angle theta; sides=0 is a circle."""
  if sides == 0:
    r = np.ones_like(theta)
  else:
    sector = 2 * np.pi / sides
    r = np.cos(np.pi / sides) / np.cos(np.mod(theta, sector) - np.pi / sides)
  if star:
    r = r * (1 - star * 0.5 * (1 + np.cos(sides * theta if sides else 5 * theta)))
  return r


def render_object(traits: dict, rng: np.random.Generator, size: int) -> np.ndarray:
  """One textured shape on a textured background -> uint8 [S, S, 3] RGB."""
  x, y = _grid(size)
  scale = rng.uniform(0.45, 0.8)
  cx, cy = rng.uniform(-0.3, 0.3, 2)
  angle = rng.uniform(0, 2 * np.pi)
  px = 2.0 / size
  # Background: two random colours in random stripes or smooth gradient.
  b1, b2 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
  phi = rng.uniform(0, np.pi)
  bfreq = rng.uniform(0.5, 6)
  mix = 0.5 + 0.5 * np.sin(bfreq * np.pi * (np.cos(phi) * x + np.sin(phi) * y))
  img = b1 + mix[..., None] * (b2 - b1)
  # Shape.
  dx, dy = (x - cx) / scale, (y - cy) / scale
  rad = np.sqrt(dx ** 2 + dy ** 2)
  theta = np.arctan2(dy, dx) - angle
  edge = _polygon_radius(theta, traits['sides'], traits['star'])
  alpha = np.clip((edge - rad) * scale / px + 0.5, 0, 1)
  if traits['hole']:
    alpha *= np.clip((rad - 0.45 * edge) * scale / px + 0.5, 0, 1)
  # Texture in shape coordinates (rotates with the shape).
  ca, sa = np.cos(angle + traits['tex_angle']), np.sin(angle + traits['tex_angle'])
  tu, tv = ca * dx + sa * dy, -sa * dx + ca * dy
  f = traits['tex_freq'] * np.pi
  kind = traits['texture']
  if kind == 0:
    tex = 0.5 + 0.5 * np.sin(f * tu)
  elif kind == 1:
    tex = (np.sin(f * tu) * np.sin(f * tv) > 0).astype(np.float32)
  elif kind == 2:
    tex = (np.cos(f * tu) * np.cos(f * tv) > 0.5).astype(np.float32)
  else:
    tex = 0.5 + 0.5 * np.sin(f * np.sqrt(tu ** 2 + tv ** 2))
  c1 = traits['c1'] + rng.normal(0, 12, 3)
  c2 = traits['c2'] + rng.normal(0, 12, 3)
  fg = c1 + tex[..., None].astype(np.float32) * (c2 - c1)
  img += alpha[..., None] * (fg - img)
  img *= 1 + rng.uniform(0, 0.3) * (x * rng.normal() + y * rng.normal())[..., None]
  img = img * np.exp(rng.normal(0, 0.15)) + rng.normal(0, rng.uniform(1, 8), img.shape)
  return np.clip(img + 0.5, 0, 255).astype(np.uint8)


class SyntheticObjects:
  """The 'ImageNet stand-in' source task: classes of textured geometric shapes on textured backgrounds.

  A class is (outline: circle/polygon/star, hole or not, texture kind/frequency/angle, two colours); each image
  varies position, scale, rotation, background, lighting and noise. Same record format as SyntheticFaces.
  """

  def __init__(self, num_classes: int, images_per_class: int, image_size: int = 64, seed: int = 0):
    if num_classes < 1 or images_per_class < 1:
      raise ValueError(f'SyntheticObjects: expected num_classes >= 1 and images_per_class >= 1, got '
                       f'{num_classes} and {images_per_class}')
    self.num_classes = int(num_classes)
    self.images_per_class = int(images_per_class)
    self.image_size = int(image_size)
    self.seed = int(seed)

  def __len__(self) -> int:
    return self.num_classes * self.images_per_class

  @property
  def labels(self) -> np.ndarray:
    return np.repeat(np.arange(self.num_classes, dtype=np.int32), self.images_per_class)

  def _traits(self, label: int) -> dict:
    rng = np.random.default_rng([self.seed, label, 7])
    return {'sides': int(rng.choice([0, 3, 4, 5, 6, 8])), 'star': float(rng.choice([0.0, 0.0, 0.35])),
            'hole': bool(rng.uniform() < 0.3), 'texture': int(rng.integers(4)),
            'tex_freq': rng.uniform(2, 10), 'tex_angle': rng.uniform(0, np.pi),
            'c1': rng.uniform(0, 255, 3), 'c2': rng.uniform(0, 255, 3)}

  def __getitem__(self, i) -> dict:
    i = int(i)
    if not 0 <= i < len(self):
      raise IndexError(f'SyntheticObjects: index {i} out of range [0, {len(self)})')
    label, j = divmod(i, self.images_per_class)
    image = render_object(self._traits(label), np.random.default_rng([self.seed, label, 8, j]), self.image_size)
    return {'image': image, 'label': np.int32(label), 'identity': f'object_{label:05d}', 'index': np.int32(i)}

  def __repr__(self) -> str:
    return (f'SyntheticObjects(num_classes={self.num_classes}, images_per_class={self.images_per_class}, '
            f'image_size={self.image_size}, seed={self.seed})')


class SourceImages:
  """Random-access view of a record source's images: images[k] -> source[k]['image']."""

  def __init__(self, source):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, k):
    return self.source[int(k)]['image']


def synthetic_pairs(num_identities: int, images_per_identity: int, image_size: int = 64, difficulty: float = 1.0,
                    seed: int = 0, identity_offset: int = 0, num_folds: int = 10,
                    pairs_per_fold: int = 60) -> VerificationPairs:
  """LFW-style verification pairs over synthetic identities [identity_offset, identity_offset + num_identities).

  Identities are split into `num_folds` disjoint groups (as in LFW View 2, no identity spans two folds); fold f
  holds pairs_per_fold / 2 matched pairs (two different images of one identity) followed by pairs_per_fold / 2
  mismatched pairs (images of two different identities), all drawn from group f.
  """
  if pairs_per_fold % 2:
    raise ValueError(f'synthetic_pairs: expected an even pairs_per_fold, got {pairs_per_fold}')
  if num_identities < 2 * num_folds:
    raise ValueError(f'synthetic_pairs: expected num_identities >= 2 * num_folds = {2 * num_folds} so every fold '
                     f'has mismatched pairs, got {num_identities}')
  if images_per_identity < 2:
    raise ValueError(f'synthetic_pairs: expected images_per_identity >= 2 for matched pairs, got '
                     f'{images_per_identity}')
  source = SyntheticFaces(num_identities, images_per_identity, image_size, difficulty, seed, identity_offset)
  rng = np.random.default_rng([seed, identity_offset, num_identities, 0x5A1])
  groups = np.array_split(rng.permutation(num_identities), num_folds)
  k, half = images_per_identity, pairs_per_fold // 2
  left, right, issame, fold = [], [], [], []
  for f, ids in enumerate(groups):
    for _ in range(half):
      ident = rng.choice(ids)
      a, b = rng.choice(k, 2, replace=False)
      left.append(ident * k + a), right.append(ident * k + b)
    for _ in range(half):
      i1, i2 = rng.choice(ids, 2, replace=False)
      left.append(i1 * k + rng.integers(k)), right.append(i2 * k + rng.integers(k))
    issame += [True] * half + [False] * half
    fold += [f] * pairs_per_fold
  names = [f'{source.identity_name(i // k)}/{i % k:04d}' for i in range(len(source))]
  return VerificationPairs(images=SourceImages(source), names=names, left=np.asarray(left, np.int32),
                           right=np.asarray(right, np.int32), issame=np.asarray(issame, bool),
                           fold=np.asarray(fold, np.int32))


def _render_folder_chunk(root: str, num_identities: int, images_per_identity: int, image_size: int,
                         indices: list[int]) -> int:
  from PIL import Image
  faces = SyntheticFaces(num_identities, images_per_identity, image_size=image_size, cache_bytes=0)
  for i in indices:
    r = faces[i]
    folder = os.path.join(root, r['identity'])
    os.makedirs(folder, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(r['image']).save(buf, format='JPEG', quality=90)
    with open(os.path.join(folder, f'{i:06d}.jpg'), 'wb') as f:
      f.write(buf.getvalue())
  return len(indices)


def write_identity_folders(root: str, num_identities: int, images_per_identity: int, image_size: int, *,
                           processes: int | None = None) -> str:
  """SyntheticFaces(num_identities, images_per_identity, image_size) as an identity-folder tree of JPEGs (quality
  90): root/<identity>/<record index, 6 digits>.jpg. Renders in `processes` worker processes (default: every
  core, at most 16); -> root."""
  n = num_identities * images_per_identity
  processes = max(1, min(processes or (os.cpu_count() or 1), 16, n))
  chunks = [list(range(k, n, processes)) for k in range(processes)]
  args = [(root, num_identities, images_per_identity, image_size, c) for c in chunks]
  if processes == 1:
    _render_folder_chunk(*args[0])
  else:
    with concurrent.futures.ProcessPoolExecutor(processes) as pool:
      list(pool.map(_render_folder_chunk, *zip(*args)))
  return root
