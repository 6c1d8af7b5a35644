"""train(config, workdir): one loop for every task. Resumes from the latest checkpoint of `workdir`."""
from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import jax_utils
from tqdm import tqdm

from facejax import data as fdata
from facejax import runs
from facejax.train.feed import DeviceFeed, batch_sharding, device_augmentation
from facejax.train.resident import ResidentFeed
from facejax.train.setup import load_teacher, setup
from facejax.train.state import TrainState
from facejax.train.tasks import ModelIO, hint_channels, task_needs, teacher_outputs

# Fields that may change between a run and its resumption without changing what is computed (val: the pairs
# periodic validation reports on; runs made before it took the pair-set schema saved val.source/kwargs).
RUNTIME_FIELDS = ('resume', 'log_every', 'progress', 'prefetch', 'eval_every', 'keep_checkpoints', 'checkpoint_every',
                  'val')
# Fields added after runs were made, with the value that reproduces what those runs did (absent = this value).
ADDED_FIELDS = {'data.augment_on': 'host', 'model.align': '', 'siamese.mimic_weight': 0.0,
                'distill.hint_weight': 0.0, 'model.classifier': 'softmax', 'model.cosine_scale': 64.0,
                'classify.margin': 0.0, 'distill.mode': 'plain', 'distill.mixup': 1.0, 'data.resident': False}


def _config_diff(a: dict, b: dict, prefix: str = '') -> list[str]:
  keys = sorted(set(a) | set(b))
  out = []
  for k in keys:
    if not prefix and k in RUNTIME_FIELDS:
      continue
    missing = ADDED_FIELDS.get(f'{prefix}{k}', '<missing>')
    va, vb = a.get(k, missing), b.get(k, missing)
    if isinstance(va, dict) and isinstance(vb, dict):
      out += _config_diff(va, vb, f'{prefix}{k}.')
    elif va != vb:
      out.append(f'{prefix}{k}: {va!r} -> {vb!r}')
  return out


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Write config.json, or refuse a workdir whose saved config differs (unless config.resume='override')."""
  path = os.path.join(workdir, 'config.json')
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    diff = _config_diff(saved, current)
    if diff and config.resume != 'override':
      raise ValueError(f'{workdir} holds a run with a different config ({"; ".join(diff[:8])}). '
                       'Use a new --workdir, or --config.resume=override to resume it with the new config.')
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, 'w') as f:
      json.dump(current, f, indent=2, sort_keys=True)


def first_replica(tree):
  """Replicated (pmapped) arrays -> numpy copies of this process's first replica. Reads a shard directly:
  indexing `x[0]` would compile a gather per leaf shape."""
  return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)


class MetricWriter:
  """Process 0 appends each record to `workdir/metrics.jsonl` and writes its numbers as TensorBoard scalars
  (`workdir/tb/`, tensorboardX: no TensorFlow needed); other processes write nothing."""

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if self.active:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, 'tb'))

  def write(self, record: dict) -> None:
    if not self.active:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for k, v in record.items():
      if k != 'step' and isinstance(v, (int, float)):
        self._tb.add_scalar(k, v, record['step'])
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Train `config.task` to `config.total_steps` in `workdir`; returns the last logged metrics.

  Re-running on the same workdir resumes from its latest checkpoint (params, BN stats, optimizer state, step,
  RNG and the data iterator position), so an interrupted run ends bitwise identical to an uninterrupted one."""
  config = ml_collections.ConfigDict(config)
  source = fdata.make_source(config.data.source, **config.data.kwargs.to_dict())
  with config.unlocked():
    config.model.num_classes = int(source.num_classes)  # identities of the training data
  check_workdir_config(config, workdir)
  finished = runs.latest_step(workdir)
  if finished is not None and finished >= config.total_steps:  # nothing to do: skip model/teacher set-up
    return {'step': finished, 'resumed_finished': True}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'model.json'), 'w') as f:
      json.dump(runs.model_info(config), f, indent=2)

  n_dev, n_proc = jax.local_device_count(), jax.process_count()
  if config.batch_size % (n_dev * n_proc):
    raise ValueError(f'config.batch_size={config.batch_size} must divide evenly over {n_proc} process(es) x '
                     f'{n_dev} local device(s)')
  num_classes = config.model.num_classes
  needs = task_needs(config)
  teacher = load_teacher(config) if needs.teacher else None
  # Batches come at the larger input size of student and teacher; each model resizes in-graph to its own.
  load_size = max(config.model.image_size, teacher[0].image_size if teacher else 0)
  cache = None
  if needs.cache:
    if config.data.augment:
      raise ValueError('config.distill.cache_teacher=True needs config.data.augment=False: the cache holds the '
                       "teacher's outputs for the un-augmented images")
    cache = teacher_outputs(*teacher, source, load_size, hint_channels=hint_channels(config))
  run = setup(config, num_classes, teacher, cache)
  if run.init_report and jax.process_index() == 0:
    logging.info('init from %s: %s', config.init.path, run.init_report.summary())
  student, state = run.student, run.state

  resident = config.data.get('resident', False)
  if resident:  # the whole source on the devices; batches drawn and augmented there
    if config.data.sampler != 'random':
      raise ValueError(f"config.data.resident=True draws batches at random: config.data.sampler={config.data.sampler!r}"
                       " needs the loader (resident=False)")
    loader = ResidentFeed(source, global_batch_size=config.batch_size, image_size=load_size, seed=config.seed,
                          augment=config.data.augment)
  else:
    loader = fdata.train_loader(source, global_batch_size=config.batch_size, image_size=load_size,
                                seed=config.seed, num_devices=n_dev, augment=config.data.augment,
                                augment_on=config.data.augment_on, sampler=config.data.sampler,
                                images_per_identity=config.data.images_per_identity,
                                process_index=jax.process_index(), process_count=n_proc)
  manager = runs.checkpoint_manager(workdir, config.keep_checkpoints)
  start = manager.latest_step()
  if start is not None:
    restored = manager.restore(start, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state.to_checkpoint()), data=ocp.args.JsonRestore()))
    state = TrainState(**restored['state'])
    loader.set_state(restored['data'])
    logging.info('resumed %s at step %d', workdir, start)
  start = int(start or 0)

  p_step = run.p_step
  frozen = jax_utils.replicate(run.frozen)
  pstate = jax_utils.replicate(state)
  # Batches are copied to the devices ahead of the step; the feed reports the loader state of the last batch
  # handed out, so a checkpoint never skips the batches still queued.
  extra_keys, transform = device_augmentation(config.data, load_size)
  feed = loader if resident else DeviceFeed(loader, batch_sharding(), mode=config.prefetch, depth=2, track_state=True,
                                            keys=('image', 'label', 'index') + extra_keys, transform=transform)
  writer = MetricWriter(workdir)
  last, t0, seen = {}, time.perf_counter(), 0
  bar = tqdm(total=config.total_steps, initial=start, desc=f'{config.task} {os.path.basename(workdir)}',
             disable=not config.progress or jax.process_index() != 0, dynamic_ncols=True)
  for step in range(start + 1, config.total_steps + 1):
    pstate, metrics = p_step(pstate, next(feed), frozen)
    seen += config.batch_size
    bar.update(1)
    if step % config.log_every == 0 or step == config.total_steps:
      m = {k: float(v) for k, v in first_replica(metrics).items()}
      dt = time.perf_counter() - t0
      streak, total = first_replica((pstate.nonfinite_streak, pstate.nonfinite_total))
      last = dict(step=step, **m, img_per_s=seen / dt, nonfinite_total=int(total))
      writer.write(last)
      bar.set_postfix(loss=f'{m["loss"]:.4f}', refresh=False)
      t0, seen = time.perf_counter(), 0
      if streak >= config.max_nonfinite_streak:
        raise FloatingPointError(f'{workdir}: step {step}: {streak} consecutive non-finite steps (loss or gradients '
                                 f'NaN/Inf), limit config.max_nonfinite_streak={config.max_nonfinite_streak}; '
                                 'lower the learning rate or check the data')
    if config.eval_every and step % config.eval_every == 0:
      _validate(config, student, first_replica(pstate), writer, step)
    if step % config.checkpoint_every == 0 or step == config.total_steps:
      manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(first_replica(pstate).to_checkpoint()),
                                                 data=ocp.args.JsonSave(feed.get_state())))
  feed.close()
  writer.close()
  bar.close()
  manager.wait_until_finished()
  manager.close()
  return last


def _validate(config, student: ModelIO, state: TrainState, writer: MetricWriter, step: int) -> None:
  from facejax.data.pairs import load_pairs
  from facejax.evaluation.evaluator import evaluate_pairs
  pairs, _ = load_pairs(config.val, config.model.image_size, 'config.val')
  result = evaluate_pairs(student, {'params': state.params, 'batch_stats': state.batch_stats}, pairs)
  writer.write({'step': step, 'val_accuracy': result['accuracy'], 'val_auc': result['auc']})
