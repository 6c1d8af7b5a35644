"""The data-efficiency curve: verification accuracy against the number of training identities, with ImageNet
initialisation and with random initialisation (the figure a researcher with a small data set wants first).

Each point is the lineage's `teacher` and `teacher_scratch` stages (configs/real_transfer.py) trained on N
identities drawn from the prepared set (`faces.max_identities`, 0: all), for the same number of steps at every
point, run by `facejax.pipeline.run_pipeline` in `<workdir>/identities_<N>/` (so a killed curve resumes where it
stopped; a finished point is read back from its results.json). All points share one prepared data folder:
alignment and the leakage check run once.

  python -m launch.data_efficiency --config=configs/real_transfer.py --workdir=runs/curve --identities=100,300,1000,0

Writes `<workdir>/data_efficiency.{json,md,png}`: one record per (identities, init) with LFW View 2's accuracy and
accuracy_std (and the held-out pairs' where the lineage has them)."""
from __future__ import annotations

import copy
import json
import os
import time

import ml_collections

from facejax.markdown import table
from facejax.runs import jsonable

STAGES = ('teacher', 'teacher_scratch')  # the transferred net and its random-init control


def init_label(path: str) -> str:
  """A stage's init.path -> 'imagenet' ('imagenet:ARCH'), 'random' ('') or the path itself."""
  return 'imagenet' if path.startswith('imagenet:') else path or 'random'


def point_config(config: ml_collections.ConfigDict, identities: int, steps: int, workdir: str
                 ) -> ml_collections.ConfigDict:
  """The lineage config of one point: its two transfer stages only, on `identities` identities (0: all); the
  prepared data and the evaluation's chip cache shared by every point under the curve's `workdir`."""
  c = copy.deepcopy(config)  # ConfigDict(x) would share x's sections
  with c.unlocked():
    c.faces.max_identities = int(identities)
    c.faces.data_dir = c.faces.data_dir or os.path.join(workdir, 'data')
    c.eval.cache_dir = c.eval.cache_dir or os.path.join(workdir, 'cache')
    c.stages = tuple(s for s in c.stages if s in STAGES)
    c.report = ml_collections.ConfigDict({k: v for k, v in c.report.items() if k in STAGES})
    c.comparisons = [('teacher', 'teacher_scratch')]
    for stage in STAGES if steps else ():
      c[stage].total_steps = int(steps)
      c[stage].log_every, c[stage].checkpoint_every = max(1, steps // 20), max(1, steps // 5)
      c[stage].optim.warmup_steps = max(1, steps // 20)
  return c


def run_curve(config: ml_collections.ConfigDict, workdir: str, identities: list[int], steps: int = 0) -> dict:
  """Every point of the curve (module docstring) -> {'points': [records], 'steps', 'timings_s', 'host'}; also
  written as data_efficiency.json / .md / .png in `workdir`."""
  from facejax.pipeline import run_pipeline
  if 'faces' not in config or not all(s in config for s in STAGES):
    raise ValueError('the data-efficiency curve runs a real-faces lineage with `teacher` and `teacher_scratch` '
                     'stages: expected --config=configs/real_transfer.py[:ARGS]')
  if not identities or any(n < 0 for n in identities):
    raise ValueError(f'--identities={identities}: expected identity counts >= 1, or 0 for all')
  os.makedirs(workdir, exist_ok=True)
  points, comparisons, timings, report = [], {}, {}, {}
  for n in identities:
    c = point_config(config, n, steps, workdir)
    name = f'identities_{n or "all"}'
    done = os.path.join(workdir, name, 'results.json')
    if os.path.isfile(done):  # a finished point is kept (delete its folder to run it again)
      print(f'== data-efficiency point {name}: finished, read from {done}', flush=True)
      with open(done) as f:
        report = json.load(f)
    else:
      print(f'== data-efficiency point {name}', flush=True)
      t0 = time.perf_counter()
      report = run_pipeline(c, os.path.join(workdir, name))
      timings[name] = time.perf_counter() - t0
    trained = report['data']['sets']['identities']
    for row in STAGES:
      if row not in report['models']:
        continue  # a stage with total_steps 0
      m = report['models'][row]
      with open(os.path.join(report['runs'][row]['workdir'], 'config.json')) as f:
        trained_with = json.load(f)  # what the run was trained with (a kept point may predate --steps)
      record = {'identities': int(trained['identities']), 'images': int(trained['images']), 'stage': row,
                'init': init_label(c[row].init.path), 'data_dir': trained['data_dir'],
                'accuracy': m['accuracy'], 'accuracy_std': m['accuracy_std'], 'auc': m['auc'],
                'steps': int(trained_with['total_steps']), 'run': report['runs'][row]['workdir']}
      if 'holdout' in report:
        h = report['holdout']['models'][row]
        record.update(holdout_accuracy=h['accuracy'], holdout_accuracy_std=h['accuracy_std'])
      points.append(record)
    if 'teacher vs teacher_scratch' in report['comparisons']:  # ImageNet vs random init, paired over folds
      comparisons[int(trained['identities'])] = report['comparisons']['teacher vs teacher_scratch']
  curve = {'points': points, 'comparisons': comparisons, 'timings_s': timings, 'host': report.get('host'),
           'protocol': 'LFW View 2, 10 folds: accuracy as a fraction, accuracy_std over the folds; each point '
                       'trains for the same number of steps'}
  with open(os.path.join(workdir, 'data_efficiency.json'), 'w') as f:
    json.dump(jsonable(curve), f, indent=2)
  with open(os.path.join(workdir, 'data_efficiency.md'), 'w') as f:
    f.write(curve_markdown(curve) + '\n')
  plot_curve(points, os.path.join(workdir, 'data_efficiency.png'))
  print(curve_markdown(curve), flush=True)
  return curve


def curve_markdown(curve: dict) -> str:
  """The curve's table: one row per point, the transferred net and its random-init control side by side."""
  by = {}
  for p in curve['points']:
    by.setdefault(p['identities'], {})[p['stage']] = p
  inits = {p['stage']: p['init'] for p in curve['points']}
  cell = lambda p, k: f"{100 * p[k]:.2f} +- {100 * p[k + '_std']:.2f}" if p and k in p else '-'
  rows = [[n, next(iter(by[n].values()))['images'], *(cell(by[n].get(s), k) for k in ('accuracy', 'holdout_accuracy')
                                                      for s in STAGES)] for n in sorted(by)]
  head = [f'{yardstick} {s} ({inits.get(s, "-")} init) (%)' for yardstick in ('LFW', 'held-out') for s in STAGES]
  return (table(['identities', 'images', *head], rows, 'rrrrrr') + '\n'
          + ''.join(f'{n} identities: {c["summary"]}\n' for n, c in sorted(curve['comparisons'].items())))


def plot_curve(points: list[dict], path: str) -> None:
  """LFW View 2 accuracy (+- std over folds) against training identities, one line per init, log x axis."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(6, 4.5), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for stage in STAGES:
    ps = sorted((p for p in points if p['stage'] == stage), key=lambda p: p['identities'])
    if ps:
      ax.errorbar([p['identities'] for p in ps], [100 * p['accuracy'] for p in ps],
                  [100 * p['accuracy_std'] for p in ps],
                  marker='o', capsize=3, label=f"{stage}: {ps[0]['init']} initialisation")
  ax.set_xscale('log')
  ax.set_xlabel('training identities')
  ax.set_ylabel('LFW View 2 accuracy (%)')
  ax.set_title('Data efficiency: transfer from ImageNet vs random initialisation')
  ax.grid(True, alpha=0.3)
  ax.legend()
  fig.savefig(path)
