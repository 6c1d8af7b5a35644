"""Run directories: `config.json`, `model.json`, `checkpoints/<step>/{state,data}` (orbax), `metrics.jsonl`.

`load_run` rebuilds a trained model from a run directory alone (model.json + the latest checkpoint)."""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from facejax.data.align import CHIP_PADDING, CHIP_SIZE
from facejax.models import PREPROCESSING, Preprocessing, build_model


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def checkpoint_manager(workdir: str, keep: int = 2) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(checkpoint_dir(workdir), item_names=('state', 'data'),
                               options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def latest_step(workdir: str) -> int | None:
  d = checkpoint_dir(workdir)
  if not os.path.isdir(d):
    return None
  steps = [int(s) for s in os.listdir(d) if s.isdigit() and os.path.isdir(os.path.join(d, s, 'state'))]
  return max(steps) if steps else None


def restore_variables(workdir: str, step: int | None = None) -> dict:
  """{'params', 'batch_stats'} (numpy) of a run's checkpoint (latest by default), with orbax's standard restore."""
  step = latest_step(workdir) if step is None else step
  if step is None:
    raise FileNotFoundError(f'{checkpoint_dir(workdir)}: no checkpoint found (expected checkpoints/<step>/state)')
  tree = ocp.StandardCheckpointer().restore(os.path.join(checkpoint_dir(workdir), str(step), 'state'))
  return {k: jax.tree_util.tree_map(np.asarray, tree.get(k, {})) for k in ('params', 'batch_stats')}


def model_info(config) -> dict:
  """What model.json records: enough to rebuild the model without the config."""
  m = config.model
  return {'name': m.name, 'num_classes': int(m.num_classes), 'embed_dim': int(m.embed_dim), 'dropout': float(m.dropout),
          'kwargs': m.kwargs.to_dict(), 'image_size': int(m.image_size),
          'preprocessing': PREPROCESSING[m.preprocessing].to_dict() if isinstance(m.preprocessing, str)
                           else dict(m.preprocessing), 'task': config.task,
          **({'align': {'kind': m.align, 'size': CHIP_SIZE, 'padding': CHIP_PADDING}} if m.get('align') else {})}


def read_model_info(workdir: str) -> dict:
  path = os.path.join(workdir, 'model.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: not a facejax run directory (expected model.json written by launch.train)')
  with open(path) as f:
    return json.load(f)


def build_from_info(info: dict, dtype=None, bn_axis: str | None = None):
  """model.json dict -> (FaceNet, Preprocessing, image_size)."""
  import jax.numpy as jnp
  model = build_model(info['name'], info['num_classes'], info['embed_dim'], info['dropout'],
                      dtype=dtype or jnp.float32, bn_axis=bn_axis, **info['kwargs'])
  p = info['preprocessing']
  return model, Preprocessing(tuple(p['mean']), tuple(p['std']), bool(p['bgr'])), int(info['image_size'])


def load_run(workdir: str, step: int | None = None) -> tuple[Any, dict, dict]:
  """-> (model, variables, info) where info is model.json plus 'preprocessing_obj', 'step'."""
  info = read_model_info(workdir)
  model, preprocessing, _ = build_from_info(info)
  step = latest_step(workdir) if step is None else step
  variables = restore_variables(workdir, step)
  return model, variables, dict(info, preprocessing_obj=preprocessing, step=step)
