"""Verification accuracy against images seen: every kept checkpoint of a run evaluated on a pair set.

  curve = learning_curve(eval_config, 'runs/real/teacher')   # keep_checkpoints=0 keeps every checkpoint

Each step's evaluation is written as evaluate_run writes it (RUN/eval/<name>/step_<step>/) and read back when a
later call finds it there, so a curve grows as a run goes on. The curve itself is RUN/eval/<name>/learning_curve.
{json,md,png}: one record per step with images seen (step x the run's batch size), accuracy +- std over folds,
AUC, EER and TAR@FAR=1e-3.
"""
from __future__ import annotations

import json
import os

import ml_collections

from facejax.data.pairs import resolve_source
from facejax.runs import checkpoint_steps, eval_dir, jsonable


def _batch_size(workdir: str) -> int:
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such file (expected a launch.train run directory)')
  with open(path) as f:
    return int(json.load(f)['batch_size'])


def learning_curve(config: ml_collections.ConfigDict, workdir: str, steps: list[int] | None = None) -> dict:
  """Evaluate `steps` (default: every complete checkpoint) of the run in `workdir` on `config`'s pairs
  (configs/lfw_eval.py's schema); writes and returns {'run', 'pairs', 'batch_size', 'points'}."""
  from facejax.evaluation.evaluator import evaluate_run
  kept = checkpoint_steps(workdir)
  if not kept:
    raise FileNotFoundError(f'{workdir}: no checkpoints (expected RUN/checkpoints/<step>/ from launch.train)')
  missing = sorted(set(steps or []) - set(kept))
  if missing:
    raise ValueError(f'steps {missing}: not among the checkpoints kept in {workdir} ({kept}; train with '
                     '--config.keep_checkpoints=0 to keep them all)')
  config = ml_collections.ConfigDict(config.to_dict())
  config.calibrate = False
  config.name = config.name or resolve_source(config.data)  # as evaluate_run names it
  out_dir, batch, points = eval_dir(workdir, config.name), _batch_size(workdir), []
  for step in steps or kept:
    path = os.path.join(out_dir, f'step_{step}', 'results.json')
    if not os.path.isfile(path):
      evaluate_run(config, workdir, step=step)
    with open(path) as f:
      (row,) = json.load(f)['models'].values()
    points.append({'step': step, 'images_seen': step * batch, **row})
  curve = {'run': os.path.abspath(workdir), 'pairs': config.data.to_dict(), 'batch_size': batch, 'points': points}
  with open(os.path.join(out_dir, 'learning_curve.json'), 'w') as f:
    json.dump(jsonable(curve), f, indent=2)
  with open(os.path.join(out_dir, 'learning_curve.md'), 'w') as f:
    f.write(curve_markdown(curve))
  plot_curve(curve, os.path.join(out_dir, 'learning_curve.png'), f'{os.path.basename(workdir)} on {config.name}')
  return curve


def curve_markdown(curve: dict) -> str:
  """The curve as a markdown table (percent, std over folds)."""
  lines = [f'# Learning curve: {curve["run"]}\n', f'Pairs: {curve["pairs"].get("pairs") or curve["pairs"]["source"]}'
           f'; batch size {curve["batch_size"]}.\n',
           '| step | images seen | accuracy (%) | AUC | EER (%) | TAR@FAR=1e-3 (%) |', '|---:|---:|---:|---:|---:|---:|']
  for p in curve['points']:
    tar = p.get('tar_at_far_1e-3')
    lines.append(f'| {p["step"]} | {p["images_seen"]:,} | {100 * p["accuracy"]:.2f} +- {100 * p["accuracy_std"]:.2f} '
                 f'| {p["auc"]:.4f} | {100 * p["eer"]:.2f} | {"-" if tar is None else f"{100 * tar:.2f}"} |')
  return '\n'.join(lines) + '\n'


def plot_curve(curve: dict, path: str, title: str) -> None:
  """Accuracy (+- std over folds) against images seen."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(6, 4.5), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  ps = curve['points']
  ax.errorbar([p['images_seen'] for p in ps], [100 * p['accuracy'] for p in ps], [100 * p['accuracy_std'] for p in ps],
              marker='o', capsize=3)
  ax.set_xlabel('images seen')
  ax.set_ylabel('verification accuracy (%)')
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  fig.savefig(path)
