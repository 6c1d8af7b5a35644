"""The collated results of a sweep (`facejax.sweep`): `collate` reads every finished variant's pipeline report and
writes `sweep.json`, `sweep.md` (one row per variant x model, each compared with the baseline variant on paired
folds), `pareto.png` (accuracy vs CPU time) and `loss_curves.png` (one panel per pipeline stage)."""
from __future__ import annotations

import json
import math
import os
import shlex
from typing import Sequence

import ml_collections

from facejax import markdown
from facejax.evaluation.verification import compare
from facejax.runs import jsonable

STAGES = ('pretrain', 'teacher', 'student', 'siamese', 'finetune')  # the pipeline's, in order (loss curves)


def variant_evaluations(vdir: str) -> dict:
  """{model: the evaluation result (fold accuracies, ...)} of a finished variant, from its pipeline report; models
  whose evaluation file is missing are left out (no paired comparison for them)."""
  with open(os.path.join(vdir, 'results.json')) as f:
    runs = json.load(f).get('runs', {})
  out = {}
  for model, run in runs.items():
    try:
      with open(run['evaluation']) as f:
        out[model] = json.load(f)['result']
    except (OSError, KeyError, ValueError):
      continue
  return out


def collate(sweep: ml_collections.ConfigDict, todo: Sequence, statuses: dict, workdir: str) -> dict:
  """Write sweep.json, sweep.md, pareto.png and loss_curves.png; returns the sweep.json content + 'markdown'.
  `todo`: the variants `facejax.sweep.plan` returned; `statuses`: {variant name: what `run_variant` recorded}.

  One row per variant x model; a run reported by several variants (the shared teacher) appears once, under the
  variant that trained it. 'vs_baseline' is `verification.compare` of the row's and the baseline variant's same
  model on the same folds.
  """
  reports, evaluations = {}, {}
  for v in todo:
    if statuses[v.name]['status'] == 'ok':
      with open(os.path.join(v.workdir, 'results.json')) as f:
        reports[v.name] = json.load(f)
      evaluations[v.name] = statuses[v.name].get('evaluations') or variant_evaluations(v.workdir)

  rows, seen = [], {}
  base = reports.get(sweep.baseline)
  for v in todo:
    status = statuses[v.name]
    if v.name not in reports:
      rows.append({'variant': v.name, 'model': None, 'status': status['status'], 'overrides': v.overrides,
                   'log': status.get('log'), 'error': status.get('error')})
      continue
    report = reports[v.name]
    teacher_params = report['models']['teacher']['params']
    for model, metrics in report['models'].items():
      run = report['runs'][model]['workdir']
      if run in seen:
        continue
      seen[run] = v.name
      vs = None
      if (base and model in base['models'] and base['runs'][model]['workdir'] != run
          and model in evaluations[v.name] and model in evaluations[sweep.baseline]):
        try:
          vs = compare(evaluations[v.name][model], evaluations[sweep.baseline][model], v.name, sweep.baseline)
        except ValueError as e:  # e.g. a variant that changed the evaluation pairs
          vs = {'error': str(e)}
      rows.append({'variant': v.name, 'model': model, 'status': 'ok', 'overrides': v.overrides, 'run': run,
                   **metrics, 'param_ratio': teacher_params / metrics['params'], 'vs_baseline': vs})

  out = {'workdir': workdir, 'baseline': sweep.baseline, 'shared_teacher': sweep.get('shared_teacher', ''),
         'base_config': sweep.base_config,
         'variants': [{'name': v.name, 'overrides': v.overrides, 'command': shlex.join(v.command),
                       **{k: statuses[v.name].get(k) for k in ('status', 'seconds', 'log', 'error')}} for v in todo],
         'rows': rows,
         'protocol': next(iter(reports.values()))['protocol'] if reports else None}
  out = jsonable(out)
  with open(os.path.join(workdir, 'sweep.json'), 'w') as f:
    json.dump(out, f, indent=2)
  markdown = sweep_markdown(out)
  with open(os.path.join(workdir, 'sweep.md'), 'w') as f:
    f.write(markdown)
  ok_rows = [r for r in rows if r['status'] == 'ok']
  if ok_rows:
    name = os.path.basename(os.path.normpath(workdir))
    plot_pareto(ok_rows, os.path.join(workdir, 'pareto.png'), title=f'{name}: accuracy vs CPU time')
  plot_loss_curves({v.name: v.workdir for v in todo}, os.path.join(workdir, 'loss_curves.png'))
  return dict(out, markdown=markdown)


def common_prefix(fields: Sequence[str]) -> str:
  """The dotted prefix all fields share ('student.distill.' for the distill weights), '' if none."""
  parts = [f.split('.')[:-1] for f in fields]
  prefix = []
  for group in zip(*parts) if parts else ():
    if len(set(group)) != 1:
      break
    prefix.append(group[0])
  return ''.join(p + '.' for p in prefix)


def short_overrides(overrides: dict, prefix: str = '') -> str:
  """Overrides for a table cell: `prefix` dropped; fields with one leaf name and equal values merged
  ({'student.model.kwargs.width': 0.25, 'siamese.model.kwargs.width': 0.25} -> 'width=0.25')."""
  by_leaf = {}
  for field, value in overrides.items():
    field = field[len(prefix):] if field.startswith(prefix) else field
    by_leaf.setdefault(field.rsplit('.', 1)[-1], []).append((field, value))
  parts = []
  for leaf, items in by_leaf.items():
    values = {json.dumps(jsonable(v)) for _, v in items}
    parts += [f'{leaf}={items[0][1]}'] if len(items) > 1 and len(values) == 1 else [f'{f}={v}' for f, v in items]
  return ', '.join(parts) or '(base)'


def sweep_markdown(out: dict) -> str:
  """sweep.json -> the markdown table (accuracy, EER and TAR in percent; vs baseline: paired fold difference)."""
  pct = lambda x: '-' if x is None else f'{100 * x:.2f}'
  prefix = common_prefix([f for v in out['variants'] for f in v['overrides']])
  lines = [f'# sweep: {out["workdir"]}', '',
           f'baseline: `{out["baseline"]}`' + (f'; one teacher, trained by `{out["shared_teacher"]}`, shared by all '
                                                f'variants' if out['shared_teacher'] else '')
           + (f'; overrides are under `{prefix}`' if prefix else ''), '']
  head = ['variant', 'model', 'overrides', 'params', 'x fewer', 'GFLOPs', 'CPU ms/img', 'accuracy (%)', 'AUC',
          'EER (%)', 'TAR@FAR=1e-3 (%)', 'vs baseline (pp, paired folds)']
  cells = []
  for r in out['rows']:
    if r['status'] != 'ok':
      why = f'**{r["status"]}**: {r.get("error") or ""}' + (f' (log: `{r["log"]}`)' if r.get('log') else '')
      cells.append([r['variant'], '-', short_overrides(r['overrides'], prefix), why] + [''] * 8)
      continue
    vs = r['vs_baseline']
    if vs is None:
      vs_text = 'baseline' if r['variant'] == out['baseline'] else '-'
    elif 'error' in vs:
      vs_text = f'not comparable: {vs["error"]}'
    else:
      vs_text = f'{100 * vs["mean_diff"]:+.2f} +- {100 * vs["sem_diff"]:.2f} (p={vs["p_value"]:.2g})'
    cells.append([r['variant'], r['model'], short_overrides(r['overrides'], prefix), _count(r['params']),
                  f'{r["param_ratio"]:.1f}', f'{r["gflops"]:.3g}', f'{r["cpu_ms_b1"]:.2f}',
                  f'{pct(r["accuracy"])} +- {pct(r["accuracy_std"])}', f'{r["auc"]:.4f}', pct(r['eer']),
                  pct(r['tar_at_far_1e-3']), vs_text])
  lines += [markdown.table(head, cells, 'lllrrrrrrrrl'), '', 'x fewer: teacher params / params. CPU ms/img: batch 1, median of AOT-compiled runs. accuracy: mean +- '
            'std over the folds. vs baseline: fold accuracy minus the baseline variant\'s same model, mean +- s.e. '
            'over the paired folds, two-sided paired t-test.', '', '## Commands (each variant alone)', '', '```']
  lines += [v['command'] for v in out['variants']] + ['```', '']
  return '\n'.join(lines)


def _count(n) -> str:
  for scale, suffix in ((1e6, 'M'), (1e3, 'K')):
    if n >= scale:
      return f'{n / scale:.3g}{suffix}'
  return str(int(n))


# ---- Plots. ----

def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
  """Indices of the points no other point beats on both (lower x, higher y), sorted by x."""
  order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
  front, best = [], -math.inf
  for i in order:
    if points[i][1] > best:
      front.append(i)
      best = points[i][1]
  return front


def plot_pareto(rows: Sequence[dict], path: str, title: str = 'accuracy vs CPU time') -> None:
  """Accuracy vs CPU ms/img (log x), marker area ~ params, the Pareto front (faster and more accurate than any
  other point) joined and outlined, every point labelled '<variant> <model> (<x fewer params>)'."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.ticker import FuncFormatter

  fig = Figure(figsize=(8, 5.5), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  xs = [r['cpu_ms_b1'] for r in rows]
  ys = [100 * r['accuracy'] for r in rows]
  biggest = max(r['params'] for r in rows)
  colors = {'teacher': 'tab:red', 'teacher_finetuned': 'tab:orange', 'student': 'tab:blue',
            'student_siamese': 'tab:green'}
  sizes = [20 + 600 * r['params'] / biggest for r in rows]
  front = pareto_front(list(zip(xs, ys)))
  ax.plot([xs[i] for i in front], [ys[i] for i in front], '--', color='black', alpha=0.6, linewidth=1.2, zorder=1)
  for model, color in colors.items():
    idx = [i for i, r in enumerate(rows) if r['model'] == model]
    if idx:
      ax.scatter([xs[i] for i in idx], [ys[i] for i in idx], s=[sizes[i] for i in idx], color=color, alpha=0.55,
                 linewidths=0, zorder=2, label=model)
  ax.scatter([xs[i] for i in front], [ys[i] for i in front], s=[sizes[i] + 60 for i in front], facecolors='none',
             edgecolors='black', linewidths=1.6, zorder=3, label='Pareto front')
  for i, r in enumerate(rows):
    ax.annotate(f'{r["variant"]} {_MODEL_SHORT.get(r["model"], r["model"])} ({r["param_ratio"]:.1f}x)', (xs[i], ys[i]),
                textcoords='offset points', xytext=(6, 4), fontsize=7, fontweight='bold' if i in front else 'normal')
  ax.set_xscale('log')
  ax.margins(x=0.12, y=0.06)  # room for the labels of the outermost points
  plain = FuncFormatter(lambda v, _: f'{v:g}')
  ax.xaxis.set_major_formatter(plain)
  ax.xaxis.set_minor_formatter(plain)
  ax.tick_params(axis='x', which='minor', labelsize=7)
  ax.set_xlabel('CPU ms / image (batch 1, log scale)')
  ax.set_ylabel('verification accuracy (%)')
  ax.set_title(f'{title}\nmarker area ~ params; (Nx): N x fewer params than the teacher; ringed: Pareto front',
               fontsize=9)
  ax.grid(True, which='both', alpha=0.3)
  legend = ax.legend(loc='lower right', fontsize=8, markerscale=0.5)
  for handle in legend.legend_handles:
    if hasattr(handle, 'set_sizes'):
      handle.set_sizes([40])
  fig.tight_layout()
  fig.savefig(path, format='png')


_MODEL_SHORT = {'teacher': 'teacher', 'teacher_finetuned': 'teacher+ft', 'student': 'student',
                'student_siamese': 'student+siam'}


def read_losses(metrics_path: str) -> tuple[list[int], list[float]]:
  """metrics.jsonl -> (steps, losses) of the training log lines (a resumed run's repeats: the last one wins)."""
  by_step = {}
  with open(metrics_path) as f:
    for line in f:
      line = line.strip()
      if line:
        entry = json.loads(line)
        if 'loss' in entry and 'step' in entry and entry['loss'] is not None:
          by_step[int(entry['step'])] = float(entry['loss'])
  steps = sorted(by_step)
  return steps, [by_step[s] for s in steps]


def plot_loss_curves(variant_dirs: dict[str, str], path: str) -> None:
  """One panel per pipeline stage, one line per variant (same color in every panel), from <variant>/<stage>/
  metrics.jsonl; stages no variant ran are left out."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  curves = {s: {} for s in STAGES}
  for name, vdir in variant_dirs.items():
    for stage in STAGES:
      metrics = os.path.join(vdir, stage, 'metrics.jsonl')
      if os.path.exists(metrics):
        steps, losses = read_losses(metrics)
        if steps:
          curves[stage][name] = (steps, losses)
  stages = [s for s in STAGES if curves[s]]
  fig = Figure(figsize=(4 * max(1, len(stages)), 3.6), dpi=110)
  FigureCanvasAgg(fig)
  if not stages:
    fig.text(0.5, 0.5, 'no metrics.jsonl found', ha='center')
  palette = {name: f'C{i % 10}' for i, name in enumerate(variant_dirs)}
  for k, stage in enumerate(stages):
    ax = fig.add_subplot(1, len(stages), k + 1)
    for name, (steps, losses) in curves[stage].items():
      ax.plot(steps, losses, color=palette[name], linewidth=1.2, label=name)
    ax.set_title(stage)
    ax.set_xlabel('step')
    if k == 0:
      ax.set_ylabel('training loss')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, format='png')
