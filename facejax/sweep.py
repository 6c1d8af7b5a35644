"""Sweeps: named variants of one pipeline config, each a normal pipeline run in `<workdir>/<variant>`, then one
table (`sweep.md`, `sweep.json`) and two plots (`pareto.png`, `loss_curves.png`).

A sweep config (configs/sweeps/*.py, `get_config(arg)`) is a ConfigDict with
  base            the pipeline config (facejax.pipeline) every variant starts from
  base_config     'path.py[:arg]' that rebuilds `base` for launch.pipeline: the per-variant command lines load it
  variants        [{'name': str, 'overrides': {'dotted.field': value}}]  (explicit list), and/or
  grid            [{'dotted.field': [v1, v2], ...}, ...]: the product over axes; the fields of one axis are zipped
                  (e.g. the student and Siamese widths move together); an axis may carry 'name': [...] too
  baseline        the variant every row is compared against (paired per-fold accuracy difference)
  shared_teacher  '' or a variant name: that variant trains pretrain + teacher and runs first; every other variant
                  distils from its teacher (student.distill.teacher_workdir is added to their overrides)

Every override is checked against `base` before anything runs. Each variant runs as its own process, exactly the
command `--print_commands` shows, with stdout/stderr in `<workdir>/<variant>/log.txt`; a crash marks the variant
failed and the sweep goes on.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Any, Sequence

import ml_collections

from facejax import markdown
from facejax.evaluation.verification import compare
from facejax.runs import jsonable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ('pretrain', 'teacher', 'student', 'siamese', 'finetune')  # the pipeline's, in order (loss curves)
TEACHER_FIELD = 'student.distill.teacher_workdir'
STATUS_FILE = 'sweep_status.json'  # per variant: command, status, return code, seconds, evaluation snapshot
NAME_PATTERN = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._=+-]*$')


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  overrides: dict[str, Any]  # as the sweep config gives them
  workdir: str
  command: tuple[str, ...]  # python -m launch.pipeline ... with every override (incl. a shared teacher)
  needs: str = ''  # the variant whose teacher this one distils from


# ---- Config. ----

def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """'path/to/config.py[:arg]' -> its get_config(arg), as ml_collections' --config flag loads it."""
  path, _, arg = spec.partition(':')
  resolved = resolve_path(path)
  module_spec = importlib.util.spec_from_file_location('_sweep_base_config', resolved)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def resolve_path(path: str) -> str:
  """A config path as given when it exists from the current directory, else relative to the repository."""
  if os.path.exists(path) or os.path.isabs(path):
    if not os.path.exists(path):
      raise FileNotFoundError(f'config file {path} does not exist')
    return path
  in_repo = os.path.join(ROOT, path)
  if not os.path.exists(in_repo):
    raise FileNotFoundError(f'config file {path} does not exist (looked in {os.getcwd()} and {ROOT})')
  return in_repo


def expand_grid(grid: Sequence[dict]) -> list[dict]:
  """[{field: [values], ...}, ...] -> [{'name', 'overrides'}]: the product over axes, fields of an axis zipped."""
  if not grid:
    return []
  axes = []
  for i, axis in enumerate(grid):
    axis = dict(axis)
    lengths = {k: len(v) for k, v in axis.items() if isinstance(v, (list, tuple))}
    if not axis or len(lengths) != len(axis) or len(set(lengths.values())) != 1:
      raise ValueError(f'sweep grid axis {i}: expected {{field: [values]}} with lists of one length, got {lengths}')
    names = axis.pop('name', None)
    first = next(iter(axis))  # unnamed axes are named by their first field: 'width=0.25'
    names = names or [f'{first.rsplit(".", 1)[-1]}={value}' for value in axis[first]]
    axes.append([(names[j], {k: v[j] for k, v in axis.items()}) for j in range(len(names))])
  return [{'name': '_'.join(name for name, _ in combo), 'overrides': {k: v for _, o in combo for k, v in o.items()}}
          for combo in itertools.product(*axes)]


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict, variant: str) -> ml_collections.ConfigDict:
  """A copy of `config` with {'dotted.field': value} set; every field must exist in `config` (as on a command line)."""
  config = copy.deepcopy(config)
  for field, value in overrides.items():
    keys = field.split('.')
    node = config
    for depth, key in enumerate(keys):
      where = '.'.join(keys[:depth]) or 'the config'
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        raise ValueError(f'sweep variant {variant!r}: override {field!r}: {where} has no field {key!r}'
                         + (f' (known: {", ".join(known)})' if known else ''))
      if depth < len(keys) - 1:
        node = node[key]
    if isinstance(node[key], ml_collections.ConfigDict):
      raise ValueError(f'sweep variant {variant!r}: override {field!r}: expected a leaf field, got a config section')
    if node[key] is None:
      raise ValueError(f'sweep variant {variant!r}: override {field!r}: the base value is None, so a command-line '
                       f'override has no type; give it a typed default in the base config')
    try:
      node[key] = value  # a locked config still takes existing fields; ConfigDict checks the type
    except (TypeError, ValueError) as e:
      raise ValueError(f'sweep variant {variant!r}: override {field}={value!r}: {e}') from None
  return config


def flag_value(value) -> str:
  """A value as ml_collections' --config.field=... parses it back."""
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  return str(value) if not isinstance(value, float) else repr(value)


def plan(sweep: ml_collections.ConfigDict, workdir: str) -> list[Variant]:
  """Validate the whole sweep against its base config and return the variants in run order (the shared teacher's
  owner first). Raises ValueError naming the variant and field of the first bad override."""
  for field in ('base', 'base_config', 'baseline'):
    if not sweep.get(field):
      raise ValueError(f'sweep config: expected a non-empty {field!r}')
  listed = [dict(v) for v in (sweep.get('variants') or ())] + expand_grid(sweep.get('grid') or ())
  if not listed:
    raise ValueError('sweep config: expected at least one variant (variants=[...] or grid=[...])')
  names = [v.get('name', '') for v in listed]
  for v in listed:
    if not NAME_PATTERN.match(v.get('name', '')):
      raise ValueError(f'sweep variant name {v.get("name")!r}: expected letters, digits and ._=+- (a directory name)')
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f'sweep config: duplicate variant names {duplicates}')
  if sweep.baseline not in names:
    raise ValueError(f'sweep config: baseline {sweep.baseline!r} is not a variant; expected one of {names}')
  owner = sweep.get('shared_teacher', '')
  if owner and owner not in names:
    raise ValueError(f'sweep config: shared_teacher {owner!r} is not a variant; expected one of {names}')

  base = sweep.base
  rebuilt = load_config_file(sweep.base_config)
  if rebuilt.to_dict() != base.to_dict():
    raise ValueError(f'sweep config: base_config {sweep.base_config!r} does not rebuild `base`, so the per-variant '
                     f'command lines would not reproduce the sweep (change variants\' overrides, not the base)')
  base_flag = sweep.base_config
  path, sep, arg = base_flag.partition(':')
  base_flag = resolve_path(path) + sep + arg

  out = []
  for v in sorted(listed, key=lambda v: v['name'] != owner):  # stable: the owner first, the rest as listed
    overrides = dict(v.get('overrides') or {})
    extra = {}
    if owner and v['name'] != owner:
      for field in overrides:
        if field.split('.')[0] in ('pretrain', 'teacher') or field == TEACHER_FIELD:
          raise ValueError(f'sweep variant {v["name"]!r}: override {field!r} has no effect: the teacher is shared '
                           f'from variant {owner!r} (only that variant may change pretrain.* / teacher.*)')
      extra[TEACHER_FIELD] = os.path.join(workdir, owner, 'teacher')
    apply_overrides(base, {**overrides, **extra}, v['name'])
    vdir = os.path.join(workdir, v['name'])
    command = ('python', '-m', 'launch.pipeline', f'--config={base_flag}', f'--workdir={vdir}',
               *(f'--config.{k}={flag_value(x)}' for k, x in {**overrides, **extra}.items()))
    out.append(Variant(v['name'], overrides, vdir, command, needs=owner if extra else ''))
  return out


def command_lines(sweep: ml_collections.ConfigDict, workdir: str) -> str:
  """The shell commands that run the sweep's variants one by one (e.g. for a cluster scheduler)."""
  lines = []
  for v in plan(sweep, workdir):
    if v.needs:
      lines.append(f'# {v.name}: after {v.needs} (distils its teacher)')
    lines.append(shlex.join(v.command))
  return '\n'.join(lines)


# ---- Running. ----

def run_sweep(sweep: ml_collections.ConfigDict, workdir: str, rerun_finished: bool = False) -> dict:
  """Validate, run every variant (finished ones are skipped unless `rerun_finished`), collate and plot."""
  todo = plan(sweep, workdir)  # raises before anything runs
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'sweep_config.json'), 'w') as f:
    f.write(sweep.to_json_best_effort(indent=2))
  statuses = {}
  for i, v in enumerate(todo, 1):
    prefix = f'[{i}/{len(todo)}] {v.name}'
    if v.needs and statuses[v.needs]['status'] != 'ok':
      statuses[v.name] = {'status': 'skipped', 'error': f'needs the teacher of {v.needs}, which did not finish',
                          'log': None}
      print(f'{prefix}: skipped ({statuses[v.name]["error"]})', flush=True)
      continue
    previous = _read_status(v)
    if (not rerun_finished and previous.get('status') == 'ok' and previous.get('command') == list(v.command)
        and os.path.exists(os.path.join(v.workdir, 'results.json'))):
      statuses[v.name] = previous
      print(f'{prefix}: finished earlier, kept (--rerun_finished re-evaluates it)', flush=True)
      continue
    print(f'{prefix}: {shlex.join(v.command)}', flush=True)
    statuses[v.name] = run_variant(v)
    s = statuses[v.name]
    print(f'{prefix}: {s["status"]} in {s["seconds"]:.0f} s' +
          (f' (exit {s["returncode"]}: {s["error"]}; log: {s["log"]})' if s['status'] != 'ok' else ''), flush=True)
  report = collate(sweep, todo, statuses, workdir)
  print(report['markdown'], flush=True)
  return report


def run_variant(v: Variant) -> dict:
  """Run one variant's command in a child process (log in <variant>/log.txt); a crash is a status, not an error."""
  os.makedirs(v.workdir, exist_ok=True)
  log = os.path.join(v.workdir, 'log.txt')
  start = time.time()
  with open(log, 'a') as f:
    f.write(f'$ {shlex.join(v.command)}\n')
    f.flush()
    returncode = subprocess.run([sys.executable, *v.command[1:]], stdout=f, stderr=subprocess.STDOUT).returncode
  status = {'status': 'ok' if returncode == 0 else 'failed', 'returncode': returncode, 'log': log,
            'seconds': time.time() - start, 'command': list(v.command), 'error': None, 'evaluations': {}}
  if returncode == 0:
    # Snapshot the evaluations now: a shared teacher's eval files are rewritten by every later variant.
    status['evaluations'] = _evaluations(v.workdir)
  else:
    status['error'] = _last_error(log)
  with open(os.path.join(v.workdir, STATUS_FILE), 'w') as f:
    json.dump(jsonable(status), f, indent=2)
  return status


def _read_status(v: Variant) -> dict:
  try:
    with open(os.path.join(v.workdir, STATUS_FILE)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _evaluations(vdir: str) -> dict:
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


def _last_error(log: str) -> str:
  with open(log, errors='replace') as f:
    lines = [line.strip() for line in f if line.strip()]
  errors = [line for line in lines if re.match(r'^[\w.]*(Error|Exception)\b', line)]
  return (errors or lines or ['(empty log)'])[-1][:300]


# ---- Collation. ----

def collate(sweep: ml_collections.ConfigDict, todo: Sequence[Variant], statuses: dict, workdir: str) -> dict:
  """Write sweep.json, sweep.md, pareto.png and loss_curves.png; returns the sweep.json content + 'markdown'.

  One row per variant x model; a run reported by several variants (the shared teacher) appears once, under the
  variant that trained it. 'vs_baseline' is `verification.compare` of the row's and the baseline variant's same
  model on the same folds.
  """
  reports, evaluations = {}, {}
  for v in todo:
    if statuses[v.name]['status'] == 'ok':
      with open(os.path.join(v.workdir, 'results.json')) as f:
        reports[v.name] = json.load(f)
      evaluations[v.name] = statuses[v.name].get('evaluations') or _evaluations(v.workdir)

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
