"""Face detection and alignment with dlib (optional extra: pip install 'facejax[align]').

  chip = align_face(photo)               # uint8 [H, W, 3] RGB -> uint8 [150, 150, 3], the largest face
  chips = FaceAligner().align_all(photo)  # every face, largest first

The chip is what dlib's face recognition net expects and what `compute_face_descriptor(img, shape)` builds
internally: dlib's frontal face detector (HOG, image upsampled once, as face_recognition does), the 5-point
shape predictor (`shape_predictor_5_face_landmarks.dat`), then `dlib.get_face_chip(img, shape, size=150,
padding=0.25)`: eyes and nose moved to canonical positions by a similarity transform, bilinear resampling.

Policy for several faces: `align_face` / `FaceAligner.align` keep the largest detection (box area; ties: the
higher detector score), the usual choice for portrait-style verification photos. A photo without a face raises
`NoFaceError`.

Policy for no face, where a photo cannot be dropped (a verification pair must still be scored; dropping its pairs
biases accuracy): `FaceAligner.align_or_fallback` runs the 5-point predictor inside `FALLBACK_BOX`, where the face
sits in LFW-style crops centred on the face (the median HOG box over LFW deep-funneled photos), and makes the chip
from those landmarks; callers count such photos. `facejax.data.pair_chips.aligned_chips` then applies a no-face
policy to HOG's misses (facejax.data.no_face: second detectors, then the centre crop, by default). Detectors:
'hog' (fast, frontal), 'cnn' (dlib's MMOD CNN: finds profile faces, ~60x slower) and 'hog+cnn' (the CNN only
where HOG finds nothing).

ArcFace's crop (`ArcFaceAligner`, align kind 'arcface_5pt'), what insightface-style models such as the converted
TensorFlow.js MobileFaceNet read: the same detector and no-face policy, dlib's 68-point landmarks reduced to
insightface's five points (eye centres, nose tip, mouth corners; dlib's 5-point model has no mouth), the
least-squares similarity onto `ARCFACE_TEMPLATE` (112x112) and a bilinear warp (OpenCV).

Only this module imports dlib (`dlib-bin` on PyPI); the models ship in `face-recognition-models`.

The policy of launch.evaluate / embed / verify (`resolve_align`, `align_photo`; `pair_chips.aligned_chips`). A
model whose description (model.json, or an export's sidecar) has an "align" entry (dlib's converted net: {"kind":
"dlib_5pt", "size": 150, "padding": 0.25}) expects aligned chips, so with align='auto' (the default) every photo
goes through `align_face` before embedding; other models keep the center crop and never need dlib. A photo without
a face: verify fails naming it, embed skips and counts it ('no-face'), evaluate keeps it (dropping its pairs would
bias accuracy) with the no-face policy config.no_face (`facejax.data.no_face.POLICIES`: 'detect', the default,
tries dlib's MMOD CNN and OpenCV's Haar cascades, then the centre crop; 'lfw_box' the landmarks inside
`FALLBACK_BOX`) and reports what found each face. With a cache_dir the chips of a pair set are computed once (in
worker processes) and shared by every model evaluated on it.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable

import numpy as np

CHIP_SIZE = 150
CHIP_PADDING = 0.25
DETECTORS = ('hog', 'cnn', 'hog+cnn')
# (left, top, right, bottom) as fractions of the photo: the median dlib HOG box (upsample 1) over 200 LFW
# deep-funneled 250x250 photos was (67, 80, 175, 187).
FALLBACK_BOX = (0.27, 0.32, 0.70, 0.75)
# (dx, dy, side) of dlib's chip rectangle (get_face_chip_details at padding 0.25) relative to HOG's box, in box
# widths: medians over 289 HOG faces in 150 LFW and 150 celeba299 photos (the side's 5-95 % range: 0.96-1.34),
# 2026-12-07: what a sound 5-point fit gives, against which facejax.data.no_face judges other detectors' fits.
BOX_CHIP = (0.037, 0.022, 1.143)
RECOGNITION_MODEL = 'dlib_face_recognition_resnet_model_v1.dat'
SHAPE_PREDICTOR = 'shape_predictor_5_face_landmarks.dat'
SHAPE_PREDICTOR_68 = 'shape_predictor_68_face_landmarks.dat'
# Alignment kinds a model can ask for (model.json "align"): dlib's chips, or insightface's ArcFace crop.
ALIGN_KINDS = ('dlib_5pt', 'arcface_5pt')
# insightface's five-point template for 112x112 crops (face_align.arcface_dst): the centres of the subject's right
# and left eye (left and right in the image), the nose tip and the mouth corners, as (x, y) pixels.
ARCFACE_SIZE = 112
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                             [70.7299, 92.2041]], np.float64)
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
  landmarks: np.ndarray  # [5, 2] (x, y): the 5-point model's eye corners and nose ([68, 2]: ArcFaceAligner's)

  @property
  def area(self) -> int:
    l, t, r, b = self.box
    return (r - l + 1) * (b - t + 1)


class FaceAligner:
  """dlib detector + 5-point shape predictor -> aligned chips.

  detector: 'hog' (dlib's frontal face detector, fast), 'cnn' (dlib's MMOD CNN, slower, finds more faces) or
    'hog+cnn' (the CNN only for photos where HOG finds nothing).
  upsample: times the image is doubled before detection (1 finds faces down to ~40 px).
  """

  def __init__(self, detector: str = 'hog', upsample: int = 1, size: int = CHIP_SIZE, padding: float = CHIP_PADDING,
               predictor_path: str | None = None):
    if detector not in DETECTORS:
      raise ValueError(f'detector={detector!r}: expected one of {DETECTORS}')
    self.dlib = require_dlib()
    self.detector_kind, self.upsample, self.size, self.padding = detector, int(upsample), int(size), float(padding)
    if detector != 'cnn':
      self._hog = self.dlib.get_frontal_face_detector()
    if detector != 'hog':
      self._cnn = self.dlib.cnn_face_detection_model_v1(packaged_model_path(CNN_DETECTOR))
    self._predictor = self.dlib.shape_predictor(predictor_path or packaged_model_path(SHAPE_PREDICTOR))

  def _detections(self, image: np.ndarray):
    found = []
    if self.detector_kind != 'cnn':
      rects, scores, _ = self._hog.run(image, self.upsample, 0.0)
      found = list(zip(rects, scores))
    if not found and self.detector_kind != 'hog':
      found = [(d.rect, d.confidence) for d in self._cnn(image, self.upsample)]
    return found

  def _shape(self, image, rect):
    return self._predictor(image, rect)

  def _face(self, image: np.ndarray, rect, score: float) -> Face:
    shape = self._shape(image, rect)
    pts = np.array([(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)], np.float32)
    return Face((rect.left(), rect.top(), rect.right(), rect.bottom()), float(score), pts)

  def detect(self, image: Any, name: str = 'image') -> list[Face]:
    """Every face, largest first (box area; ties: higher score)."""
    image = as_rgb_uint8(image, name)
    faces = [self._face(image, rect, score) for rect, score in self._detections(image)]
    return sorted(faces, key=lambda f: (-f.area, -f.score))

  def face_in_box(self, image: Any, box, score: float = 0.0, name: str = 'image') -> Face:
    """The 5-point landmarks fitted inside box (left, top, right, bottom): another detector's face."""
    image = as_rgb_uint8(image, name)
    return self._face(image, self.dlib.rectangle(*(int(v) for v in box)), score)

  def fallback_face(self, image: Any, name: str = 'image') -> Face:
    """The 5-point landmarks inside FALLBACK_BOX (score 0): the no-face policy 'lfw_box', for LFW-style crops."""
    image = as_rgb_uint8(image, name)
    h, w = image.shape[:2]
    return self.face_in_box(image, (round(f * s) for f, s in zip(FALLBACK_BOX, (w, h, w, h))), 0.0, name)

  def align_or_fallback(self, image: Any, name: str = 'image') -> tuple[np.ndarray, bool]:
    """-> (chip of the largest face, True), or (chip from `fallback_face`, False) when no face is found."""
    image = as_rgb_uint8(image, name)
    faces = self.detect(image, name)
    return self.chip_of(image, faces[0] if faces else self.fallback_face(image, name)), bool(faces)

  def chip_of(self, image: np.ndarray, face: Face) -> np.ndarray:
    """uint8 RGB photo and a face on it -> uint8 [size, size, 3]: dlib's get_face_chip from its landmarks."""
    d = self.dlib
    l, t, r, b = face.box
    shape = d.full_object_detection(d.rectangle(l, t, r, b), [d.point(int(x), int(y)) for x, y in face.landmarks])
    return np.asarray(d.get_face_chip(image, shape, size=self.size, padding=self.padding))

  def chip_side(self, face: Face) -> float:
    """Side of the photo square the landmark chip of `face` covers (its box's scale, if the landmarks are sound)."""
    d = self.dlib
    shape = d.full_object_detection(d.rectangle(*face.box), [d.point(int(x), int(y)) for x, y in face.landmarks])
    return float(d.get_face_chip_details(shape, self.size, self.padding).rect.width())

  def align_all(self, image: Any, name: str = 'image') -> list[np.ndarray]:
    """uint8 RGB photo -> [uint8 [size, size, 3]] for every face, largest first (empty list: no face)."""
    image = as_rgb_uint8(image, name)
    return [self.chip_of(image, f) for f in self.detect(image, name)]

  def align(self, image: Any, name: str = 'image') -> np.ndarray:
    """uint8 RGB photo -> uint8 [size, size, 3] chip of its largest face; NoFaceError when there is none."""
    image = as_rgb_uint8(image, name)
    faces = self.detect(image, name)
    if not faces:
      raise NoFaceError(f'{name}: no face found ({self.detector_kind} detector, upsample={self.upsample}, image '
                        f'{image.shape[1]}x{image.shape[0]}); expected a photo with a visible, roughly frontal face '
                        f'of at least ~{80 // 2 ** self.upsample} px')
    return self.chip_of(image, faces[0])


@functools.lru_cache(maxsize=4)
def default_aligner(detector: str = 'hog', upsample: int = 1, size: int = CHIP_SIZE,
                    padding: float = CHIP_PADDING, kind: str = 'dlib_5pt') -> FaceAligner:
  """The process-wide aligner of a configuration; kind 'arcface_5pt' -> ArcFaceAligner (padding unused)."""
  if kind == 'arcface_5pt':
    return ArcFaceAligner(detector, upsample, size)
  if kind != 'dlib_5pt':
    raise ValueError(f'align kind {kind!r}: expected one of {ALIGN_KINDS}')
  return FaceAligner(detector, upsample, size, padding)


def align_face(image: Any, name: str = 'image', *, detector: str = 'hog', upsample: int = 1, size: int = CHIP_SIZE,
               padding: float = CHIP_PADDING, kind: str = 'dlib_5pt') -> np.ndarray:
  """uint8 [H, W, 3] RGB photo -> uint8 [size, size, 3] aligned chip of its largest face (NoFaceError if none)."""
  return default_aligner(detector, upsample, size, padding, kind).align(image, name)


# ---- ArcFace's crop: insightface's five-point template, from dlib's detector and 68-point landmarks. ----

def arcface_points(landmarks: np.ndarray) -> np.ndarray:
  """dlib's 68 landmarks [68, 2] -> the template's five points [5, 2] (x, y): the eye centres (means of the
  eye contours 36-41 and 42-47), the nose tip (30) and the mouth corners (48, 54), in the template's order."""
  pts = np.asarray(landmarks, np.float64)
  if pts.shape != (68, 2):
    raise ValueError(f'landmarks: expected dlib\'s 68 points [68, 2], got {pts.shape}')
  return np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """The least-squares similarity (rotation, uniform scale, translation; no reflection) taking points `src`
  [N, 2] onto `dst` [N, 2] (Umeyama 1991, as insightface's skimage SimilarityTransform.estimate) -> [2, 3] matrix M,
  dst ~ src @ M[:, :2].T + M[:, 2]."""
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
    raise ValueError(f'similarity_transform: expected two [N >= 2, 2] point sets, got {src.shape} and {dst.shape}')
  mu_s, mu_d = src.mean(0), dst.mean(0)
  s, d = src - mu_s, dst - mu_d
  cov = d.T @ s / len(src)
  u, sig, vt = np.linalg.svd(cov)
  sign = np.diag([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])
  rot = u @ sign @ vt
  var = (s ** 2).sum() / len(src)
  if var == 0:
    raise ValueError('similarity_transform: the source points coincide')
  scale = np.trace(np.diag(sig) @ sign) / var
  return np.concatenate([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]], axis=1)


def warp_chip(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, 3] photo, [2, 3] photo -> chip matrix -> uint8 [size, size, 3]: bilinear, black outside the
  photo (insightface's norm_crop: cv2.warpAffine with borderValue 0)."""
  try:
    import cv2
  except ImportError as e:
    raise ImportError(f'the ArcFace crop warps with OpenCV, which is not installed: {INSTALL_HINT}') from e
  return cv2.warpAffine(np.ascontiguousarray(image), np.asarray(matrix, np.float64), (int(size), int(size)),
                        flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def arcface_matrix(face: Face, size: int = ARCFACE_SIZE) -> np.ndarray:
  """A face with 68 landmarks -> the [2, 3] photo -> chip similarity onto ARCFACE_TEMPLATE * size / 112."""
  return similarity_transform(arcface_points(face.landmarks), ARCFACE_TEMPLATE * (size / ARCFACE_SIZE))


class ArcFaceAligner(FaceAligner):
  """insightface's ArcFace crop with dlib's detector (and its no-face policy): the 68-point shape predictor
  (`shape_predictor_68_face_landmarks.dat`, in face-recognition-models) gives the eye centres, nose tip and mouth
  corners (`arcface_points`; dlib's 5-point model has no mouth), then the least-squares similarity onto
  ARCFACE_TEMPLATE (scaled by size / 112) and a bilinear warp. Detection, the largest-face rule and `fallback_face`
  are FaceAligner's."""

  def __init__(self, detector: str = 'hog', upsample: int = 1, size: int = ARCFACE_SIZE,
               predictor_path: str | None = None):
    super().__init__(detector, upsample, size, 0.0, predictor_path or packaged_model_path(SHAPE_PREDICTOR_68))

  def chip_of(self, image: np.ndarray, face: Face) -> np.ndarray:
    return warp_chip(image, arcface_matrix(face, self.size), self.size)

  def chip_side(self, face: Face) -> float:
    """Side of the photo square the chip covers: size over the transform's scale."""
    m = arcface_matrix(face, self.size)
    return float(self.size / np.hypot(m[0, 0], m[1, 0]))


def align_images(images, names=None, **kwargs) -> np.ndarray:
  """A sequence of photos -> uint8 [N, size, size, 3]; NoFaceError names the first photo without a face."""
  names = names or [f'image {i}' for i in range(len(images))]
  return np.stack([align_face(im, n, **kwargs) for im, n in zip(images, names)])


def align_folder(src: str, dst: str, *, detector: str = 'hog', upsample: int = 1, size: int = CHIP_SIZE,
                 padding: float = CHIP_PADDING, extensions=('.jpg', '.jpeg', '.png', '.bmp', '.webp'),
                 workers: int | None = None) -> dict:
  """Identity folders of photos (src/<identity>/<image>, symlinks followed) -> the same tree of aligned PNG chips
  under dst (the largest face of each photo), aligned in `workers` processes (None: one per CPU core). Photos without a face, or
  unreadable, are listed, not fatal. -> {'aligned': n, 'no_face': [relative paths], 'unreadable': [...]}."""
  from PIL import Image
  rels = sorted(os.path.relpath(os.path.join(root, name), src)
                for root, _, files in os.walk(src, followlinks=True) for name in files
                if name.lower().endswith(tuple(e.lower() for e in extensions)))
  report = {'aligned': 0, 'no_face': [], 'unreadable': []}
  step = 1024  # bounded memory: chips of one slice at a time
  for start in range(0, len(rels), step):
    part = rels[start:start + step]
    out = align_files([os.path.join(src, r) for r in part], detector=detector, upsample=upsample, size=size,
                      padding=padding, workers=workers or os.cpu_count() or 1)
    for rel, chip, found, readable in zip(part, out['chips'], out['found'], out['readable']):
      if not readable:
        report['unreadable'].append(rel)
      elif not found:
        report['no_face'].append(rel)
      else:
        path = os.path.join(dst, os.path.splitext(rel)[0] + '.png')
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(chip).save(path)
        report['aligned'] += 1
  return report


# ---- Many files at once (evaluation caches, dlib's own pipeline as the reference). ----

def _read_rgb(path: str) -> np.ndarray | None:
  from PIL import Image
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert('RGB'))
  except OSError:
    return None


def _align_chunk(args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  paths, detector, upsample, size, padding, kind = args
  aligner = default_aligner(detector, upsample, size, padding, kind)
  chips = np.zeros((len(paths), size, size, 3), np.uint8)
  found, readable = np.zeros(len(paths), bool), np.zeros(len(paths), bool)
  for k, path in enumerate(paths):
    image = _read_rgb(path)
    if image is not None:
      chips[k], found[k] = aligner.align_or_fallback(image, path)
      readable[k] = True
  return chips, found, readable


def _descriptor_chunk(chips: np.ndarray) -> np.ndarray:
  net = _recognition_net()
  return np.asarray([np.asarray(net.compute_face_descriptor(np.ascontiguousarray(c))) for c in chips], np.float32)


@functools.lru_cache(maxsize=1)
def _recognition_net():
  return require_dlib().face_recognition_model_v1(packaged_model_path(RECOGNITION_MODEL))


def _map_chunks(fn, chunks: list, workers: int, progress: str = ''):
  """fn over chunks, in order; `workers` > 1: spawned processes (dlib computes on one thread; spawn, not fork,
  because the caller may hold JAX's threads)."""
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=len(chunks), desc=progress, unit='chunk')
  out = []
  if workers > 1 and len(chunks) > 1:
    import concurrent.futures
    import multiprocessing
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn')) as pool:
      for r in pool.map(fn, chunks):
        out.append(r)
        bar and bar.update()
  else:
    for c in chunks:
      out.append(fn(c))
      bar and bar.update()
  bar and bar.close()
  return out


def align_files(paths: list[str], *, detector: str = 'hog', upsample: int = 1, size: int = CHIP_SIZE,
                padding: float = CHIP_PADDING, workers: int = 1, chunk: int = 32, progress: str = '',
                kind: str = 'dlib_5pt') -> dict:
  """Photos -> {'chips': uint8 [N, size, size, 3], 'found': bool [N] (False: `FALLBACK_BOX` chip),
  'readable': bool [N] (False: the file could not be decoded; its chip is black)}, in the order of `paths`.
  kind: 'dlib_5pt' (dlib's chips) or 'arcface_5pt' (ArcFaceAligner)."""
  if detector not in DETECTORS:
    raise ValueError(f'detector={detector!r}: expected one of {DETECTORS}')
  if kind not in ALIGN_KINDS:
    raise ValueError(f'align kind {kind!r}: expected one of {ALIGN_KINDS}')
  require_dlib()
  chunks = [(list(paths[i:i + chunk]), detector, int(upsample), int(size), float(padding), kind)
            for i in range(0, len(paths), chunk)]
  parts = _map_chunks(_align_chunk, chunks, workers, progress)
  if not parts:
    return {'chips': np.zeros((0, size, size, 3), np.uint8), 'found': np.zeros(0, bool),
            'readable': np.zeros(0, bool)}
  return {k: np.concatenate([p[i] for p in parts]) for i, k in enumerate(('chips', 'found', 'readable'))}


def dlib_descriptors(chips: np.ndarray, workers: int = 1, chunk: int = 64, progress: str = '') -> np.ndarray:
  """uint8 [N, 150, 150, 3] aligned chips -> float32 [N, 128]: dlib's own `compute_face_descriptor`, raw (what
  `compute_face_descriptor(photo, shape)` returns: it cuts the same chip with get_face_chip(size=150,
  padding=0.25) before running the net)."""
  chips = np.asarray(chips, np.uint8)
  if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
    raise ValueError(f'chips: expected [N, {CHIP_SIZE}, {CHIP_SIZE}, 3] uint8, got {chips.shape}')
  parts = _map_chunks(_descriptor_chunk, [chips[i:i + chunk] for i in range(0, len(chips), chunk)], workers,
                      progress)
  return np.concatenate(parts) if parts else np.zeros((0, 128), np.float32)


def detector_benchmark(paths: list[str], detectors=DETECTORS, upsample: int = 1) -> list[dict]:
  """How many photos each detector finds a face in, and how fast (one process, one thread: dlib's detectors),
  detection + 5-point landmarks -> [{'detector', 'upsample', 'images', 'found', 'found_fraction', 'ms_per_image',
  'missed' (paths)}]."""
  import time
  images = [(p, _read_rgb(p)) for p in paths]
  images = [(p, im) for p, im in images if im is not None]
  records = []
  for detector in detectors:
    aligner = FaceAligner(detector, upsample)
    aligner.detect(images[0][1])  # loads / warms the detector
    missed, t0 = [], time.perf_counter()
    for path, image in images:
      if not aligner.detect(image, path):
        missed.append(path)
    seconds = time.perf_counter() - t0
    n = len(images)
    records.append({'detector': detector, 'upsample': int(upsample), 'images': n, 'found': n - len(missed),
                    'found_fraction': (n - len(missed)) / max(n, 1), 'ms_per_image': 1e3 * seconds / max(n, 1),
                    'missed': missed})
  return records


# ---- The alignment policy of launch.evaluate / embed / verify. ----

ALIGN_MODES = ('auto', 'on', 'off')


def resolve_align(mode: str, desc: dict, photos: bool = True, detector: str = 'hog',
                  upsample: int = 1) -> dict | None:
  """align='auto' | 'on' | 'off' for a model (describe_model) -> the alignment to apply ({'kind', 'size',
  'padding', 'detector', 'upsample'}) or None. 'auto': the model's "align" entry when it has one and the inputs are
  photos (synthetic pairs are rendered as chips already); 'on' without an entry: dlib 5-point chips at the model's
  input size."""
  if mode not in ALIGN_MODES:
    raise ValueError(f'align={mode!r}: expected one of {ALIGN_MODES}')
  spec = desc.get('align')
  if mode == 'off' or (mode == 'auto' and not (spec and photos)):
    return None
  spec = {'kind': 'dlib_5pt', 'size': desc['image_size'] or CHIP_SIZE, 'padding': CHIP_PADDING, **(spec or {}),
          'detector': detector, 'upsample': int(upsample)}
  if spec['kind'] not in ALIGN_KINDS:
    raise ValueError(f'align kind {spec["kind"]!r} of the model: expected one of {ALIGN_KINDS}')
  try:
    require_dlib()
  except ImportError as e:
    raise ImportError(f'{e}; or pass --align=off (config.align="off") if the images are already aligned '
                      f'{spec.get("size")} px chips') from None
  return spec


def align_photo(image: np.ndarray, name: str, spec: dict | None) -> np.ndarray:
  """uint8 [H, W, 3] photo -> uint8 [size, size, 3] chip of its largest face (spec None: the photo as is);
  NoFaceError naming `name`."""
  if spec is None:
    return image
  return align_face(image, name, size=int(spec['size']), padding=float(spec['padding']),
                    detector=spec.get('detector', 'hog'), upsample=int(spec.get('upsample', 1)),
                    kind=spec.get('kind', 'dlib_5pt'))


def describe_align(spec: dict | None) -> str:
  if spec is None:
    return 'none (center crop)'
  if spec.get('kind') == 'arcface_5pt':
    return (f'ArcFace five-point crops ({spec.get("size")} px; dlib 68-point landmarks, detector '
            f'{spec.get("detector", "hog")}, upsample {spec.get("upsample", 1)})')
  return (f'dlib 5-point chips ({spec.get("size")} px, padding {spec.get("padding")}, detector '
          f'{spec.get("detector", "hog")}, upsample {spec.get("upsample", 1)})')
