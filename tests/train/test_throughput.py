"""Training throughput smoke tests: tiny models on 2 CPU devices, every task and both data modes produce the JSON
record with finite numbers (no timing assertions: this machine is shared)."""
import gzip
import json
import math
import os
import re
import subprocess
import sys
import time
import types

import jax
import numpy as np
import pytest

from facejax.train import throughput as tp
from facejax.train import throughput_input as tp_input
from facejax.train import throughput_report as tp_report
from facejax.train.feed import DeviceFeed, batch_sharding, replicate
from tests.xla_flags import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
KEYS = ('task', 'model', 'data', 'batch_size', 'image_size', 'dtype', 'img_per_s', 'step_ms_median', 'compile_s',
        'gflops_per_step_per_device', 'mfu', 'peak_tflops', 'memory', 'backend', 'device_kind', 'num_devices',
        'final_loss', 'nonfinite_total', 'window_ms')


def load_config(name, arg):
  import importlib
  return importlib.import_module(f'configs.{name}').get_config(arg)


def check(record, *, steps, window, data):
  assert set(KEYS) <= set(record), sorted(set(KEYS) - set(record))
  json.dumps(record)  # serialisable
  assert record['data'] == data and record['steps'] == steps
  assert len(record['window_ms']) == math.ceil(steps / window)
  for k in ('img_per_s', 'step_ms_median', 'compile_s', 'final_loss', 'gflops_per_step_per_device'):
    assert math.isfinite(record[k]) and record[k] >= 0, (k, record[k])
  assert record['img_per_s'] > 0 and record['gflops_per_step_per_device'] > 0
  assert record['nonfinite_total'] == 0
  assert record['num_devices'] == jax.local_device_count() == 2
  assert record['mfu'] is None  # no peak known for CPU; with one given it is a fraction
  assert record['dtype'] == 'bfloat16'


@pytest.mark.parametrize('name,arg,loss_f32_dots', [
    ('bench_resnet50', 'tiny', 0), ('bench_resnet50', 's2d,tiny', 0), ('bench_distill', 'teacher=resnet50,tiny', 0),
    ('bench_siamese', 'tiny', 3)])  # the contrastive loss's float32 pairwise distances: forward + 2 gradients
def test_bf16_step_computes_in_bf16_and_donates_its_state(name, arg, loss_f32_dots):
  """The half-precision policy in the lowered pmapped step: every convolution and every matmul of the models
  (teacher included) takes and returns bf16, and the train state's buffers are donated (aliased to outputs)."""
  config = load_config(name, arg)
  setup = tp.build_training(config, config.bench.num_classes)
  sharding = batch_sharding()
  batch = tp.device_batch(config, setup.student.image_size, config.bench.num_classes, sharding)
  state = replicate(setup.state, sharding)
  text = setup.p_step.lower(state, batch, replicate(setup.frozen, sharding)).as_text()
  ops = [(m.group(1), tuple(re.findall(r'x([a-z]\w*)>', line.rsplit(':', 1)[-1])))
         for line in text.splitlines() if (m := re.search(r'stablehlo\.(convolution|dot_general)', line))]
  convs = [dtypes for op, dtypes in ops if op == 'convolution']
  assert len(convs) > 20 and set(convs) == {('bf16',) * 3}
  dots = [dtypes for op, dtypes in ops if op == 'dot_general']
  assert set(dots) <= {('bf16',) * 3, ('f32',) * 3} and dots.count(('f32',) * 3) == loss_f32_dots
  assert text.count('tf.aliasing_output') == len(jax.tree_util.tree_leaves(state))


def test_classify_device_then_pipeline(tmp_path):
  config = load_config('bench_resnet50', 'tiny,model=student_vgg')
  hlo = str(tmp_path / 'step.hlo.txt.gz')
  r = tp.benchmark_training(config, steps=4, warmup=1, data='device', window=2, profile_dir=str(tmp_path / 'trace'),
                            profile_steps=2, hlo_out=hlo)
  check(r, steps=4, window=2, data='device')
  assert r['per_device_batch'] == 4 and r['num_classes'] == 16
  # Model FLOPs (convs + matmuls of the jaxpr) sit just under XLA's count of the whole compiled step (which adds
  # BN, activations and the optimizer), and are what MFU is made of.
  assert 0.8 * r['gflops_xla_compiled'] < r['gflops_per_step_per_device'] < r['gflops_xla_compiled']
  with gzip.open(hlo, 'rt') as f:
    assert f.read().startswith('HloModule') and r['hlo_file_bytes'] == os.path.getsize(hlo)
  # CPU: no device planes; the XLA ops tagged with their hlo_op on the host threads stand in.
  prof = r['profile']
  assert 'error' not in prof, prof
  assert prof['steps'] == 2 and prof['device_planes'] == [] and os.path.isfile(prof['trace_file'])
  assert 0 < prof['device_busy_ms_per_step'] and prof['wall_ms_per_step'] > 0 and prof['by_hlo_op']
  assert sum(row['frac'] for row in prof['by_op_kind']) <= 1.0 + 1e-6
  config.bench.prefetch = 'device_put'
  config.bench.cache = 'decoded'
  p = tp.benchmark_training(config, steps=3, warmup=1, data='loader', window=2, peak_tflops=1.0)
  assert p['mfu'] is not None and 0 < p['mfu'] < 1
  p['mfu'] = None
  check(p, steps=3, window=2, data='loader')
  assert p['data_source'] == 'synthetic' and p['cache'] == 'decoded' and p['prefetch'] == 'device_put'
  assert p['loader_img_per_s'] > 0 and p['loader_warmup_batches'] == tp_input.loader_warmup_batches(0, 2) == 6
  # Same program on both paths: the FLOPs agree.
  assert p['gflops_per_step_per_device'] == r['gflops_per_step_per_device']


def test_distill_random_teacher():
  config = load_config('bench_distill', 'tiny,teacher=vgg_small,student=student_vgg')
  config.bench.teacher.image_size = 48  # batches come at the teacher's larger size, as the trainer loads them
  r = tp.benchmark_training(config, steps=2, warmup=1, data='device', window=2)
  check(r, steps=2, window=2, data='device')
  assert r['image_size'] == 32 and r['teacher_image_size'] == r['load_size'] == 48
  assert r['teacher'] == 'vgg_small' and r['label'] == 'vgg_small->student_vgg' and r['teacher_params'] > 0
  assert {'embed_loss', 'soft_loss', 'hard_loss'} <= set(r['metrics'])


def test_real_student_step_looks_up_the_teacher_cache():
  """configs/bench_real_student.py times make real's distillation step, whose teacher is a cache: built from the
  teacher's outputs for the benchmark's batch, it gives the live teacher's loss and update to float32 rounding,
  and the step's FLOPs are the student's alone."""
  config = load_config('bench_real_student', 'tiny')
  assert config.distill.cache_teacher and not config.half_precision
  live_config = load_config('bench_real_student', 'tiny')
  live_config.distill.cache_teacher = False
  sharding = batch_sharding()
  out = {}
  for name, c in (('cached', config), ('live', live_config)):
    setup = tp.build_training(c, c.bench.num_classes)
    assert ('cache' in setup.frozen) == (name == 'cached')
    batch = tp.device_batch(c, setup.student.image_size, c.bench.num_classes, sharding)
    state, metrics = setup.p_step(replicate(setup.state, sharding), batch, replicate(setup.frozen, sharding))
    out[name] = (float(metrics['embed_loss'][0]), jax.device_get(jax.tree_util.tree_map(lambda x: x[0], state.params)))
  assert out['cached'][0] == pytest.approx(out['live'][0], rel=1e-5) and out['cached'][0] > 0.1
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), out['cached'][1],
                         out['live'][1])
  r = tp.benchmark_training(config, steps=2, warmup=1, data='device', window=2)
  live = tp.benchmark_training(live_config, steps=1, warmup=0, data='device', window=1)
  assert r['teacher_cached'] is True and live['teacher_cached'] is False and r['dtype'] == 'float32'
  assert r['gflops_per_step_per_device'] < 0.2 * live['gflops_per_step_per_device']  # the teacher's pass is gone
  assert json.loads(json.dumps(r['model_kwargs'])) == {'channels': [4, 4, 4, 4], 'blocks': [1, 2, 2, 2, 1]}
  assert 'channels=4/4/4/4' in tp_report.summary_table([r])


def test_real_student_config_names_a_bad_count():
  with pytest.raises(ValueError, match=r"bench_real_student.py: channels='8/x/48/96': expected counts separated by /"):
    load_config('bench_real_student', 'channels=8/x/48/96')


def test_cli_siamese_pipeline_from_prepared_folders(tmp_path):
  data_dir = str(tmp_path / 'tfds')
  out = tp_input.prepare_bench_folders(data_dir, num_identities=6, images_per_identity=4, image_size=48, processes=1)
  assert os.path.isfile(os.path.join(out, 'dataset_info.json'))
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=xla_flags(2), PYTHONPATH=ROOT)
  json_out = tmp_path / 'res' / 'siamese.json'
  cmd = [sys.executable, '-m', 'launch.benchmark_train',
         f'--config=configs/bench_siamese.py:tiny,model=student_vgg,data_dir={data_dir}', '--data=loader',
         '--steps=2', '--warmup=1', '--window=1', '--name=siamese_pipeline', f'--json_out={json_out}',
         '--config.bench.prefetch=thread', '--config.data.augment_on=device']
  p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  r = json.loads(json_out.read_text())
  check(r, steps=2, window=1, data='loader')
  assert r['name'] == 'siamese_pipeline' and r['task'] == 'siamese'
  assert r['data_source'] == 'folders' and r['encoded'] and r['records'] == 24 and r['prefetch'] == 'thread'
  assert r['augment_on'] == 'device'
  table = tp_report.summary_table([r, {'name': 'broken', 'error': 'timeout after 90 s'}])
  assert 'siamese_pipeline' in table and 'failed: timeout' in table


def test_device_feed_modes_keep_order_and_raise():
  sharding = batch_sharding()

  def batches(n, fail_at=None):
    for i in range(n):
      if i == fail_at:
        raise RuntimeError('bad record 3')
      yield {'image': np.full((2, 1, 2, 2, 3), i, np.uint8), 'label': np.full((2, 1), i, np.int32), 'index': 0}

  for mode in ('thread', 'device_put', 'none'):
    feed = DeviceFeed(batches(5), sharding, mode=mode, depth=2)
    got = [int(np.asarray(next(feed)['label'])[1, 0]) for _ in range(5)]
    feed.close()
    assert got == list(range(5)), mode
  feed = DeviceFeed(batches(5, fail_at=3), sharding, mode='thread')
  with pytest.raises(RuntimeError, match='bad record 3'):
    for _ in range(5):
      next(feed)
  feed.close()


def test_device_feed_state_resumes_exactly():
  """Reading ahead must not lose batches: the tracked state is the one after the last batch handed out."""
  from facejax.data import SyntheticFaces, train_loader
  source = SyntheticFaces(4, 4, image_size=16)
  make = lambda: train_loader(source, global_batch_size=4, image_size=16, seed=0, num_devices=2, augment=False)
  for mode in ('thread', 'device_put'):
    feed = DeviceFeed(make(), batch_sharding(), mode=mode, depth=2, track_state=True)
    next(feed), next(feed)
    state = feed.get_state()
    third = np.asarray(next(feed)['image'])
    feed.close()
    resumed = make()
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)['image'], third, err_msg=mode)


def test_peak_tflops():
  assert tp.peak_tflops_for('NVIDIA H100 80GB HBM3') == 989.0
  assert tp.peak_tflops_for('NVIDIA H100 PCIe') == 756.0
  assert tp.peak_tflops_for('NVIDIA H200') == 989.0
  assert tp.peak_tflops_for('cpu') is None


class StaggeredLoader:
  """A loader whose batch n is ready at a fixed time, like grain's worker processes: `workers` first batches
  one start-up apart, then `buffered` batches at once, then one every `step_s`. Time is a fake clock that
  `next()` advances to the batch's ready time (`now` replaces time.perf_counter), so nothing sleeps."""

  def __init__(self, workers: int, start_s: float, buffered: int, step_s: float):
    self.workers, self.start_s, self.buffered, self.step_s = workers, start_s, buffered, step_s
    self.n, self.t = 0, 0.0

  def ready_s(self, n: int) -> float:
    if n < self.workers:
      return self.start_s * (n + 1)
    return self.start_s * self.workers + max(0, n - self.workers - self.buffered + 1) * self.step_s

  def now(self) -> float:
    return self.t

  def __next__(self):
    self.t = max(self.t, self.ready_s(self.n))
    self.n += 1
    return self.n


def test_loader_throughput_skips_worker_start_up(monkeypatch):
  # 4 workers starting 0.15 s apart, then 20 ms a batch: 50 batches/s in steady state, 4 batches in the first
  # 0.6 s. prefetch 1 + grain's queue of 1 per worker: 2 x 4 x 3 = 24 batches of warm-up (0.84 s here).
  warmup = tp_input.loader_warmup_batches(num_workers=4, prefetch=1)
  assert warmup == 24 and tp_input.loader_warmup_batches(num_workers=0, prefetch=2) == 6
  loader = StaggeredLoader(workers=4, start_s=0.15, buffered=8, step_s=0.02)
  monkeypatch.setattr(tp_input, 'time', types.SimpleNamespace(perf_counter=loader.now))
  m = tp_input.loader_throughput(loader, batch_size=16, seconds=0.49, warmup_batches=warmup)
  assert m['warmup_batches'] == warmup and m['warmup_s'] == pytest.approx(0.84)
  assert m['batches'] == 25 and m['window_s'] == pytest.approx(0.5)
  assert m['img_per_s'] == pytest.approx(16 / 0.02), m  # the steady rate exactly
  cold = StaggeredLoader(workers=4, start_s=0.15, buffered=8, step_s=0.02)
  monkeypatch.setattr(tp_input, 'time', types.SimpleNamespace(perf_counter=cold.now))
  unwarmed = tp_input.loader_throughput(cold, batch_size=16, seconds=0.49)
  assert unwarmed['img_per_s'] < 0.5 * 16 / 0.02  # what the old measurement reported: start-up dominates
  assert tp_input.loader_throughput(loader, batch_size=16, seconds=0) is None


def test_img_per_s_counts_every_stall_of_the_feed(monkeypatch):
  """img/s is images over the wall time of all timed steps: a feed that stalls once (a loader falling behind)
  lowers it, while the median window (the step's own speed) does not see the stall."""
  class StallingFeed(tp.ConstantFeed):
    calls = 0

    def __next__(self):
      StallingFeed.calls += 1
      if StallingFeed.calls == 4:  # 1 warm-up step, then the 3rd timed step (the second window)
        time.sleep(1.0)
      return self.batch

  monkeypatch.setattr(tp, 'ConstantFeed', StallingFeed)
  config = load_config('bench_resnet50', 'tiny,model=student_vgg')
  r = tp.benchmark_training(config, steps=6, warmup=1, data='device', window=2)
  wall_s = sum(r['window_ms']) * 2 / 1e3
  assert r['img_per_s'] == pytest.approx(6 * config.batch_size / wall_s, abs=0.1)  # rounded to 0.1
  assert r['window_ms'][1] > 500 > max(r['window_ms'][0], r['window_ms'][2])
  # Both sides are rounded (img/s to 0.1, ms to 0.001): the bound is the two roundings, not a fixed 0.1, which a
  # ~6 ms step exceeds (0.0005 ms of rounding there is 0.11 img/s).
  from_ms = config.batch_size / r['step_ms_median'] * 1e3
  assert r['img_per_s_median_window'] == pytest.approx(from_ms, abs=0.05 + from_ms * 0.0005 / r['step_ms_median'])
  assert r['img_per_s'] < r['img_per_s_median_window']


def test_paired_table_pairs_device_and_pipeline_runs():
  base = dict(task='classify', label='resnet50', image_size=224, batch_size=256, model_kwargs={}, mfu=0.135,
              compile_s=25.0, xla_flags='--a=1')
  records = [dict(base, data='device', img_per_s=5618.0),
             dict(base, data='device', img_per_s=1.0, compile_s=3.0),  # the profile run: the first one counts
             dict(base, data='loader', prefetch='thread', cache='decoded', img_per_s=1399.0),  # not the pairing
             dict(base, data='loader', prefetch='thread', cache='none', img_per_s=5597.0, mfu=None),
             dict(base, data='loader', prefetch='thread', cache='none', img_per_s=5610.0, augment_on='device'),
             dict(base, data='loader', prefetch='none', cache='none', img_per_s=5700.0, augment_on='device'),
             dict(base, data='device', img_per_s=6100.0, model_kwargs={'stem_space_to_depth': True}),
             dict(base, data='loader', prefetch='thread', cache='none', img_per_s=4800.0, augment_on='host',
                  model_kwargs={'stem_space_to_depth': True}),
             dict(base, data='device', img_per_s=5500.0, xla_flags='--a=1 --b=2', compile_cache_hit=True),
             {'name': 'broken', 'error': 'timeout'}]
  rows = tp_report.paired_table(records).splitlines()
  assert rows[2] == '| classify | resnet50@224 | 256 | 5,618 | 5,597 | 5,610 | 1.00 | 13.5% | 25.0 |'
  assert rows[3] == ('| classify | resnet50@224 (stem_space_to_depth=True) | 256 | 6,100 | 4,800 | - | 0.79 | 13.5% '
                     '| 25.0 |')
  assert rows[4] == '| classify | resnet50@224 [--b=2] | 256 | 5,500 | - | - | - | 13.5% | 25.0 (cache) |'
  assert len(rows) == 7 and rows[-1] == 'XLA_FLAGS of every run: --a=1'
  # A flag only the device runs share is theirs, not every run's (a pipeline run without it).
  rows = tp_report.paired_table([dict(base, data='device', img_per_s=5618.0, xla_flags='--lhs'),
                                 dict(base, data='loader', prefetch='thread', cache='none', img_per_s=5000.0,
                                      xla_flags='')]).splitlines()
  assert rows[2].startswith('| classify | resnet50@224 [--lhs] | 256 | 5,618 | - | - |') and len(rows) == 3
