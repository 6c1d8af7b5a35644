"""One alignment's chips read as another's: where ArcFace's five points sit on a dlib chip, and the fixed map
(scale and shift) through which a model aligned one way reads chips aligned the other way, e.g. a converted
ArcFace-crop teacher distilled into a student of dlib chips (facejax.train.setup.load_teacher)."""
from __future__ import annotations

import numpy as np

from facejax.data.align import (ALIGN_KINDS, ARCFACE_SIZE, ARCFACE_TEMPLATE, CHIP_PADDING, CHIP_SIZE, ArcFaceAligner,
                                arcface_points)

# ArcFace's five points (arcface_points) in dlib's unit face frame, the frame a dlib chip of padding 0 and side 1
# shows: the mean over 587 dlib chips (150 px, padding 0.25) of celeba299/ and celeba/ photos of dlib's 68-point
# landmarks found on the chip (`arcface_points_on_chips`). The spread across faces is 1-2 % of the unit for the eyes
# and 4-8 % for the nose and mouth (pose): what a fixed map cannot follow.
ARCFACE_IN_DLIB_UNIT = np.array([[0.2205, 0.2099], [0.7484, 0.2090], [0.4839, 0.5194], [0.2423, 0.7661],
                                 [0.7264, 0.7659]], np.float64)


def chip_spec(kind: str, size: int | None = None, padding: float = CHIP_PADDING) -> dict:
  """The "align" entry of a model that reads chips of `kind` (model.json, facejax.runs.model_info); size defaults
  to the kind's own (dlib 150, ArcFace 112)."""
  if kind not in ALIGN_KINDS:
    raise ValueError(f'align kind {kind!r}: expected one of {ALIGN_KINDS}')
  dlib = kind == 'dlib_5pt'
  return {'kind': kind, 'size': int(size or (CHIP_SIZE if dlib else ARCFACE_SIZE)),
          'padding': float(padding) if dlib else 0.0}


def chip_points(spec: dict, size: int | None = None) -> np.ndarray:
  """ArcFace's five points [5, 2] at pixel indices of a chip of alignment `spec` scaled to side `size` (default its
  own): dlib's get_face_chip puts unit-frame point u at (u + padding) / (1 + 2 padding) * side."""
  size = float(size or spec['size'])
  if spec['kind'] == 'arcface_5pt':
    return ARCFACE_TEMPLATE * (size / ARCFACE_SIZE)
  if spec['kind'] == 'dlib_5pt':
    p = float(spec.get('padding', CHIP_PADDING))
    return (ARCFACE_IN_DLIB_UNIT + p) / (1 + 2 * p) * size
  raise ValueError(f'align kind {spec["kind"]!r}: expected one of {ALIGN_KINDS}')


def chip_frame(src: dict, dst: dict, size: int) -> tuple[float, float, float] | None:
  """How a model that reads `dst` chips at `size` px sees images that are `src` chips: (a, bx, by), the dst pixel
  (continuous, pixel centres at +0.5) of the image's relative position v in [0, 1] being a * v + b. A least-squares
  scale and shift of the five points (the two frames are upright: the rotation between them is 0.3 degrees).
  None when the frames differ only in size (a resize does it)."""
  if src['kind'] == dst['kind'] and (src['kind'] == 'arcface_5pt' or
                                     float(src.get('padding', 0)) == float(dst.get('padding', 0))):
    return None
  s = (chip_points(src) + 0.5) / float(src['size'])  # relative positions in the src image
  d = chip_points(dst, size) + 0.5
  sc, dc = s - s.mean(0), d - d.mean(0)
  a = float((sc * dc).sum() / (sc ** 2).sum())
  bx, by = d.mean(0) - a * s.mean(0)
  return a, float(bx), float(by)


def arcface_points_on_chips(chips: np.ndarray, upsample: int = 1) -> np.ndarray:
  """uint8 [N, S, S, 3] chips -> [N, 5, 2] ArcFace points (pixels) of the largest face ArcFaceAligner's HOG
  detector and 68-point landmarks find on each chip; NaN where there is none. Divide by S, then (x * (1 + 2 p) - p)
  for dlib chips of padding p, to get the unit-frame points ARCFACE_IN_DLIB_UNIT holds."""
  aligner = ArcFaceAligner('hog', upsample)
  out = np.full((len(chips), 5, 2), np.nan)
  for i, chip in enumerate(chips):
    faces = aligner.detect(chip, f'chip {i}')
    if faces:
      out[i] = arcface_points(faces[0].landmarks)
  return out
