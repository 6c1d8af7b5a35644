"""The no-face policy (facejax.data.no_face, facejax.data.pair_chips): the policy names and their errors, the order
the second detectors are tried in, what each photo's face was found by and how it is counted, and on real photos
(dlib, OpenCV and ../shared/data, each skipped with its reason when absent) that the cascades find HOG's misses."""
import json
import os

import numpy as np
import pytest

from facejax.data import no_face
from tests.shared_data import shared_data


class FakeSecond:
  """SecondDetectors stand-in: a fixed answer per detector, and the order it was asked in."""

  def __init__(self, answers):
    self.answers, self.asked = answers, []

  def find(self, image, kind):
    self.asked.append(kind)
    return self.answers.get(kind, [])


class FakeFace(tuple):
  def __new__(cls, *fields):
    return super().__new__(cls, fields)

  @property
  def box(self):
    return self[1]


class FakeAligner:
  size, padding, side = 8, 0.25, None

  def chip_side(self, face):  # the landmark chip's side: by default what the box says (landmarks agree)
    from facejax.data.align import BOX_CHIP
    return self.side or BOX_CHIP[2] * (face[1][2] - face[1][0])

  def face_in_box(self, image, box, score=0.0, name='image'):
    return FakeFace('face', tuple(box), score)

  def fallback_face(self, image, name='image'):
    return FakeFace('lfw_box', None, 0.0)

  def chip_of(self, image, face):
    return np.full((self.size, self.size, 3), 7 if face[0] == 'face' else 9, np.uint8)


def rescuer(policy, answers):
  r = no_face.NoFaceRescue(policy)
  r.second = FakeSecond(answers)
  return r


def test_policy_names_and_errors():
  assert no_face.DEFAULT_NO_FACE == 'detect' and set(no_face.NO_FACE) == {'detect', 'mmod', 'haar', 'center', 'lfw_box'}
  with pytest.raises(ValueError, match=r"config\.no_face='box': expected one of \('detect', 'mmod', 'haar', "
                                       r"'center', 'lfw_box'\) \('box', the LFW box, is now 'lfw_box'\)"):
    no_face.check_policy('box')
  with pytest.raises(ValueError, match=r"--policy='hog'"):
    no_face.check_policy('hog', '--policy')
  assert no_face.describe_policy('center') == 'the center crop of the photo'
  assert no_face.describe_policy('detect').startswith('mmod, haar_frontal, haar_profile, then the center crop')


def test_the_eval_config_names_the_flag():
  from configs.lfw_eval import get_config
  from facejax.evaluation.evaluator import _check_eval_config
  c = get_config()
  assert c.no_face == 'detect'
  c.no_face = 'box'  # the old name of the LFW box: now 'lfw_box', chosen explicitly
  with pytest.raises(ValueError, match=r"config\.no_face='box': expected one of .*'lfw_box'"):
    _check_eval_config(c)


def test_cascade_order_stops_at_the_first_detector_that_finds_a_face():
  image = np.zeros((40, 40, 3), np.uint8)
  box = ((5, 6, 25, 26), 1.0, False)
  r = rescuer('detect', {'haar_frontal': [box], 'haar_profile': [box]})
  face, kind = r.face(image, FakeAligner())
  assert kind == 'haar_frontal' and r.second.asked == ['mmod', 'haar_frontal']
  assert face[1] == no_face.to_hog_box(box[0], 'haar_frontal', image.shape)
  r = rescuer('detect', {'haar_profile': [box]})
  assert r.face(image, FakeAligner())[1] == 'haar_profile'
  assert r.second.asked == ['mmod', 'haar_frontal', 'haar_profile']
  r = rescuer('haar', {'mmod': [box]})  # 'haar' never runs the CNN
  assert r.face(image, FakeAligner()) == (None, 'none') and r.second.asked == ['haar_frontal', 'haar_profile']


def test_fallbacks_when_no_detector_finds_a_face():
  from facejax.data.loader import center_crop
  image = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
  chip, kind = rescuer('detect', {}).chip(image, FakeAligner())
  np.testing.assert_array_equal(chip, center_crop(image, 8))
  assert kind == 'none'
  chip, kind = rescuer('lfw_box', {'mmod': [((0, 0, 9, 9), 1.0, False)]}).chip(image, FakeAligner())
  assert kind == 'none' and (chip == 9).all()  # the LFW box, no detector tried
  chip, kind = rescuer('mmod', {'mmod': [((0, 0, 9, 9), 1.0, False)]}).chip(image, FakeAligner())
  assert kind == 'mmod' and (chip == 7).all()


def test_landmark_scale_flags_a_zoomed_in_fit_but_keeps_its_chip():
  """landmark_scale: ~1 where the 5-point fit agrees with the box; a profile's (eyes close together) is well below.
  The chip stays the landmark chip either way (box chips were measured further from the identity)."""
  image = np.zeros((60, 60, 3), np.uint8)
  aligner, face = FakeAligner(), FakeFace('face', (10, 10, 40, 40), 1.0)
  assert abs(no_face.landmark_scale(face, aligner) - 1) < 1e-9
  aligner.side = 0.5 * 1.143 * 30
  assert abs(no_face.landmark_scale(face, aligner) - 0.5) < 1e-9
  r = rescuer('mmod', {'mmod': [((10, 10, 40, 40), 1.0, False)]})
  assert r.chip(image, aligner)[1] == 'mmod' and (r.chip(image, aligner)[0] == 7).all()


def test_boxes_move_to_hogs_convention_and_stay_on_the_photo(monkeypatch):
  monkeypatch.setitem(no_face.BOX_TO_HOG, 'mmod', (0.1, -0.2, 1.5))
  # 20 px box centred at (30, 30): centre -> (32, 26), side 30; found on the mirrored photo: centre -> (28, 26)
  assert no_face.to_hog_box((20, 20, 40, 40), 'mmod', (100, 100, 3)) == (17, 11, 47, 41)
  assert no_face.to_hog_box((20, 20, 40, 40), 'mmod', (100, 100, 3), mirrored=True) == (13, 11, 43, 41)
  # centre (24, 12), side 60: clipped to the 45 x 50 photo
  assert no_face.to_hog_box((0, 0, 40, 40), 'mmod', (50, 45, 3)) == (0, 0, 44, 42)


def test_counts_per_detector():
  assert no_face.count_found_by(['hog', 'none', 'mmod', 'hog', 'unreadable', 'haar_profile']) == {
      'hog': 2, 'mmod': 1, 'haar_profile': 1, 'none': 1, 'unreadable': 1}
  assert list(no_face.count_found_by(['hog+cnn', 'none'])) == ['hog+cnn', 'none']


class Pairs:
  def __init__(self, images):
    self.images, self.names = images, [f'photo {k}' for k in range(len(images))]


def test_pair_chips_apply_the_policy_to_the_detectors_misses(monkeypatch):
  """aligned_chips: HOG's chips stay, its misses get the policy's chip, found_by says which detector found each."""
  from facejax.data import pair_chips
  images = [np.full((20, 20, 3), k, np.uint8) for k in range(4)]

  def hog(paths, **kwargs):  # stands in for the cached HOG pass (align_files' contract)
    raise AssertionError('in-memory pairs align in this process')

  class Aligner:
    def align_or_fallback(self, image, name):
      return np.full((8, 8, 3), 100 + image[0, 0, 0], np.uint8), int(image[0, 0, 0]) in (0, 2)

  def rescue(items, policy, **kwargs):
    rescue.calls.append((policy, [n for n, _ in items]))
    return np.zeros((len(items), 8, 8, 3), np.uint8), ['haar_profile', 'none'][:len(items)]
  rescue.calls = []
  monkeypatch.setattr(pair_chips, 'align_files', hog)
  monkeypatch.setattr(pair_chips, 'default_aligner', lambda *a: Aligner())
  monkeypatch.setattr(pair_chips, 'rescue_all', rescue)
  spec = {'size': 8, 'padding': 0.25, 'detector': 'hog', 'upsample': 1}
  out = pair_chips.aligned_chips(Pairs(images), spec, 'detect')
  assert rescue.calls == [('detect', ['photo 1', 'photo 3'])]
  assert out['found_by'].tolist() == ['hog', 'haar_profile', 'hog', 'none']
  assert out['found'].tolist() == [True, True, True, False]
  assert (out['chips'][0] == 100).all() and (out['chips'][1] == 0).all() and (out['chips'][2] == 102).all()
  out = pair_chips.aligned_chips(Pairs(images), spec, 'lfw_box')  # align_or_fallback's chips are the LFW box's
  assert len(rescue.calls) == 1 and out['found_by'].tolist() == ['hog', 'none', 'hog', 'none']
  assert (out['chips'][1] == 101).all()
  with pytest.raises(ValueError, match='config.no_face'):
    pair_chips.aligned_chips(Pairs(images), spec, 'box')


# ---- Real detectors on real photos. ----

@pytest.fixture(scope='module')
def lfw_misses():
  """LFW photos dlib's HOG finds no face in (View 2's first ones, from the alignment of an earlier run)."""
  pytest.importorskip('dlib', reason="dlib is the optional [align] extra")
  pytest.importorskip('cv2', reason="OpenCV's Haar cascades are in the optional [align] extra")
  lfw = shared_data('lfw')
  names = ['George_Galloway/George_Galloway_0004.jpg', 'James_Jones/James_Jones_0001.jpg',
           'Saeb_Erekat/Saeb_Erekat_0002.jpg']
  return [os.path.join(lfw, n) for n in names]


def test_second_detectors_find_faces_hog_misses(lfw_misses):
  from PIL import Image
  from facejax.data.align import default_aligner
  aligner = default_aligner()
  images = [np.asarray(Image.open(p).convert('RGB')) for p in lfw_misses]
  assert all(not aligner.detect(im) for im in images)
  r = no_face.NoFaceRescue('detect')
  for image in images:
    chip, kind = r.chip(image, aligner)
    assert kind == 'mmod' and chip.shape == (150, 150, 3)
  # The profile cascade knows one side; the mirrored pass finds the other: a face it finds, mirrored, is found
  # at the mirrored place.
  second = no_face.SecondDetectors()
  for image in images:
    for (l, t, r_, b), _, side in second.find(image, 'haar_profile')[:1]:
      w = image.shape[1]
      mirrored = [(box, m) for box, _, m in second.find(image[:, ::-1].copy(), 'haar_profile')]
      assert any(abs(ml - (w - 1 - r_)) <= 3 and abs(mt - t) <= 3 and m != side for (ml, mt, _, _), m in mirrored)


def test_the_benchmark_counts_every_policy_on_the_same_photos(lfw_misses):
  records = no_face.policy_benchmark(lfw_misses, ('detect', 'haar', 'center', 'lfw_box'))
  by = {r['policy']: r for r in records}
  assert by['detect']['found'] == 3 and by['detect']['found_by'] == {'mmod': 3}
  assert by['center']['found'] == by['lfw_box']['found'] == 0 and by['center']['missed'] == lfw_misses
  assert all(r['images'] == 3 and r['ms_per_photo'] > 0 for r in records)
  assert json.dumps(records)  # a JSON record (launch.benchmark_no_face)
