"""train(config, workdir): one loop for every task. Resumes from the latest checkpoint of `workdir`."""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import jax_utils
from tqdm import tqdm

from facejax import data as fdata
from facejax import runs
from facejax.train.feed import DeviceFeed, batch_sharding, device_augmentation
from facejax.train.state import TrainState, create_train_state, make_optimizer
from facejax.train.steps import make_p_train_step
from facejax.train.tasks import ModelIO, make_task, teacher_outputs

# Fields that may change between a run and its resumption without changing what is computed.
RUNTIME_FIELDS = ('resume', 'log_every', 'progress', 'prefetch', 'eval_every', 'keep_checkpoints', 'checkpoint_every')
# Fields added after runs were made, with the value that reproduces what those runs did (absent = this value).
ADDED_FIELDS = {'data.augment_on': 'host', 'model.align': ''}


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


def model_io(config, num_classes: int, bn_axis=None) -> ModelIO:
  from facejax.models import PREPROCESSING, build_model
  m = config.model
  if m.preprocessing not in PREPROCESSING:
    raise ValueError(f'config.model.preprocessing={m.preprocessing!r}: expected one of {sorted(PREPROCESSING)}')
  model = build_model(m.name, num_classes, m.embed_dim, m.dropout,
                      dtype=jnp.bfloat16 if config.half_precision else jnp.float32, bn_axis=bn_axis,
                      **m.kwargs.to_dict())
  return ModelIO(model, PREPROCESSING[m.preprocessing], m.image_size)


def initial_variables(config, student: ModelIO, rng):
  """Fresh init, then (config.init.path) copy pretrained tensors in: a facejax run dir or a converted checkpoint.
  init.mode 'backbone': the backbone only (transfer: new heads); 'all': heads too where shapes match."""
  x = jnp.zeros((1, student.image_size, student.image_size, 3))
  variables = jax.jit(lambda r: student.model.init({'params': r, 'dropout': r}, x, method='forward'))(rng)
  path = config.init.path
  if not path:
    return variables, None
  if config.init.mode not in ('backbone', 'all'):
    raise ValueError(f"config.init.mode={config.init.mode!r}: expected 'backbone' or 'all'")
  from facejax.convert import transfer_backbone
  if os.path.isfile(os.path.join(path, 'model.json')):
    source = runs.restore_variables(path)
  else:
    _, source, _ = runs.load_converted(path)  # converted ImageNet weights (launch.convert)
  try:
    return transfer_backbone(variables, source, heads=config.init.mode == 'all')
  except ValueError as e:
    raise ValueError(f'config.init.path={path}: {e}') from None


def load_teacher(config):
  """(ModelIO, variables) of the distillation teacher run, frozen in fp32 (or bf16 with half_precision)."""
  wd = config.distill.teacher_workdir
  info = runs.read_model_info(wd)
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  model, pre, size = runs.build_from_info(info, dtype=dtype)
  variables = runs.restore_variables(wd)
  # The frozen teacher's weights are cast once here, not in every step (BN statistics stay float32).
  variables['params'] = jax.tree_util.tree_map(lambda x: np.asarray(x, dtype), variables['params'])
  return ModelIO(model, pre, size), variables


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
  student = model_io(config, num_classes)  # host-side twin: init and evaluation
  teacher, teacher_vars = load_teacher(config) if config.task == 'distill' else (None, None)
  # Batches come at the larger input size of student and teacher; each model resizes in-graph to its own.
  load_size = max(student.image_size, teacher.image_size if teacher else 0)
  cache = None
  if config.task == 'distill' and config.distill.cache_teacher:
    if config.data.augment:
      raise ValueError('config.distill.cache_teacher=True needs config.data.augment=False: the cache holds the '
                       "teacher's outputs for the un-augmented images")
    cache = teacher_outputs(teacher, teacher_vars, source, load_size)
  task = make_task(config, model_io(config, num_classes, bn_axis='batch'), teacher, teacher_vars, cache)

  rng = jax.random.PRNGKey(config.seed)
  init_rng, state_rng = jax.random.split(rng)
  variables, init_report = initial_variables(config, student, init_rng)
  if init_report and jax.process_index() == 0:
    logging.info('init from %s: %s', config.init.path, init_report.summary())
  tx, schedule = make_optimizer(config.optim, config.total_steps, variables['params'])
  state = create_train_state(state_rng, student.model, tx, student.image_size, variables)

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

  p_step = make_p_train_step(task.loss_fn, tx, schedule)
  frozen = jax_utils.replicate(task.frozen())
  pstate = jax_utils.replicate(state)
  # Batches are copied to the devices ahead of the step; the feed reports the loader state of the last batch
  # handed out, so a checkpoint never skips the batches still queued.
  extra_keys, transform = device_augmentation(config.data, load_size)
  feed = DeviceFeed(loader, batch_sharding(), mode=config.prefetch, depth=2, track_state=True,
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
  from facejax.data.pairs import make_pairs
  from facejax.evaluation.evaluator import evaluate_pairs
  pairs = make_pairs(config.val.source, **config.val.kwargs.to_dict())
  result = evaluate_pairs(student, {'params': state.params, 'batch_stats': state.batch_stats}, pairs)
  writer.write({'step': step, 'val_accuracy': result['accuracy'], 'val_auc': result['auc']})
