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
failed and the sweep goes on. The table and plots are made by `facejax.sweep_report.collate`.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Any, Sequence

import ml_collections

from facejax.runs import jsonable
from facejax.sweep_report import collate, variant_evaluations

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    status['evaluations'] = variant_evaluations(v.workdir)
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


def _last_error(log: str) -> str:
  with open(log, errors='replace') as f:
    lines = [line.strip() for line in f if line.strip()]
  errors = [line for line in lines if re.match(r'^[\w.]*(Error|Exception)\b', line)]
  return (errors or lines or ['(empty log)'])[-1][:300]
