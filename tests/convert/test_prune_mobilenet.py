"""A MobileNet student cut from its MobileNet teacher (facejax.convert.prune.prune_mobilenet): it keeps the channels
the teacher's later layers read, computes exactly what the teacher computes when the rest are unread, and its
renormalised BatchNorms compute in eval mode what training mode computes on the calibration batch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facejax.convert import prune
from facejax.convert.plan import flatten, unflatten
from facejax.models import build_model

BLOCKS = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 32, 2, 2, 3))  # a shortcut in stage 2 and 3, no expansion first
SIZE, CLASSES = 32, 5


def _net(width: float, head: int, blocks=BLOCKS):
  return build_model('mobilenet_v2', CLASSES, 16, blocks=blocks, width=width, head=head)


def _init(model, seed: int) -> dict:
  v = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, SIZE, SIZE, 3)), method='forward')
  rng = np.random.default_rng(seed)  # trained-looking BatchNorms: statistics and affines away from 0 / 1
  stats = {p: (rng.uniform(0.5, 2, x.shape) if p.endswith('/var') else rng.normal(0, 0.3, x.shape)).astype(np.float32)
           for p, x in flatten(dict(v['batch_stats'])).items()}
  params = {p: (x + rng.normal(0, 0.2, x.shape)).astype(np.float32) if '_bn/' in p or '/bn/' in p else np.asarray(x)
            for p, x in flatten(dict(v['params'])).items()}
  return {'params': unflatten(params), 'batch_stats': unflatten(stats)}


def _unread(variables: dict, keep: dict, teacher) -> dict:
  """The teacher with every kernel row that reads a channel outside `keep` zeroed: those channels reach nothing."""
  groups, _, _ = prune.mobilenet_streams(teacher)
  p = flatten(dict(variables['params']))

  def zero_rows(path, kept, axis):
    v = p[path].copy()
    mask = np.ones(v.shape[axis], bool)
    mask[kept] = False
    v[(slice(None),) * axis + (mask,)] = 0
    p[path] = v
  for i in range(len(groups)):
    src = keep[f'stream{groups[i - 1] if i else 0}']
    if f'backbone/block{i}/expand_conv/kernel' in p:
      zero_rows(f'backbone/block{i}/expand_conv/kernel', src, 2)
    zero_rows(f'backbone/block{i}/project_conv/kernel', keep.get(f'block{i}', src), 2)
  zero_rows('backbone/head_conv/kernel', keep[f'stream{groups[-1]}'], 2)
  zero_rows('embedding/dense/kernel', keep['head'], 0)
  return {'params': unflatten(p), 'batch_stats': variables['batch_stats']}


def test_the_cut_keeps_the_read_channels_and_the_teachers_function():
  teacher, student = _net(1.0, 64), _net(0.5, 24)
  variables = _init(teacher, 0)
  wanted = {k: np.sort(np.random.default_rng(1).permutation(of)[:n]) for k, (n, of) in {
      'stream0': (16, 32), 'stream1': (8, 16), 'stream2': (16, 24), 'stream3': (16, 32), 'head': (24, 64),
      'block1': (48, 96), 'block2': (96, 144), 'block3': (96, 144), 'block4': (96, 192)}.items()}
  variables = _unread(variables, wanted, teacher.backbone)
  keep = prune.select_mobilenet_channels(variables['params'], teacher.backbone, student.backbone)
  assert {k: v.tolist() for k, v in keep.items()} == {k: v.tolist() for k, v in wanted.items()}
  cut = prune._cut_mobilenet(variables, keep, teacher.backbone)
  x = jax.random.normal(jax.random.PRNGKey(2), (4, SIZE, SIZE, 3))
  got, want = student.apply(cut, x, method='forward'), teacher.apply(variables, x, method='forward')
  for k in ('raw_embedding', 'logits'):
    np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4)


def test_prune_mobilenet_renormalises_and_reports():
  teacher, student = _net(1.0, 64), _net(0.5, 24)
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (16, SIZE, SIZE, 3)))
  cut, report = prune.prune_mobilenet(_init(teacher, 0), teacher, student, x)
  evaluated = student.apply(cut, x, method='forward')
  trained, _ = student.apply(cut, x, True, method='forward', mutable=['batch_stats'])
  np.testing.assert_allclose(evaluated['raw_embedding'], trained['raw_embedding'], rtol=1e-3, atol=1e-3)
  assert report.kept['stream0'] == (16, 32) and report.kept['head'] == (24, 64) and report.kept['block1'] == (48, 96)
  no_classifier = {k: v for k, v in cut['params'].items() if k != 'classifier'}
  assert report.student_params == sum(np.size(v) for v in jax.tree_util.tree_leaves(no_classifier))
  assert report.summary().startswith('MobileNet cut to streams 16/8/16/16 and head 24: ')


def test_a_student_that_is_no_narrower_copy_is_named():
  teacher = _net(1.0, 64)
  x = np.zeros((2, SIZE, SIZE, 3), np.float32)
  with pytest.raises(ValueError, match=r'no narrower copy of the teacher \(5 blocks\): a cut needs the same blocks'):
    prune.prune_mobilenet(_init(teacher, 0), teacher, _net(0.5, 24, BLOCKS[:2]), x)
  with pytest.raises(ValueError, match=r'the student is wider than the teacher: streams \[32, 16, 24, 32\] and head '
                                       r'128'):
    prune.prune_mobilenet(_init(teacher, 0), teacher, _net(1.0, 128), x)
  with pytest.raises(ValueError, match=r'blocks \[0\] add their input in one net and not in the other'):
    prune.prune_mobilenet(_init(teacher, 0), teacher, build_model('mobilenet_v2', CLASSES, 16, blocks=BLOCKS,
                                                                  width=0.5, head=24, stem=8), x)
  with pytest.raises(ValueError, match=r'images: expected \[N >= 2, S, S, 3\]'):
    prune.prune_mobilenet(_init(teacher, 0), teacher, _net(0.5, 24), x[:1])


def test_a_stage_is_cut_from_an_earlier_stage_when_it_trains(tmp_path):
  """init.path='prune:stage:teacher': stage_plan names the cut's folder, cut_init cuts the trained teacher run into
  it (kept when it is there), and the stage starts from exactly the cut (init.mode 'all': heads too)."""
  import json
  import os

  import ml_collections
  import orbax.checkpoint as ocp
  from PIL import Image

  from configs.real_transfer import get_config
  from facejax.lineage import cut_init, stage_plan
  from facejax.models.preprocessing import TORCHVISION
  from facejax.runs import build_from_info, checkpoint_dir, load_converted
  from facejax.train.setup import initial_variables
  from facejax.train.tasks import ModelIO
  kwargs = {'blocks': [list(b) for b in BLOCKS], 'width': 1.0, 'head': 64}
  info = {'name': 'mobilenet_v2', 'num_classes': CLASSES, 'embed_dim': 16, 'dropout': 0.0, 'kwargs': kwargs,
          'image_size': SIZE, 'preprocessing': TORCHVISION.to_dict(), 'task': 'classify'}
  teacher = tmp_path / 'teacher'
  os.makedirs(teacher)
  (teacher / 'model.json').write_text(json.dumps(info))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(checkpoint_dir(str(teacher)), '1', 'state'), _init(build_from_info(info)[0], 0))
  checkpointer.wait_until_finished()
  rng = np.random.default_rng(0)
  for person in ('a', 'b'):
    os.makedirs(tmp_path / 'tree' / person)
    for i in range(2):
      Image.fromarray(rng.integers(0, 256, (150, 150, 3), np.uint8)).save(tmp_path / 'tree' / person / f'{i}.png')
  c = get_config('tiny')
  c.stages = ('student',)
  c.student.model.update(image_size=SIZE, embed_dim=16)
  c.student.model.kwargs = ml_collections.ConfigDict(dict(kwargs, width=0.5, head=24))
  c.student.init.update(path='prune:stage:teacher', mode='all')
  prepared = {'data_dir': '/d', 'sets': {'identities': {'name': 'ids', 'tree': str(tmp_path / 'tree')}}}
  plan = stage_plan(c, str(tmp_path), prepared)
  assert plan['student'].init.path == str(tmp_path / 'student_init') and not (tmp_path / 'student_init').exists()
  cut_init('student', c, plan, str(tmp_path), prepared)
  _, cut, meta = load_converted(plan['student'].init.path)
  assert meta['teacher'] == str(teacher) and meta['kwargs']['head'] == 24 and meta['calibration_images'] == 4
  assert meta['summary'].startswith('MobileNet cut to streams 16/8/16/16 and head 24')
  stamp = (tmp_path / 'student_init' / 'metadata.json').stat().st_mtime_ns
  cut_init('student', c, plan, str(tmp_path), prepared)  # kept
  assert (tmp_path / 'student_init' / 'metadata.json').stat().st_mtime_ns == stamp
  student = ModelIO(*build_from_info(dict(info, kwargs=dict(kwargs, width=0.5, head=24))))
  variables, _ = initial_variables(plan['student'], student, jax.random.PRNGKey(1))
  for got, want in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(cut)):
    np.testing.assert_array_equal(got, want)
  c.student.model.preprocessing = 'facejax'
  with pytest.raises(ValueError, match=r"config.student.init.path='prune:...' cuts the stage's model from .*teacher: "
                                       r"it needs config.student.model name='mobilenet_v2', the teacher's "
                                       r"preprocessing and embed_dim=16 \(any with "
                                       r"config.student.init.mode='backbone'\); got 'mobilenet_v2', 'facejax', 16"):
    cut_init('student', c, stage_plan(c, str(tmp_path), prepared), str(tmp_path), prepared)
