"""Converted-weights directories: an orbax checkpoint of {'params', 'batch_stats'} plus metadata.json.

  DIR/checkpoint/   orbax StandardCheckpointer; `ocp.StandardCheckpointer().restore(DIR/checkpoint)` needs no
                    model code
  DIR/metadata.json {'arch', 'source', 'preprocessing', 'num_classes', 'image_size', 'report', ...}
metadata.json is written last, so its presence means the checkpoint is complete.
"""
from __future__ import annotations

import json
import os

import numpy as np

CHECKPOINT = 'checkpoint'
METADATA = 'metadata.json'


def check_out_dir(out_dir: str, overwrite: bool) -> None:
  """Refuses to replace earlier converted weights unless asked to."""
  if not overwrite and any(os.path.exists(os.path.join(out_dir, n)) for n in (CHECKPOINT, METADATA)):
    raise FileExistsError(f'{out_dir}: already holds converted weights; pass overwrite=True (--overwrite) to replace')


def save_converted(out_dir: str, variables: dict, metadata: dict, overwrite: bool = False) -> str:
  """Writes `variables` ({'params', 'batch_stats'}) and `metadata` under `out_dir`; returns the checkpoint path."""
  import orbax.checkpoint as ocp
  out_dir = os.path.abspath(out_dir)
  ckpt = os.path.join(out_dir, CHECKPOINT)
  check_out_dir(out_dir, overwrite)
  os.makedirs(out_dir, exist_ok=True)
  meta_path = os.path.join(out_dir, METADATA)
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
  meta_path = os.path.join(path, METADATA)
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f'{path}: no {METADATA}; not a converted-weights directory (or conversion did not finish)')
  with open(meta_path) as f:
    metadata = json.load(f)
  checkpointer = ocp.StandardCheckpointer()
  restored = checkpointer.restore(os.path.join(path, CHECKPOINT))
  checkpointer.close()
  to_numpy = lambda t: {k: to_numpy(v) if isinstance(v, dict) else np.asarray(v) for k, v in t.items()}
  variables = {'params': to_numpy(restored['params']), 'batch_stats': to_numpy(restored.get('batch_stats') or {})}
  return metadata['arch'], variables, metadata
