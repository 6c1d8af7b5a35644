"""What a training run is made of, built once from its config: the models, the task, the initial state and the
pmapped step. `loop.train` feeds it batches and checkpoints; `train.throughput` times the same pieces (as flax's
imagenet benchmark runs the real trainer)."""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from facejax import runs
from facejax.models.registry import count_params
from facejax.train.state import TrainState, create_train_state, make_optimizer
from facejax.train.steps import AXIS, make_p_train_step, train_step
from facejax.train.tasks import ModelIO, make_task


def compute_dtype(config):
  return jnp.bfloat16 if config.half_precision else jnp.float32


def model_io(config, num_classes: int, bn_axis=None) -> ModelIO:
  from facejax.models import PREPROCESSING, build_model
  m = config.model
  if m.preprocessing not in PREPROCESSING:
    raise ValueError(f'config.model.preprocessing={m.preprocessing!r}: expected one of {sorted(PREPROCESSING)}')
  model = build_model(m.name, num_classes, m.embed_dim, m.dropout, dtype=compute_dtype(config), bn_axis=bn_axis,
                      classifier=m.get('classifier', 'softmax'), cosine_scale=m.get('cosine_scale', 64.0),
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
    _, source, _ = runs.load_converted(path)  # converted weights (launch.convert, a pruned teacher)
  try:
    return transfer_backbone(variables, source, heads=config.init.mode == 'all')
  except ValueError as e:
    raise ValueError(f'config.init.path={path}: {e}') from None


def load_teacher(config):
  """(ModelIO, variables) of the distillation teacher run, frozen in fp32 (or bf16 with half_precision)."""
  wd = config.distill.teacher_workdir
  if not wd:
    why = 'config.siamese.mimic_weight > 0' if config.task == 'siamese' else f'config.task={config.task}'
    raise ValueError(f'{why} needs config.distill.teacher_workdir (the teacher run to mimic)')
  info = runs.read_model_info(wd)
  dtype = compute_dtype(config)
  model, pre, size = runs.build_from_info(info, dtype=dtype)
  variables = runs.restore_variables(wd)
  # The frozen teacher's weights are cast once here, not in every step (BN statistics stay float32).
  variables['params'] = jax.tree_util.tree_map(lambda x: np.asarray(x, dtype), variables['params'])
  return ModelIO(model, pre, size, teacher_frame(config, info)), variables


def teacher_frame(config, info: dict):
  """The fixed map (facejax.data.chip_frames.chip_frame) through which a teacher aligned unlike the student's data
  reads the student's chips (config.model.align: their alignment); None when the two agree or one is unaligned."""
  from facejax.data.chip_frames import chip_frame, chip_spec
  kind, spec = config.model.get('align', ''), info.get('align')
  if not (kind and spec):
    return None
  frame = chip_frame(chip_spec(kind), spec, int(info['image_size']))
  if frame is not None:
    logging.info('teacher %s reads the %s chips through a fixed map to %s (%s px): %s', config.distill.teacher_workdir,
                 kind, spec['kind'], info['image_size'], ', '.join(f'{v:.2f}' for v in frame))
  return frame


@dataclasses.dataclass
class TrainingSetup:
  """A run ready to step: the task, the host-side initial state, the pmapped step and the frozen inputs."""
  task: Any
  student: ModelIO  # host-side twin of the trained model (no cross-device BatchNorm): init and evaluation
  teacher: ModelIO | None
  state: TrainState
  p_step: Callable
  step_fn: Callable  # the per-device step before pmap (for backend-independent FLOP counts)
  frozen: dict
  num_classes: int
  params: int
  teacher_params: int | None
  init_report: Any = None  # facejax.convert.plan.ConversionReport when config.init.path was copied in


def setup(config: ml_collections.ConfigDict, num_classes: int, teacher: tuple[ModelIO, dict] | None = None,
          teacher_cache: dict | None = None, variables: dict | None = None) -> TrainingSetup:
  """The run `config` describes. `teacher`: (ModelIO, variables) for config.task='distill'; `teacher_cache`: its
  outputs per example (tasks.teacher_outputs); `variables`: initial variables instead of `initial_variables`."""
  student = model_io(config, num_classes)
  teacher_io, teacher_vars = teacher if teacher else (None, None)
  task = make_task(config, model_io(config, num_classes, bn_axis=AXIS), teacher_io, teacher_vars, teacher_cache)
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  report = None
  if variables is None:
    variables, report = initial_variables(config, student, init_rng)
  tx, schedule = make_optimizer(config.optim, config.total_steps, variables['params'])
  state = create_train_state(state_rng, student.model, tx, student.image_size, variables)
  return TrainingSetup(task=task, student=student, teacher=teacher_io, state=state,
                       p_step=make_p_train_step(task.loss_fn, tx, schedule),
                       step_fn=functools.partial(train_step, loss_fn=task.loss_fn, tx=tx, schedule=schedule),
                       frozen=task.frozen(), num_classes=num_classes, params=count_params(variables['params']),
                       teacher_params=None if teacher_vars is None else count_params(teacher_vars['params']),
                       init_report=report)
