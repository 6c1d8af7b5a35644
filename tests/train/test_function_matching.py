"""Function matching (config.distill.mode='function_matching'): the student's targets are the teacher run in the step
on the augmented batch after mixup; the cached mode's targets are the cache; both resume exactly, with the loader or
with the whole set resident on the devices (config.data.resident)."""
import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from facejax.inference.optimize import onednn
from facejax.models import PREPROCESSING
from facejax.runs import restore_variables
from facejax.train import train
from facejax.train.feed import batch_sharding, replicate
from facejax.train.setup import model_io, setup
from facejax.train.tasks import ModelIO, make_task, mixup, task_needs
from tests.configs.tiny import get_config

NUM_CLASSES = 4


def _teacher(size=24, seed=1) -> tuple[ModelIO, dict]:
  """A random tiny teacher that reads dlib's preprocessing at its own size (24 px; the student reads 16 px)."""
  c = get_config()
  c.model.update(image_size=size, preprocessing='dlib')
  io = model_io(c, NUM_CLASSES)
  x = jnp.zeros((1, size, size, 3))
  return io, io.model.init({'params': jax.random.PRNGKey(seed)}, x, method='forward')


def _fm_config(**distill):
  c = get_config('distill')
  c.distill.update(**{'mode': 'function_matching', **distill})
  return c


def _batch(n=8, size=16, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), 'label': np.arange(n) % NUM_CLASSES,
          'index': np.arange(n, dtype=np.int32)}


def _reference_teacher(io: ModelIO, variables, images):
  """The teacher's normalised embedding of float pixels [B, H, W, 3], preprocessed and resized outside ModelIO."""
  x = PREPROCESSING['dlib'].apply(images)
  x = jax.image.resize(x, (x.shape[0], io.image_size, io.image_size, 3), 'linear', antialias=True)
  return io.model.apply(variables, x, train=False, method='forward')['embedding']


def test_mixup_keeps_most_of_each_image():
  """a ~ Beta(1, 1) folded to max(a, 1 - a): uniform on [0.5, 1]; each image mixed with its batch neighbour."""
  x = _batch()['image']
  coefs = []
  for i in range(400):
    mixed, a = mixup(x, jax.random.PRNGKey(i))
    coefs.append(float(a))
    if i < 3:
      np.testing.assert_allclose(mixed, a * x.astype(np.float32) + (1 - a) * np.roll(x, 1, 0).astype(np.float32),
                                 rtol=1e-6, atol=1e-4)
  coefs = np.asarray(coefs)
  assert coefs.min() >= 0.5 and coefs.max() <= 1.0
  assert coefs.mean() == pytest.approx(0.75, abs=0.03) and coefs.std() == pytest.approx(0.5 / np.sqrt(12), abs=0.02)


def test_function_matching_targets_are_the_teacher_on_the_mixed_batch():
  """The target is the teacher applied (at its own size and preprocessing) to exactly the mixed images the student
  reads; the plain mode's targets are the cache, or the teacher on the batch as loaded."""
  teacher, tvars = _teacher()
  c = _fm_config()
  student = model_io(c, NUM_CLASSES)
  batch, rng = _batch(), jax.random.PRNGKey(7)
  task = make_task(c, student, teacher, tvars)
  images, t_out, a, _ = jax.jit(task.inputs_and_targets)(batch, task.frozen(), rng)
  assert 0.5 <= float(a) < 1.0
  x = batch['image'].astype(np.float32)
  np.testing.assert_allclose(images, a * x + (1 - a) * np.roll(x, 1, 0), rtol=1e-6, atol=1e-4)
  want = _reference_teacher(teacher, tvars, jnp.asarray(images))
  np.testing.assert_allclose(t_out['embedding'], want, rtol=1e-5, atol=1e-6)
  assert t_out['embedding'].dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(t_out['embedding'], axis=-1), 1.0, rtol=1e-5)
  # Not the teacher on the unmixed batch: the mixing happened before the teacher.
  assert np.abs(t_out['embedding'] - _reference_teacher(teacher, tvars, jnp.asarray(x))).max() > 1e-3
  # Where oneDNN is built the step's teacher is its BN-folded forward (weights in frozen['folded']); the flax
  # forward on the same mixed batch gives the same targets.
  assert (task.folded_teacher is not None) == (onednn.unavailable() is None)
  flax_teacher = dataclasses.replace(task, folded_teacher=None)
  _, flax_out, _, _ = jax.jit(flax_teacher.inputs_and_targets)(batch, flax_teacher.frozen(), rng)
  np.testing.assert_allclose(t_out['embedding'], flax_out['embedding'], rtol=1e-5, atol=1e-6)

  c.distill.mode = 'plain'
  plain = make_task(c, student, teacher, tvars)
  images, t_out, a, _ = jax.jit(plain.inputs_and_targets)(batch, plain.frozen(), rng)
  assert a is None and images is not None
  np.testing.assert_array_equal(images, batch['image'])
  np.testing.assert_allclose(t_out['embedding'], _reference_teacher(teacher, tvars, jnp.asarray(x)), rtol=1e-5,
                             atol=1e-6)
  cache = {'embedding': np.random.default_rng(3).normal(size=(20, 16)).astype(np.float32)}
  cached = make_task(c, student, teacher, tvars, teacher_cache=cache)
  batch['index'] = np.array([5, 0, 19, 3, 3, 7, 11, 2], np.int32)
  _, t_out, _, _ = jax.jit(cached.inputs_and_targets)(batch, cached.frozen(), rng)
  np.testing.assert_array_equal(t_out['embedding'], cache['embedding'][batch['index']])

  with pytest.raises(ValueError, match="function_matching' runs the teacher.*cache_teacher=False"):
    make_task(_fm_config(), student, teacher, tvars, teacher_cache=cache)
  with pytest.raises(ValueError, match=r"config.distill.mode='mixed': expected one of \('plain', 'function_matching'"):
    make_task(_fm_config(mode='mixed'), student, teacher, tvars)


def test_the_pmapped_step_mimics_the_teacher_on_each_devices_mixed_shard():
  """Through the trainer's own pmapped step (2 devices): each device mixes its shard with the coefficient of its
  step rng; the step's loss is the mimic of the teacher on those images, computed here outside the step."""
  teacher, tvars = _teacher()
  c = _fm_config()
  run = setup(c, NUM_CLASSES, (teacher, tvars))
  n_dev = jax.local_device_count()
  batch = _batch(c.batch_size)
  sharded = jax.tree_util.tree_map(lambda v: v.reshape((n_dev, -1) + v.shape[1:]), batch)
  pstate, frozen = replicate((run.state, run.frozen), batch_sharding())
  _, metrics = run.p_step(pstate, sharded, frozen)

  mixed, coefs = [], []
  for d in range(n_dev):
    rng = jax.random.fold_in(jax.random.fold_in(run.state.rng, 0), d)
    images, a = mixup(sharded['image'][d], jax.random.split(rng)[0])
    mixed.append(images)
    coefs.append(float(a))
  mixed = jnp.concatenate(mixed)
  target = _reference_teacher(teacher, tvars, mixed)
  variables = {'params': run.state.params, 'batch_stats': run.state.batch_stats}
  # The host-side student computes BatchNorm statistics over the whole batch: what the step's cross-device BN does.
  out, _ = run.student.model.apply(variables, run.student.preprocessing.apply(mixed), train=True, method='forward',
                                   mutable=['batch_stats'])
  want = float(jnp.mean(jnp.sum((out['embedding'] - target) ** 2, -1)))
  assert float(metrics['embed_loss'][0]) == pytest.approx(want, rel=1e-4)
  assert float(metrics['mixup'][0]) == pytest.approx(np.mean(coefs), rel=1e-6) and min(coefs) >= 0.5


def test_task_needs_answers_for_the_trainer_and_the_benchmark():
  assert task_needs(get_config('classify')) == (False, False)
  c = get_config('siamese')
  assert not task_needs(c).teacher
  c.siamese.mimic_weight, c.distill.cache_teacher = 1.0, True
  assert task_needs(c) == (True, True)
  c = _fm_config()
  assert task_needs(c) == (True, False)


def _final_params(workdir):
  return jax.tree_util.tree_leaves(restore_variables(str(workdir))['params'])


@pytest.mark.parametrize('mode,resident', [('function_matching', False), ('function_matching', True),
                                           ('plain', True)])
def test_runs_resume_exactly(tmp_path, mode, resident):
  """Six steps uninterrupted, then the last checkpoint (step 6) removed and the run resumed from step 4: the final
  parameters are bitwise the same, with the loader or the resident set (plain: the cached teacher)."""
  teacher = get_config()
  teacher.total_steps = 2
  train(teacher, str(tmp_path / 'teacher'))
  c = get_config('distill')
  c.distill.update(teacher_workdir=str(tmp_path / 'teacher'), mode=mode, cache_teacher=mode == 'plain')
  c.data.augment = mode != 'plain'
  c.data.resident = resident
  workdir = tmp_path / 'student'
  train(c, str(workdir))
  first = _final_params(workdir)
  records = [json.loads(r) for r in (workdir / 'metrics.jsonl').read_text().splitlines()]
  if mode == 'function_matching':
    assert all(0.5 <= r['mixup'] <= 1.0 for r in records)
  shutil.rmtree(workdir / 'checkpoints' / '6')
  train(c, str(workdir))
  for x, y in zip(first, _final_params(workdir)):
    np.testing.assert_array_equal(x, y)


def test_resident_feed_reads_every_record_once_per_epoch_and_resumes():
  from facejax import data as fdata
  from facejax.train.resident import ResidentFeed, decode_source
  c = get_config()
  source = fdata.make_source(c.data.source, **c.data.kwargs.to_dict())
  n = len(source)  # 24
  images, _ = decode_source(source, 16)
  feed = ResidentFeed(source, global_batch_size=8, image_size=16, seed=0, augment=False)
  batches = [jax.device_get(next(feed)) for _ in range(6)]  # two epochs of 3 batches
  for b in batches:  # [devices, per-device batch, ...]: the centre crops of the records it names
    np.testing.assert_array_equal(b['image'].reshape((-1, 16, 16, 3)), images[b['index'].reshape(-1)])
  seen = np.concatenate([b['index'].reshape(-1) for b in batches])
  assert sorted(seen[:n]) == list(range(n)) and sorted(seen[n:]) == list(range(n))
  assert list(seen[:n]) != list(seen[n:])  # a new order every epoch

  aug = ResidentFeed(source, global_batch_size=8, image_size=16, seed=0, augment=True)
  first = [jax.device_get(next(aug)) for _ in range(3)]
  for a, b in zip(first, batches):  # the same records, cropped, flipped and jittered
    np.testing.assert_array_equal(a['index'], b['index'])
    assert not np.array_equal(a['image'], b['image'])
  state = aug.get_state()
  after = jax.device_get(next(aug))
  again = ResidentFeed(source, global_batch_size=8, image_size=16, seed=0, augment=True)
  again.set_state(state)
  np.testing.assert_array_equal(jax.device_get(next(again))['image'], after['image'])


def test_old_workdirs_resume_under_the_plain_mode(tmp_path):
  """A run saved before distill.mode, distill.mixup and data.resident existed resumes under their defaults."""
  teacher = get_config()
  teacher.total_steps = 2
  train(teacher, str(tmp_path / 'teacher'))
  c = get_config('distill')
  c.total_steps = 2
  c.distill.teacher_workdir = str(tmp_path / 'teacher')
  train(c, str(tmp_path / 'student'))
  path = tmp_path / 'student' / 'config.json'
  saved = json.loads(path.read_text())
  del saved['distill']['mode'], saved['distill']['mixup'], saved['data']['resident']
  path.write_text(json.dumps(saved))
  assert train(c, str(tmp_path / 'student')) == {'step': 2, 'resumed_finished': True}
  c.distill.mode = 'function_matching'
  with pytest.raises(ValueError, match=r"distill.mode: 'plain' -> 'function_matching'"):
    train(c, str(tmp_path / 'student'))


def test_the_gpu_schedule_runs_at_tiny_size_on_cpu(tmp_path):
  """configs/real_faces.py:fm_gpu: >= 10M images seen, bf16, the set resident on the device; its tiny variant trains
  here from a 16 px teacher (the student reads 48 px). The default student stage is still the cached one."""
  from configs import real_faces
  full, default = real_faces.get_config('fm_gpu').student, real_faces.get_config().student
  assert full.batch_size * full.total_steps >= 10_000_000 and full.half_precision and full.data.resident
  assert full.distill.mode == 'function_matching' and not full.distill.cache_teacher and full.data.augment
  assert (default.distill.mode, default.distill.cache_teacher, default.data.augment, default.data.resident,
          default.half_precision, default.total_steps, default.batch_size) == ('plain', True, False, True, False,
                                                                              9000, 64)
  assert real_faces.get_config('fm').student.distill.mode == 'function_matching'
  teacher = get_config()
  teacher.total_steps = 2
  teacher.model.embed_dim = 128
  train(teacher, str(tmp_path / 'teacher'))
  c = real_faces.get_config('fm_gpu,tiny').student
  c.distill.teacher_workdir = str(tmp_path / 'teacher')
  c.data.source = 'synthetic'
  c.data.kwargs = ml_collections.ConfigDict(dict(num_identities=4, images_per_identity=4, image_size=48))
  last = train(c, str(tmp_path / 'student'))
  assert last['step'] == c.total_steps == 2 and np.isfinite(last['loss']) and 0.5 <= last['mixup'] <= 1.0


def test_the_benchmark_times_the_function_matching_step_and_the_resident_feed():
  """configs/bench_real_student.py:mode=function_matching times the step with the teacher in it (its FLOPs on top of
  the student's), on the constant batch and on batches drawn from the resident set."""
  from configs import bench_real_student
  from facejax.train import throughput as tp
  c = bench_real_student.get_config('mode=function_matching,tiny')
  assert c.distill.mode == 'function_matching' and not c.distill.cache_teacher and c.data.augment
  c.bench.teacher.kwargs = ml_collections.ConfigDict(dict(width=0.25))  # a quarter of dlib's net: compiles faster
  r = tp.benchmark_training(c, steps=2, warmup=1, data='device', window=2)
  assert r['teacher_cached'] is False and 0.5 <= r['metrics']['mixup'] <= 1.0 and np.isfinite(r['final_loss'])
  c.data.resident = True
  r = tp.benchmark_training(c, steps=2, warmup=1, data='loader', window=2)
  assert r['resident'] is True and r['resident_bytes'] == 64 * 150 * 150 * 3 and np.isfinite(r['final_loss'])
  with pytest.raises(ValueError, match="mode='mixed': expected 'cached' or 'function_matching'"):
    bench_real_student.get_config('mode=mixed')
