"""Photos where dlib's HOG detector finds no face: second detectors, then a generic fallback.

  rescuer = NoFaceRescue('detect')             # the default policy of launch.evaluate (config.no_face)
  chip, found_by = rescuer.chip(photo, aligner)  # found_by: 'mmod' | 'haar_frontal' | 'haar_profile' | 'none'

A verification photo cannot be dropped (dropping its pairs biases accuracy), so HOG's misses keep a chip. The
policy (config.no_face) says how it is made:

  'detect'   (default) dlib's MMOD CNN, then OpenCV's Haar cascades (frontal alt2, profile, profile on the mirrored
             photo for faces turned the other way), then the centre crop. Assumes nothing about the framing.
  'mmod'     dlib's MMOD CNN (`mmod_human_face_detector.dat`), then the centre crop.
  'haar'     the Haar cascades only (fast), then the centre crop.
  'center'   the centre crop: the photo's central square, scaled to the chip.
  'lfw_box'  the 5-point landmarks fitted inside `align.FALLBACK_BOX`, the median HOG box on LFW's 250x250 crops:
             right for LFW-style framing only; LFW configs may choose it explicitly.

A second detector's box is moved to HOG's convention (`BOX_TO_HOG`: the median offset and scale between each
detector's box and HOG's on faces both find) before dlib's 5-point predictor runs inside it, because the
predictor was trained on HOG boxes; the chip is cut from those landmarks as for HOG's faces.

The cascades are in `opencv-python-headless` 4.x (`cv2/data/`; the 5.x wheels dropped them):
pip install 'facejax[align]'.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

# policy -> (second detectors in the order they are tried, fallback when none finds a face)
POLICIES = {
    'detect': (('mmod', 'haar_frontal', 'haar_profile'), 'center'),
    'mmod': (('mmod',), 'center'),
    'haar': (('haar_frontal', 'haar_profile'), 'center'),
    'center': ((), 'center'),
    'lfw_box': ((), 'lfw_box'),
}
NO_FACE = tuple(POLICIES)
DEFAULT_NO_FACE = 'detect'
# What found each photo's face, in the reports ('none': the policy's fallback chip; 'unreadable': a black chip).
FOUND_BY = ('hog', 'mmod', 'haar_frontal', 'haar_profile', 'none', 'unreadable')
HAAR_FILES = {'haar_frontal': 'haarcascade_frontalface_alt2.xml', 'haar_profile': 'haarcascade_profileface.xml'}
OPENCV_HINT = "pip install 'facejax[align]' (opencv-python-headless 4.x ships the Haar cascades; 5.x does not)"
# (dx, dy, scale) per detector: HOG's box centre = box centre + (dx * w, dy * h), HOG's side = scale * side (dx in
# the frame the cascade was trained on: a profile found on the mirrored photo flips it). Measured 2026-12-07 as the
# medians over faces HOG and the detector both found (IoU > 0.3) in 150 LFW and 150 celeba299 photos (`box_offsets`):
# MMOD (0.051, 0.099, 1.091) over 289 faces, Haar frontal (-0.025, 0.08, 0.928) over 269, Haar profile (-0.155,
# 0.085, 0.794) over 189. MMOD keeps its raw box: moved, its chips were further from the identity's HOG chips on
# celeba299's misses and from HOG's chip of the same face (docs/alignment.md); the predictor takes MMOD's boxes as
# face_recognition feeds them.
BOX_TO_HOG = {
    'mmod': (0.0, 0.0, 1.0),
    'haar_frontal': (-0.025, 0.08, 0.928),
    'haar_profile': (-0.155, 0.085, 0.794),
}
# `landmark_scale` of HOG's own faces: 0.84-1.17 (5-95 %); the contact sheet flags second-detector faces outside
# (0.8, 1.25). Their chips are kept: cutting those from the box instead was measured worse (docs/alignment.md).
LANDMARK_SCALE = (0.8, 1.25)


def check_policy(policy: str, flag: str = 'config.no_face') -> tuple[tuple[str, ...], str]:
  """-> (second detectors, fallback) of a policy; ValueError naming the flag and the allowed values."""
  if policy not in POLICIES:
    renamed = " ('box', the LFW box, is now 'lfw_box')" if policy == 'box' else ''
    raise ValueError(f'{flag}={policy!r}: expected one of {NO_FACE}{renamed} (the no-face policy: '
                     f'{DEFAULT_NO_FACE!r}, the default, tries second detectors; see facejax/data/no_face.py)')
  return POLICIES[policy]


FALLBACK_TEXT = {'center': 'center crop of the photo',
                 'lfw_box': 'chip from the 5-point landmarks inside the fixed LFW box facejax.data.align.FALLBACK_BOX'}


def describe_policy(policy: str) -> str:
  """'mmod, haar_frontal, haar_profile, then the center crop of the photo'"""
  detectors, fallback = check_policy(policy)
  return ', '.join(detectors) + (', then the ' if detectors else 'the ') + FALLBACK_TEXT[fallback]


def require_cv2():
  try:
    import cv2
  except ImportError as e:
    raise ImportError(f'the Haar cascades need OpenCV, which is not installed: {OPENCV_HINT}') from e
  if not os.path.isdir(getattr(getattr(cv2, 'data', None), 'haarcascades', '') or ''):
    raise ImportError(f'OpenCV {cv2.__version__} ships no Haar cascades (cv2.data.haarcascades): {OPENCV_HINT}')
  return cv2


def to_hog_box(box, detector: str, shape, mirrored: bool = False) -> tuple[int, int, int, int]:
  """A detector's (left, top, right, bottom) -> the box HOG would give the same face (BOX_TO_HOG; `mirrored`: found
  on the mirrored photo, so the horizontal offset flips), clipped to the photo [H, W, ...] so the predictor's
  features stay on it."""
  dx, dy, scale = BOX_TO_HOG.get(detector, (0.0, 0.0, 1.0))
  dx = -dx if mirrored else dx
  l, t, r, b = (float(v) for v in box)
  w, h = r - l, b - t
  cx, cy, half = (l + r) / 2 + dx * w, (t + b) / 2 + dy * h, scale * max(w, h) / 2
  return (int(round(max(cx - half, 0))), int(round(max(cy - half, 0))),
          int(round(min(cx + half, shape[1] - 1))), int(round(min(cy + half, shape[0] - 1))))


class SecondDetectors:
  """dlib's MMOD CNN and OpenCV's Haar cascades, loaded when first used. `find(image, kind)` -> [(box, score,
  mirrored)], boxes as (left, top, right, bottom) in the detector's own convention, largest first."""

  def __init__(self, upsample: int = 1, min_size: int = 30):
    self.upsample, self.min_size = int(upsample), int(min_size)

  @functools.cached_property
  def _mmod(self):
    from facejax.data.align import CNN_DETECTOR, packaged_model_path, require_dlib
    return require_dlib().cnn_face_detection_model_v1(packaged_model_path(CNN_DETECTOR))

  @functools.lru_cache(maxsize=None)
  def _cascade(self, kind: str):
    cv2 = require_cv2()
    cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, HAAR_FILES[kind]))
    if cascade.empty():
      raise ImportError(f'{HAAR_FILES[kind]}: not loadable from {cv2.data.haarcascades}: {OPENCV_HINT}')
    return cascade

  def _haar(self, grey: np.ndarray, kind: str) -> list:
    boxes, _, weights = self._cascade(kind).detectMultiScale3(
        grey, scaleFactor=1.1, minNeighbors=4, minSize=(self.min_size, self.min_size), outputRejectLevels=True)
    return [((int(x), int(y), int(x + w - 1), int(y + h - 1)), float(s), False)
            for (x, y, w, h), s in zip(np.reshape(boxes, (-1, 4)), np.ravel(weights))]

  def find(self, image: np.ndarray, kind: str) -> list:
    """uint8 RGB [H, W, 3] -> [((left, top, right, bottom), score, mirrored)], largest box first; mirrored: a
    profile found on the mirrored photo (the box is mapped back onto the photo)."""
    if kind == 'mmod':
      found = [((d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()), float(d.confidence), False)
               for d in self._mmod(image, self.upsample)]
    elif kind in HAAR_FILES:
      cv2 = require_cv2()
      grey = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
      found = self._haar(grey, kind)
      if kind == 'haar_profile':  # the cascade knows one side: the other is found on the mirrored photo
        w = grey.shape[1]
        found += [((w - 1 - r, t, w - 1 - l, b), s, True)
                  for (l, t, r, b), s, _ in self._haar(grey[:, ::-1].copy(), kind)]
    else:
      raise ValueError(f'second detector {kind!r}: expected one of {("mmod", *HAAR_FILES)}')
    return sorted(found, key=lambda f: (-(f[0][2] - f[0][0]) * (f[0][3] - f[0][1]), -f[1]))


@functools.lru_cache(maxsize=4)
def second_detectors(upsample: int = 1) -> SecondDetectors:
  return SecondDetectors(upsample)


class NoFaceRescue:
  """The chip of a photo HOG found no face in, by a no-face policy (POLICIES)."""

  def __init__(self, policy: str = DEFAULT_NO_FACE, upsample: int = 1):
    self.policy = policy
    self.detectors, self.fallback = check_policy(policy)
    self.second = second_detectors(upsample)

  def face(self, image: np.ndarray, aligner, name: str = 'image'):
    """-> (align.Face with landmarks inside the first second-detector box in HOG's convention, detector name),
    or (None, 'none')."""
    for kind in self.detectors:
      found = self.second.find(image, kind)
      if found:
        box, score, mirrored = found[0]
        return aligner.face_in_box(image, to_hog_box(box, kind, image.shape, mirrored), score, name), kind
    return None, 'none'

  def chip(self, image: Any, aligner, name: str = 'image') -> tuple[np.ndarray, str]:
    """uint8 RGB photo -> (uint8 [size, size, 3] chip, what found the face: a detector name or 'none')."""
    from facejax.data.align import as_rgb_uint8
    from facejax.data.loader import center_crop
    image = as_rgb_uint8(image, name)
    face, kind = self.face(image, aligner, name)
    if face is not None:
      return aligner.chip_of(image, face), kind
    if self.fallback == 'lfw_box':
      return aligner.chip_of(image, aligner.fallback_face(image, name)), 'none'
    return center_crop(image, aligner.size), 'none'


def landmark_scale(face, aligner) -> float:
  """The landmark chip's side over what the face's box says (align.BOX_CHIP): ~1 for a sound 5-point fit; well
  below 1 on a profile, whose eye landmarks fall close together (the chip zooms into the face)."""
  from facejax.data.align import BOX_CHIP
  return aligner.chip_side(face) / (BOX_CHIP[2] * (face.box[2] - face.box[0]) * (1 + 2 * aligner.padding) / 1.5)


def _rescue_chunk(args) -> tuple[np.ndarray, list[str]]:
  from facejax.data.align import _read_rgb, default_aligner
  items, policy, upsample, size, padding, kind = args
  aligner, rescuer = default_aligner('hog', upsample, size, padding, kind), NoFaceRescue(policy, upsample)
  chips, kinds = np.zeros((len(items), size, size, 3), np.uint8), []
  for k, (name, image) in enumerate(items):
    image = _read_rgb(image) if isinstance(image, str) else image
    chips[k], kind = rescuer.chip(image, aligner, name)
    kinds.append(kind)
  return chips, kinds


def rescue_all(items: list, policy: str, *, upsample: int = 1, size: int, padding: float, workers: int = 1,
               chunk: int = 8, kind: str = 'dlib_5pt') -> tuple[np.ndarray, list[str]]:
  """[(name, path or uint8 RGB photo)] HOG found no face in -> (uint8 [N, size, size, 3] chips by `policy`,
  [what found each face]), in `workers` processes (the MMOD CNN takes ~1 s a photo on one core)."""
  from facejax.data.align import _map_chunks
  check_policy(policy)
  chunks = [(items[i:i + chunk], policy, int(upsample), int(size), float(padding), kind)
            for i in range(0, len(items), chunk)]
  parts = _map_chunks(_rescue_chunk, chunks, workers)
  if not parts:
    return np.zeros((0, size, size, 3), np.uint8), []
  return np.concatenate([p[0] for p in parts]), [k for p in parts for k in p[1]]


def count_found_by(found_by) -> dict:
  """[what found each photo's face] -> {name: count}, in FOUND_BY's order (others, e.g. 'hog+cnn', first)."""
  names = [str(n) for n in found_by]
  order = [n for n in dict.fromkeys(names) if n not in FOUND_BY] + list(FOUND_BY)
  return {k: names.count(k) for k in order if k in names}


def box_offsets(paths: list[str], detectors=('mmod', 'haar_frontal', 'haar_profile'), upsample: int = 1) -> dict:
  """BOX_TO_HOG measured: for faces found by HOG and a detector (IoU > 0.3), the median (dx, dy, scale) that
  moves the detector's box onto HOG's -> {detector: {'dx', 'dy', 'scale', 'faces'}}."""
  from facejax.data.align import _read_rgb, require_dlib
  hog, second = require_dlib().get_frontal_face_detector(), SecondDetectors(upsample)
  samples = {k: [] for k in detectors}
  for path in paths:
    image = _read_rgb(path)
    if image is None:
      continue
    rects = hog(image, upsample)
    if len(rects) != 1:
      continue
    hb = (rects[0].left(), rects[0].top(), rects[0].right(), rects[0].bottom())
    for kind in detectors:
      for box, _, mirrored in second.find(image, kind):
        if _iou(box, hb) > 0.3:
          w, h = box[2] - box[0], box[3] - box[1]
          samples[kind].append(((-1 if mirrored else 1) * ((hb[0] + hb[2]) - (box[0] + box[2])) / 2 / w,
                                ((hb[1] + hb[3]) - (box[1] + box[3])) / 2 / h,
                                max(hb[2] - hb[0], hb[3] - hb[1]) / max(w, h)))
          break
  return {k: dict(zip(('dx', 'dy', 'scale'), np.median(np.array(v), axis=0).round(3).tolist()), faces=len(v))
          for k, v in samples.items() if v}


def _iou(a, b) -> float:
  iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / max(union, 1e-9)


def policy_benchmark(paths: list[str], policies=NO_FACE, upsample: int = 1) -> list[dict]:
  """Each no-face policy on photos HOG found no face in (one process, one thread): every second detector runs once
  on every photo, timed; a policy's time for a photo is that of the detectors it tries until one finds a face,
  plus landmarks and chip -> [{'policy', 'images', 'found' (by a detector), 'found_fraction', 'found_by',
  'ms_per_photo', 'missed' (paths)}]."""
  import time
  from facejax.data.align import _read_rgb, default_aligner
  for p in policies:
    check_policy(p, 'policies')
  aligner, second = default_aligner('hog', upsample), second_detectors(upsample)
  kinds = list(dict.fromkeys(k for p in policies for k in POLICIES[p][0]))
  images = [(p, im) for p, im in ((p, _read_rgb(p)) for p in paths) if im is not None]
  for kind in kinds:  # loads / warms each detector
    second.find(images[0][1], kind)
  seconds, found = {k: [] for k in kinds}, {k: [] for k in kinds}
  for _, image in images:
    for kind in kinds:
      t0 = time.perf_counter()
      found[kind].append(bool(second.find(image, kind)))
      seconds[kind].append(time.perf_counter() - t0)
  t0 = time.perf_counter()
  for _, image in images:  # landmarks and chip, the same for every policy
    aligner.chip_of(image, aligner.fallback_face(image))
  chip_s = (time.perf_counter() - t0) / max(len(images), 1)
  records = []
  for policy in policies:
    total, by = 0.0, []
    for k in range(len(images)):
      by.append('none')
      for kind in POLICIES[policy][0]:
        total += seconds[kind][k]
        if found[kind][k]:
          by[-1] = kind
          break
    n, hit = len(images), sum(b != 'none' for b in by)
    records.append({'policy': policy, 'images': n, 'found': hit, 'found_fraction': hit / max(n, 1),
                    'found_by': count_found_by(by), 'ms_per_photo': 1e3 * (total / max(n, 1) + chip_s),
                    'missed': [images[k][0] for k in range(n) if by[k] == 'none']})
  return records


def contact_sheet(paths: list[str], policy: str = DEFAULT_NO_FACE, upsample: int = 1, columns: int = 6,
                  tile: int = 150):
  """Photos HOG found no face in -> a PIL image: per photo, the photo with the box the policy used (BOX_TO_HOG
  applied; green: a detector's, red: the fallback's) and its 5 landmarks, beside the chip, labelled with what
  found the face ('(zoom 1.3x)': the landmark chip is zoomed against what the box says, as on profiles).
  -> (image, [what found each face])."""
  from PIL import Image, ImageDraw
  from facejax.data.align import _read_rgb, default_aligner
  from facejax.data.loader import center_crop
  aligner, rescuer = default_aligner('hog', upsample, tile), NoFaceRescue(policy, upsample)
  rows = (len(paths) + columns - 1) // columns
  sheet = Image.new('RGB', (columns * 2 * tile, rows * (tile + 14)), (255, 255, 255))
  draw, kinds = ImageDraw.Draw(sheet), []
  for k, path in enumerate(paths):
    image = _read_rgb(path)
    if image is None:
      kinds.append('unreadable')
      continue
    face, kind = rescuer.face(image, aligner, path)
    label = kind
    if face is not None:
      chip = aligner.chip_of(image, face)
      scale = landmark_scale(face, aligner)
      label += '' if LANDMARK_SCALE[0] <= scale <= LANDMARK_SCALE[1] else f' (zoom {1 / scale:.2f}x)'
    elif rescuer.fallback == 'lfw_box':
      face = aligner.fallback_face(image, path)
      chip = aligner.chip_of(image, face)
    else:
      chip = center_crop(image, tile)
    photo = Image.fromarray(image)
    pd = ImageDraw.Draw(photo)
    if face is not None:
      pd.rectangle(face.box, outline=(0, 255, 0) if kind != 'none' else (255, 0, 0), width=2)
      for x, y in face.landmarks:
        pd.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(255, 255, 0))
    scale = tile / max(photo.size)
    photo = photo.resize((max(1, round(photo.size[0] * scale)), max(1, round(photo.size[1] * scale))))
    x, y = (k % columns) * 2 * tile, (k // columns) * (tile + 14)
    sheet.paste(photo, (x, y))
    sheet.paste(Image.fromarray(chip), (x + tile, y))
    draw.text((x + 2, y + tile + 1), f'{label}  {os.path.basename(path)}', fill=(0, 0, 0))
    kinds.append(kind)
  return sheet, kinds
