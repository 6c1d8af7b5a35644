"""The distillation teacher cached (its outputs computed once per example) or run live in every step: the same
losses for distillation, for the Siamese stage's mimic anchor and for stage hints; where hint channels come from."""
import json

import ml_collections
import numpy as np
import pytest

from facejax.train import train
from tests.configs.tiny import get_config


def _cached_and_live(tmp_path, task: str, steps: int, configure, model=lambda c: None):
  """`task` trained from a 2-step tiny teacher twice, its outputs cached and run live -> (the last config, {cache:
  metric records}); `configure(c)` sets the task's own fields, `model(c)` both models'."""
  teacher = get_config()
  teacher.total_steps = 2
  model(teacher)
  train(teacher, str(tmp_path / 'teacher'))
  runs = {}
  for cache in (False, True):
    c = get_config(task)
    c.total_steps = steps
    c.data.augment = False
    c.distill.update(teacher_workdir=str(tmp_path / 'teacher'), cache_teacher=cache)
    model(c)
    configure(c)
    train(c, str(tmp_path / f'cache{cache}'))
    with open(tmp_path / f'cache{cache}' / 'metrics.jsonl') as f:
      runs[cache] = [r for r in map(json.loads, f) if 'loss' in r]
  return c, runs


def test_cached_teacher_outputs_match_running_the_teacher(tmp_path):
  c, runs = _cached_and_live(tmp_path, 'distill', 4, lambda c: c.distill.update(soft_weight=0.5))
  np.testing.assert_allclose([r['loss'] for r in runs[True]], [r['loss'] for r in runs[False]], rtol=1e-4)
  c.data.augment = True
  with pytest.raises(ValueError, match='cache_teacher=True needs config.data.augment=False'):
    train(c, str(tmp_path / 'bad'))


def test_siamese_with_a_mimic_anchor_adds_the_teachers_embedding_loss(tmp_path):
  c, runs = _cached_and_live(tmp_path, 'siamese', 3, lambda c: c.siamese.update(mimic_weight=0.5))
  np.testing.assert_allclose([r['loss'] for r in runs[True]], [r['loss'] for r in runs[False]], rtol=1e-4)
  assert all(r['embed_loss'] > 0 for r in runs[True])
  c.distill.teacher_workdir = ''
  with pytest.raises(ValueError, match='mimic_weight > 0 needs config.distill.teacher_workdir'):
    train(c, str(tmp_path / 'no_teacher'))


def _small_dlib(c, width=0.25):
  """dlib's net cut to two stages of one block at 48 px: hints on every stage (and a mismatch at stage 0) as in
  the whole net, at a third of the compile time of its five stages at 128 px."""
  c.model.update(name='dlib_resnet', image_size=48, embed_dim=128, preprocessing='dlib')
  c.model.kwargs = ml_collections.ConfigDict(dict(width=width, stages=((32, 1, False), (64, 1, True))))
  c.data.kwargs.update(image_size=48, images_per_identity=4)


def test_distill_hints_from_the_cache_match_the_live_teacher(tmp_path):
  """Each stage of the student regresses the teacher's (FitNets-style hints): cached and live agree, the hint
  term is in the loss, and a narrower student without the channels it was cut from is told what it needs."""
  c, runs = _cached_and_live(tmp_path, 'distill', 3, lambda c: c.distill.update(hint_weight=0.5), _small_dlib)
  np.testing.assert_allclose([r['loss'] for r in runs[True]], [r['loss'] for r in runs[False]], rtol=1e-4)
  for r in runs[True]:
    assert 0 < r['hint_loss'] and r['loss'] == pytest.approx(r['embed_loss'] + 0.5 * r['hint_loss'], rel=1e-5)
  _small_dlib(c, width=0.125)
  with pytest.raises(ValueError, match=r"stage 0 is .* in the student and .* in the teacher.*'stage_channels'"):
    train(c, str(tmp_path / 'narrower'))


def test_hint_channels_come_from_the_cut_students_metadata(tmp_path):
  from facejax.runs import CONVERTED_METADATA
  from facejax.train.tasks import hint_channels
  c = get_config('distill')
  assert hint_channels(c) is None  # hint_weight 0: no hints
  c.distill.hint_weight = 1.0
  assert hint_channels(c) == ()  # no cut student: every channel of every stage
  (tmp_path / CONVERTED_METADATA).write_text(json.dumps({'stage_channels': [[3, 1], [0]]}))
  c.init.path = str(tmp_path)
  assert hint_channels(c) == ((3, 1), (0,))


def test_a_teacher_aligned_otherwise_reads_the_students_chips_through_the_fixed_map(tmp_path):
  """A teacher whose model.json asks for ArcFace crops, taught to a student of dlib chips: load_teacher gives it
  chip_frames.chip_frame's map, and what it computes is the teacher on the mapped images (not on a plain resize)."""
  from facejax.data import chip_frames
  from facejax.train.setup import load_teacher
  from facejax.train.tasks import model_input
  teacher = get_config()
  teacher.total_steps, teacher.model.align = 1, 'arcface_5pt'
  train(teacher, str(tmp_path / 'teacher'))
  c = get_config('distill')
  c.distill.teacher_workdir, c.model.align = str(tmp_path / 'teacher'), 'dlib_5pt'
  io, variables = load_teacher(c)
  assert io.frame == chip_frames.chip_frame(chip_frames.chip_spec('dlib_5pt'), chip_frames.chip_spec('arcface_5pt'),
                                           io.image_size)
  images = np.random.RandomState(0).randint(0, 256, (2, 40, 40, 3)).astype(np.uint8)
  got = io(variables['params'], variables['batch_stats'], images, train=False)[0]['embedding']
  apply = lambda x: io.model.apply(variables, x, train=False, method='forward')['embedding']
  np.testing.assert_allclose(got, apply(model_input(images, io.preprocessing, io.image_size, io.frame)), atol=1e-6)
  assert not np.allclose(got, apply(model_input(images, io.preprocessing, io.image_size)), atol=1e-3)
  for student_align in ('arcface_5pt', ''):  # the same alignment, or a student of unaligned images: a resize
    c.model.align = student_align
    assert load_teacher(c)[0].frame is None


def test_an_embedding_teacher_is_cached_through_onednn_as_its_flax_forward_computes_it():
  """A teacher with no classifier (dlib's net) is cached through its BN-folded oneDNN forward: the embeddings
  equal the flax forward's (random BatchNorm statistics, so the fold is exercised); with hints, the flax path."""
  from facejax.inference.benchmark import random_variables
  from facejax.inference.optimize import onednn
  from facejax.train import tasks
  from facejax.train.setup import model_io
  if onednn.unavailable():
    pytest.skip(f'oneDNN custom call: {onednn.unavailable()}')
  c = get_config()
  _small_dlib(c)
  io = model_io(c, 0)
  assert not io.model.num_classes
  variables = random_variables(io.model, 48, method='forward')  # BatchNorm statistics other than the identity
  images = np.random.default_rng(0).integers(0, 256, (10, 48, 48, 3), dtype=np.uint8)
  source = [{'image': im} for im in images]
  assert tasks._folded_teacher(io, variables) is not None
  got = tasks.teacher_outputs(io, variables, source, 48, batch_size=4)
  want = io(variables['params'], variables['batch_stats'], images, train=False)[0]['embedding']
  assert set(got) == {'embedding'}
  np.testing.assert_allclose(got['embedding'], want, atol=1e-5)
  hinted = tasks.teacher_outputs(io, variables, source, 48, batch_size=4, hint_channels=())
  assert set(hinted) == {'embedding', 'stages'}
  np.testing.assert_allclose(hinted['embedding'], want, atol=1e-6)
