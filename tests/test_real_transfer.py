"""The ImageNet-transfer lineage (configs/real_transfer.py, facejax.lineage) in its tiny variant on a small real
subset of ../shared/data (skipped when absent): held-out pairs, alignment, the training set, stages that name
their own inits, teachers and data, and the report on both yardsticks."""
import json
import os

import pytest

from tests.shared_data import shared_data, tiny_lfw

pytest.importorskip('dlib')


@pytest.fixture(scope='module')
def tiny_faces(tmp_path_factory):
  """A 2-fold, 12-pair LFW tree and two identity folders (10 + 3 real identities), all symlinks."""
  celeba, celeba299 = shared_data('celeba'), shared_data('celeba299')
  root = tmp_path_factory.mktemp('faces')
  tiny_lfw(root / 'lfw')
  for name, source, n in (('celeba', celeba, 10), ('celeba299', celeba299, 3)):
    os.makedirs(root / name)
    for identity in sorted(os.listdir(source))[:n]:
      os.symlink(os.path.join(source, identity), root / name / identity)
  return root


def test_stage_references_resolve_and_unknown_sets_are_named(tmp_path):
  from configs.real_transfer import get_config
  from facejax.lineage import stage_plan
  full = get_config()  # the control differs from the teacher in its init (and backbone rate) only
  assert (full.teacher.init.path, full.teacher_scratch.init.path) == ('imagenet:mobilenet_v2', '')
  assert (dict(full.teacher.optim.lr_mult), dict(full.teacher_scratch.optim.lr_mult)) == ({'backbone': 0.1}, {})
  c = get_config('tiny')
  prepared = {'data_dir': '/d', 'sets': {'identities': {'name': 'identities_abc'}}}
  plan = stage_plan(c, str(tmp_path), prepared)
  assert list(plan) == ['teacher', 'student', 'siamese']  # teacher_scratch has 0 steps in the tiny variant
  assert plan['student'].distill.teacher_workdir == str(tmp_path / 'teacher')
  assert plan['siamese'].init.path == str(tmp_path / 'student')
  assert (plan['teacher'].data.kwargs.name, plan['teacher'].data.kwargs.data_dir) == ('identities_abc', '/d')
  assert c.student.distill.teacher_workdir == 'stage:teacher'  # the config itself is not changed
  from facejax.lineage import report_runs  # a stage that does not train has no report row
  assert report_runs(c, str(tmp_path), plan) == {name: str(tmp_path / stage) for name, stage in (
      ('teacher', 'teacher'), ('student', 'student'), ('student_siamese', 'siamese'))}
  c.stages = ('teacher', 'student')  # a stage left out of config.stages has no row either
  assert set(report_runs(c, str(tmp_path), stage_plan(c, str(tmp_path), prepared))) == {'teacher', 'student'}
  c.student.data.kwargs.name = 'prepared:mimic'
  with pytest.raises(ValueError, match=r"config.student.data.kwargs.name='prepared:mimic': expected one of "
                                       r"\['prepared:identities'\]"):
    stage_plan(c, str(tmp_path), prepared)
  with pytest.raises(ValueError, match=r'teacher=vgg16: expected one of'):
    get_config('teacher=vgg16')


def test_tiny_transfer_pipeline(tiny_faces, tmp_path):
  from configs.real_transfer import get_config
  from facejax.pipeline import run_pipeline
  c = get_config('tiny')
  c.faces.lfw_dir = str(tiny_faces / 'lfw')
  c.faces.identities.celeba, c.faces.identities.celeba299 = str(tiny_faces / 'celeba'), str(tiny_faces / 'celeba299')
  workdir = tmp_path / 'run'
  report = run_pipeline(c, str(workdir))
  assert set(report['models']) == {'teacher', 'student', 'student_siamese'}
  for row in report['models'].values():
    assert {'params', 'gflops', 'cpu_ms_b1', 'accuracy', 'accuracy_std', 'auc', 'eer', 'tar_at_far_1e-3'} <= set(row)
  assert set(report['holdout']['models']) == set(report['models'])
  assert report['holdout']['pairs']['num_folds'] == 2 and report['holdout']['pairs']['photos'] == 30
  assert {'student vs teacher', 'student_siamese vs teacher'} <= set(report['comparisons'])
  held_out = json.loads((workdir / 'data' / 'holdout' / 'holdout.json').read_text())['identities']
  chosen = report['data']['sets']['identities']
  assert chosen['identities'] == 10 - len(held_out) + 3 and chosen['excluded_identities'] == len(held_out)
  # each stage trained on the prepared set and from what its config named
  student = json.loads((workdir / 'student' / 'config.json').read_text())
  assert student['distill']['teacher_workdir'] == str(workdir / 'teacher')
  assert student['data']['kwargs']['name'] == chosen['name']
  assert json.loads((workdir / 'siamese' / 'config.json').read_text())['init']['path'] == str(workdir / 'student')
  assert (workdir / 'student' / 'eval' / 'holdout' / 'results.json').exists()
  text = (workdir / 'results.md').read_text()
  assert 'Held-out identities (6 people, 2 folds of 60 pairs)' in text
  kept = report['kept']  # the better student on the held-out pairs, linked as <workdir>/kept
  assert kept['kept'] in ('student', 'student_siamese') and f"kept: {kept['kept']} (" in text
  assert os.path.realpath(workdir / 'kept') == report['runs'][kept['kept']]['workdir']


def test_tiny_data_efficiency_curve(tiny_faces, tmp_path):
  """launch.data_efficiency at 2 points: each a pipeline run of the two transfer stages on that many identities,
  sharing one prepared data folder; the records, table and plot it promises."""
  from tests.cli_process import launch
  workdir = tmp_path / 'curve'
  paths = (f'--config.faces.lfw_dir={tiny_faces / "lfw"}', f'--config.faces.identities.celeba={tiny_faces / "celeba"}',
           f'--config.faces.identities.celeba299={tiny_faces / "celeba299"}')
  proc = launch('data_efficiency', '--config=configs/real_transfer.py:tiny', f'--workdir={workdir}',
                '--identities=3,0', '--steps=2', *paths)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  curve = json.loads((workdir / 'data_efficiency.json').read_text())
  held_out = len(json.loads((workdir / 'data' / 'holdout' / 'holdout.json').read_text())['identities'])
  everyone = 13 - held_out  # identities: 0 -> all that are left
  assert [(p['identities'], p['stage'], p['steps']) for p in curve['points']] == [
      (3, 'teacher', 2), (3, 'teacher_scratch', 2), (everyone, 'teacher', 2), (everyone, 'teacher_scratch', 2)]
  assert {p['init'] for p in curve['points']} == {'random'}  # the tiny variant has no ImageNet init
  assert {p['data_dir'] for p in curve['points']} == {str(workdir / 'data')}  # prepared once, shared
  for p in curve['points']:
    assert 0 <= p['accuracy'] <= 1 and p['accuracy_std'] >= 0 and 'holdout_accuracy' in p
    run = json.loads((tmp_path / p['run'] / 'config.json').read_text())
    assert run['total_steps'] == 2 and run['model']['num_classes'] == p['identities']
  assert sorted(curve['comparisons']) == ['3', str(everyone)]
  assert not (workdir / 'identities_3' / 'data').exists() and not (workdir / 'identities_3' / 'cache').exists()
  assert (workdir / 'cache').is_dir()  # LFW's chips aligned once for every point
  assert (workdir / 'data_efficiency.png').stat().st_size > 0
  assert '| 3 |' in (workdir / 'data_efficiency.md').read_text()
  again = launch('data_efficiency', '--config=configs/real_transfer.py:tiny', f'--workdir={workdir}',
                 '--identities=3', '--steps=2', *paths)  # a finished point is read back, not run again
  assert again.returncode == 0 and 'identities_3: finished, read from' in again.stdout, again.stderr[-2000:]
  assert json.loads((workdir / 'data_efficiency.json').read_text())['points'] == curve['points'][:2]
  bad = launch('data_efficiency', '--config=configs/real_transfer.py:tiny', f'--workdir={workdir}', '--identities=a')
  assert bad.returncode != 0 and '--identities=a: expected integers' in bad.stderr
