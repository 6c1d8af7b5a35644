"""Run directories, the on-disk unit of results. Every layer reads and writes them through this module.

  RUN/config.json                       the training config (launch.train; `facejax.train.loop` checks it on resume)
  RUN/model.json                        enough to rebuild the model without the config (`model_info`,
                                        `read_model_info`, `build_from_info`)
  RUN/checkpoints/<step>/{state,data}   orbax; `restore_variables` needs orbax alone, `load_run` rebuilds the
                                        model from model.json + the latest checkpoint
  RUN/metrics.jsonl                     the training log
  RUN/eval/<name>/                      one evaluation per pair set: config.json, results.{json,md}, roc.png and
                                        threshold.json, that pair set's calibration (`eval_dir`)
  RUN/threshold.json                    the calibration launch.verify applies by default (`threshold_path`,
                                        `read_threshold`; written only when asked, config.calibrate=True)

An exported model `M.jaxexport` (launch.export) keeps the same files beside it: `M.jaxexport.threshold.json`,
`M.jaxexport.eval/<name>/`.

Converted weights. dlib's net converts to a run directory (`facejax.convert.dlib`: model.json + checkpoints/0/state).
ImageNet weights (Keras .h5, torchvision; launch.convert) are a classifier, not a face model, so they are written
as a converted-weights directory that `config.init.path` transfers from:
  DIR/checkpoint/     orbax StandardCheckpointer of {'params', 'batch_stats'}; restores with orbax alone
  DIR/metadata.json   {'arch', 'source', 'preprocessing', 'num_classes', 'image_size', 'report', ...}; written
                      last, so its presence means the checkpoint is complete (`save_converted`, `load_converted`).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np

from facejax.data.chip_frames import chip_spec

THRESHOLD_FILE = 'threshold.json'
EXPORT_SUFFIX = '.jaxexport'
EXPORT_SUFFIXES = (EXPORT_SUFFIX, '.onnx')  # exported embedders: jax.export artifacts and ONNX models
CONVERTED_CHECKPOINT = 'checkpoint'
CONVERTED_METADATA = 'metadata.json'


def jsonable(obj):
  """Arrays -> lists, numpy scalars -> Python numbers, recursively; non-finite floats -> None (strict JSON)."""
  if isinstance(obj, Mapping):
    return {(str(k) if not isinstance(k, str) else k): jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [jsonable(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return jsonable(obj.tolist())
  if isinstance(obj, np.generic):
    obj = obj.item()
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj


# ---- Checkpoints and model.json. ----

def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def checkpoint_manager(workdir: str, keep: int = 2):
  """-> orbax.checkpoint.CheckpointManager over RUN/checkpoints with items 'state' and 'data', keeping the `keep`
  latest checkpoints (0: all of them, e.g. for launch.learning_curve)."""
  import orbax.checkpoint as ocp
  return ocp.CheckpointManager(checkpoint_dir(workdir), item_names=('state', 'data'),
                               options=ocp.CheckpointManagerOptions(max_to_keep=keep or None, create=True))


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps of a run's complete checkpoints, ascending."""
  d = checkpoint_dir(workdir)
  if not os.path.isdir(d):
    return []
  return sorted(int(s) for s in os.listdir(d) if s.isdigit() and os.path.isdir(os.path.join(d, s, 'state')))


def latest_step(workdir: str) -> int | None:
  steps = checkpoint_steps(workdir)
  return steps[-1] if steps else None


def restore_variables(workdir: str, step: int | None = None) -> dict:
  """{'params', 'batch_stats'} (numpy) of a run's checkpoint (latest by default), with orbax's standard restore."""
  import jax
  import orbax.checkpoint as ocp
  step = latest_step(workdir) if step is None else step
  if step is None:
    raise FileNotFoundError(f'{checkpoint_dir(workdir)}: no checkpoint found (expected checkpoints/<step>/state)')
  tree = ocp.StandardCheckpointer().restore(os.path.join(checkpoint_dir(workdir), str(step), 'state'))
  return {k: jax.tree_util.tree_map(np.asarray, tree.get(k, {})) for k in ('params', 'batch_stats')}


def model_info(config) -> dict:
  """What model.json records: enough to rebuild the model without the config."""
  from facejax.models import PREPROCESSING
  m = config.model
  return {'name': m.name, 'num_classes': int(m.num_classes), 'embed_dim': int(m.embed_dim), 'dropout': float(m.dropout),
          'kwargs': m.kwargs.to_dict(), 'image_size': int(m.image_size),
          'preprocessing': PREPROCESSING[m.preprocessing].to_dict() if isinstance(m.preprocessing, str)
                           else dict(m.preprocessing), 'task': config.task,
          **({'align': chip_spec(m.align)} if m.get('align') else {}),
          **({'classifier': m.classifier, 'cosine_scale': float(m.cosine_scale)}
             if m.get('classifier', 'softmax') != 'softmax' else {})}


def read_model_info(workdir: str) -> dict:
  path = os.path.join(workdir, 'model.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: not a facejax run directory (expected model.json written by launch.train)')
  with open(path) as f:
    return json.load(f)


def build_from_info(info: dict, dtype=None, bn_axis: str | None = None):
  """model.json dict -> (FaceNet, Preprocessing, image_size)."""
  import jax.numpy as jnp
  from facejax.models import Preprocessing, build_model
  model = build_model(info['name'], info['num_classes'], info['embed_dim'], info['dropout'],
                      dtype=dtype or jnp.float32, bn_axis=bn_axis, classifier=info.get('classifier', 'softmax'),
                      cosine_scale=info.get('cosine_scale', 64.0), **info['kwargs'])
  p = info['preprocessing']
  return model, Preprocessing(tuple(p['mean']), tuple(p['std']), bool(p['bgr'])), int(info['image_size'])


def load_run(workdir: str, step: int | None = None) -> tuple[Any, dict, dict]:
  """-> (model, variables, info) where info is model.json plus 'preprocessing_obj', 'step'."""
  info = read_model_info(workdir)
  model, preprocessing, _ = build_from_info(info)
  step = latest_step(workdir) if step is None else step
  variables = restore_variables(workdir, step)
  return model, variables, dict(info, preprocessing_obj=preprocessing, step=step)


# ---- Evaluations and threshold files. ----

def is_exported(path: str) -> bool:
  return path.endswith(EXPORT_SUFFIXES)


def threshold_path(path: str) -> str:
  """RUN/threshold.json, or `M.jaxexport.threshold.json` beside an exported model."""
  return path + '.threshold.json' if is_exported(path) else os.path.join(path, THRESHOLD_FILE)


def eval_dir(path: str, name: str) -> str:
  """RUN/eval/<name>, or `M.jaxexport.eval/<name>` for an exported model."""
  return os.path.join(path + '.eval' if is_exported(path) else os.path.join(path, 'eval'), name)


def write_threshold(path: str, calibration: dict) -> str:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(jsonable(calibration), f, indent=2)
  os.replace(tmp, path)  # verify never reads a half-written file
  return path


def calibrated_pair_sets(workdir: str) -> list[str]:
  """Names of the pair sets with a calibration (RUN/eval/<name>/threshold.json)."""
  root = os.path.dirname(eval_dir(workdir, 'x'))
  return sorted(n for n in (os.listdir(root) if os.path.isdir(root) else [])
                if os.path.isfile(os.path.join(root, n, THRESHOLD_FILE)))


def read_threshold(workdir: str, pairs: str = '') -> dict:
  """The calibration verify applies -> dict (threshold, distance, embedding, flip, step, ..., 'file'):
  pairs='' -> RUN/threshold.json (`M.jaxexport.threshold.json`), the chosen default; else the one of pair set
  `pairs` (RUN/eval/<pairs>/threshold.json). Errors say how to create one, and which pair sets have one."""
  if is_exported(workdir) and not os.path.isfile(workdir):
    raise FileNotFoundError(f'exported model {workdir} does not exist')
  if not is_exported(workdir) and not os.path.isdir(workdir):
    raise FileNotFoundError(f'run directory {workdir} does not exist')
  path = os.path.join(eval_dir(workdir, pairs), THRESHOLD_FILE) if pairs else threshold_path(workdir)
  if not os.path.isfile(path):
    what = 'exported model' if is_exported(workdir) else 'run'
    sets = calibrated_pair_sets(workdir)
    have = (f'; calibrated pair sets: {", ".join(sets)} (pick one with --pairs=NAME)' if sets else '')
    raise FileNotFoundError(f'{path} not found: this {what} has no {"" if pairs else "default "}calibrated '
                            f'threshold{have}; run `python -m launch.evaluate --config=configs/lfw_eval.py '
                            f'--workdir={workdir}{"" if pairs else " --config.calibrate=True"}` first')
  with open(path) as f:
    try:
      calibration = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: not valid JSON ({e}); re-run launch.evaluate') from None
  missing = [k for k in ('threshold', 'distance', 'flip') if k not in calibration]
  if missing or not isinstance(calibration['threshold'], (int, float)):
    raise ValueError(f'{path}: expected a number "threshold" and "distance", "flip" entries, missing {missing}; '
                     f're-run launch.evaluate')
  return dict(calibration, file=path)


# ---- Converted-weights directories (launch.convert --from=keras_h5|torchvision). ----

def check_out_dir(out_dir: str, overwrite: bool) -> None:
  """Refuses to replace earlier converted weights unless asked to."""
  if not overwrite and any(os.path.exists(os.path.join(out_dir, n))
                           for n in (CONVERTED_CHECKPOINT, CONVERTED_METADATA)):
    raise FileExistsError(f'{out_dir}: already holds converted weights; pass overwrite=True (--overwrite) to replace')


def save_converted(out_dir: str, variables: dict, metadata: dict, overwrite: bool = False) -> str:
  """Writes `variables` ({'params', 'batch_stats'}) and `metadata` under `out_dir`; returns the checkpoint path."""
  import orbax.checkpoint as ocp
  out_dir = os.path.abspath(out_dir)
  ckpt = os.path.join(out_dir, CONVERTED_CHECKPOINT)
  check_out_dir(out_dir, overwrite)
  os.makedirs(out_dir, exist_ok=True)
  meta_path = os.path.join(out_dir, CONVERTED_METADATA)
  if os.path.exists(meta_path):
    os.remove(meta_path)
  tree = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(ckpt, tree, force=overwrite)
  checkpointer.wait_until_finished()
  checkpointer.close()
  with open(meta_path, 'w') as f:
    json.dump(metadata, f, indent=1)
  return ckpt


def load_converted(path: str) -> tuple[str, dict, dict]:
  """DIR written by `launch.convert` -> (arch, {'params', 'batch_stats'} of numpy arrays, metadata)."""
  import orbax.checkpoint as ocp
  path = os.path.abspath(path)
  meta_path = os.path.join(path, CONVERTED_METADATA)
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f'{path}: no {CONVERTED_METADATA}; not a converted-weights directory (or conversion '
                            'did not finish)')
  with open(meta_path) as f:
    metadata = json.load(f)
  checkpointer = ocp.StandardCheckpointer()
  restored = checkpointer.restore(os.path.join(path, CONVERTED_CHECKPOINT))
  checkpointer.close()
  to_numpy = lambda t: {k: to_numpy(v) if isinstance(v, dict) else np.asarray(v) for k, v in t.items()}
  variables = {'params': to_numpy(restored['params']), 'batch_stats': to_numpy(restored.get('batch_stats') or {})}
  return metadata['arch'], variables, metadata
