"""The micro sweep end to end (2 variants sharing one teacher + one that crashes), override validation before
anything runs, and the pipeline options sweeps rely on (shared teacher, no Siamese stage)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs.sweeps import micro
from facejax import sweep, sweep_report
from facejax.pipeline import reported_runs, stage_configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args):
  return subprocess.run([sys.executable, '-m', 'launch.sweep', *args], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope='module')
def micro_sweep(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('sweep')
  out = _launch('--config=configs/sweeps/micro.py:with_failure', f'--workdir={workdir}')
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return workdir, out.stdout


def test_micro_sweep_table_plots_and_failed_variant(micro_sweep):
  workdir, stdout = micro_sweep
  for name in ('sweep.md', 'sweep.json', 'pareto.png', 'loss_curves.png', 'w0.5/log.txt', 'w0.25/log.txt'):
    assert os.path.getsize(workdir / name) > 0, name
  report = json.loads((workdir / 'sweep.json').read_text())
  rows = [(r['variant'], r['model'], r['status']) for r in report['rows']]
  # The shared teacher appears once, under the variant that trained it; w0.25 skipped its Siamese stage.
  assert rows == [('w0.5', 'teacher', 'ok'), ('w0.5', 'student', 'ok'), ('w0.5', 'student_siamese', 'ok'),
                  ('w0.25', 'student', 'ok'), ('broken', None, 'failed')]
  assert not (workdir / 'w0.25' / 'teacher').exists() and not (workdir / 'w0.25' / 'siamese').exists()
  w025 = json.loads((workdir / 'w0.25' / 'results.json').read_text())
  assert w025['runs']['teacher']['workdir'] == str(workdir / 'w0.5' / 'teacher')
  student_config = json.loads((workdir / 'w0.25' / 'student' / 'config.json').read_text())
  assert student_config['model']['kwargs']['width'] == 0.25  # the printed command line reached the run

  by_key = {(r['variant'], r['model']): r for r in report['rows']}
  small, base = by_key['w0.25', 'student'], by_key['w0.5', 'student']
  assert base['vs_baseline'] is None and small['param_ratio'] > 20 > base['param_ratio']
  folds = lambda v: np.array(json.loads(next((workdir / v / 'student' / 'eval').glob('*/results.json')).read_text())
                             ['result']['fold_accuracies'])
  np.testing.assert_allclose(small['vs_baseline']['fold_diffs'], folds('w0.25') - folds('w0.5'), atol=1e-12)

  broken = by_key['broken', None]
  assert 'no_such_model' in broken['error'] and os.path.exists(broken['log'])
  assert 'no_such_model' in open(broken['log']).read()
  table = (workdir / 'sweep.md').read_text()
  assert '| w0.25 | student | width=0.25, siamese.total_steps=0 |' in table
  assert '**failed**' in table and broken['log'] in table
  assert '--config.student.distill.teacher_workdir=' in table  # the per-variant commands
  assert '[3/3] broken: failed' in stdout


def test_rerun_keeps_finished_variants(micro_sweep):
  workdir, _ = micro_sweep
  before = (workdir / 'w0.5' / 'student' / 'metrics.jsonl').read_text()
  out = _launch('--config=configs/sweeps/micro.py', f'--workdir={workdir}')
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert out.stdout.count('finished earlier, kept') == 2
  assert (workdir / 'w0.5' / 'student' / 'metrics.jsonl').read_text() == before
  assert [r['variant'] for r in json.loads((workdir / 'sweep.json').read_text())['rows']].count('broken') == 0


def test_bad_overrides_fail_before_anything_runs(tmp_path):
  c = micro.get_config()
  c.variants = c.variants + [{'name': 'typo', 'overrides': {'student.model.kwargs.widht': 0.3}}]
  with pytest.raises(ValueError, match=r"variant 'typo': override 'student.model.kwargs.widht': "
                                       r"student.model.kwargs has no field 'widht' \(known: width\)"):
    sweep.run_sweep(c, str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()

  c = micro.get_config()
  c.variants[1]['overrides'] = {'student.total_steps': 'many'}
  with pytest.raises(ValueError, match=r"variant 'w0.25': override student.total_steps='many'"):
    sweep.plan(c, str(tmp_path))
  c = micro.get_config()
  c.variants[1]['overrides'] = {'teacher.total_steps': 5}  # the teacher is shared from w0.5: no effect
  with pytest.raises(ValueError, match=r"variant 'w0.25': override 'teacher.total_steps' has no effect"):
    sweep.plan(c, str(tmp_path))
  c = micro.get_config()
  c.baseline = 'w9'
  with pytest.raises(ValueError, match=r"baseline 'w9' is not a variant"):
    sweep.plan(c, str(tmp_path))

  out = _launch('--config=configs/sweeps/micro.py', f'--workdir={tmp_path}', '--print_commands')
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.splitlines()
  assert lines[0] == (f'python -m launch.pipeline --config=configs/sweeps/micro.py:pipeline --workdir={tmp_path}/w0.5 '
                      '--config.student.model.kwargs.width=0.5 --config.siamese.model.kwargs.width=0.5')
  assert lines[1] == '# w0.25: after w0.5 (distils its teacher)'
  assert lines[2].endswith(f'--config.siamese.total_steps=0 --config.student.distill.teacher_workdir={tmp_path}/w0.5/'
                           'teacher')


def test_pipeline_shared_teacher_and_no_siamese(tmp_path):
  c = micro.get_config('pipeline')
  c.student.distill.teacher_workdir = '/runs/shared/teacher'
  c.siamese.total_steps = 0
  stages = stage_configs(c, str(tmp_path))
  assert list(stages) == ['student'] and stages['student'].distill.teacher_workdir == '/runs/shared/teacher'
  assert reported_runs(c, str(tmp_path)) == {'teacher': '/runs/shared/teacher', 'student': str(tmp_path / 'student')}


def test_grid_and_pareto_front():
  grid = [{'student.model.kwargs.width': [0.5, 0.25], 'siamese.model.kwargs.width': [0.5, 0.25]},
          {'name': ['short', 'long'], 'student.total_steps': [10, 20]}]
  names = [v['name'] for v in sweep.expand_grid(grid)]
  assert names == ['width=0.5_short', 'width=0.5_long', 'width=0.25_short', 'width=0.25_long']
  assert sweep.expand_grid(grid)[3]['overrides'] == {'student.model.kwargs.width': 0.25,
                                                     'siamese.model.kwargs.width': 0.25, 'student.total_steps': 20}
  # (ms, accuracy): 1 is slower and worse than 0; 3 ties 2 on accuracy but is slower.
  assert sweep_report.pareto_front([(1.0, 0.9), (2.0, 0.8), (3.0, 0.95), (4.0, 0.95)]) == [0, 2]
