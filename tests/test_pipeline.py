"""The paper end to end on the micro config: every stage runs, the report has the contract's schema, and a
re-run resumes finished stages instead of redoing them."""
import json
import os
import subprocess
import sys

import jax
import pytest

from configs.demo import get_config
from facejax.pipeline import stage_configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ('params', 'gflops', 'cpu_ms_b1', 'accuracy', 'accuracy_std', 'auc', 'eer', 'tar_at_far_1e-3')


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('micro')
  out = subprocess.run([sys.executable, '-m', 'launch.pipeline', '--config=configs/demo.py:micro',
                        f'--workdir={workdir}'], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return workdir, out.stdout


def test_report_files_and_schema(demo_run):
  workdir, stdout = demo_run
  for name in ('results.json', 'results.md', 'roc.png'):
    assert os.path.getsize(workdir / name) > 0, name
  report = json.loads((workdir / 'results.json').read_text())
  assert set(report['models']) == {'teacher', 'student', 'student_siamese'}
  for row in report['models'].values():
    assert all(isinstance(row[k], (int, float)) for k in KEYS), row
    assert 0.0 <= row['accuracy'] <= 1.0 and row['cpu_ms_b1'] > 0
  assert report['compression']['param_ratio'] >= 9.0
  assert report['compression']['cpu_speedup'] > 0
  assert '| teacher |' in stdout and 'fewer parameters' in stdout  # the table is printed
  host = report['host']  # the CPU the timings come from, in both reports
  assert host['cpu_count'] == os.cpu_count() and host['jax'] == jax.__version__ and host['backend'] == 'cpu'
  assert f"{host['cpu_count']} cores, jax {host['jax']}" in (workdir / 'results.md').read_text()
  # Each evaluated run is calibrated for launch.verify.
  assert json.loads((workdir / 'siamese' / 'threshold.json').read_text())['distance'] == 'euclidean'


def test_stages_are_linked_and_rerun_resumes(demo_run):
  workdir, _ = demo_run
  stages = stage_configs(get_config('micro'), str(workdir))
  assert stages['teacher'].init.path == str(workdir / 'pretrain')
  assert stages['student'].distill.teacher_workdir == str(workdir / 'teacher')
  assert stages['siamese'].init.path == str(workdir / 'student') and stages['siamese'].init.mode == 'all'
  from facejax.train import train
  before = (workdir / 'teacher' / 'metrics.jsonl').read_text()
  assert train(stages['teacher'], str(workdir / 'teacher'))['resumed_finished']
  assert (workdir / 'teacher' / 'metrics.jsonl').read_text() == before


def test_given_pretrained_weights_skip_stand_in_pretraining(tmp_path):
  c = get_config('micro')
  c.teacher.init.path = '/weights/vgg'
  stages = stage_configs(c, str(tmp_path))
  assert 'pretrain' not in stages and stages['teacher'].init.path == '/weights/vgg'


def test_unknown_model_and_bad_workdir_errors(tmp_path):
  from facejax.models import build_model
  with pytest.raises(ValueError, match="unknown model 'vgg17'; expected one of"):
    build_model('vgg17', 10)
  from facejax.runs import load_run
  with pytest.raises(FileNotFoundError, match='not a facejax run directory'):
    load_run(str(tmp_path))


def test_a_lineage_with_single_view_references_refuses_flip_tta_before_any_work(tmp_path):
  from configs import real_faces
  from facejax.pipeline import run_pipeline
  c = real_faces.get_config('tiny')
  c.eval.flip = 'sum'
  with pytest.raises(ValueError, match=r"config.eval.flip='sum': the reference rows \(dlib_native\) are single-view"):
    run_pipeline(c, str(tmp_path / 'run'))
  assert os.listdir(tmp_path / 'run') == []  # nothing aligned, converted or trained
  c.eval.flip = 'none'  # the same as ''
  from facejax.pipeline import faces_eval_config
  assert faces_eval_config(c, str(tmp_path)).eval.cache_dir == os.path.join(str(tmp_path), 'cache')


def test_mimic_tree_views_are_deterministic_and_rebuilt_when_asked_for_others(tmp_path):
  """link_tree: each chip, its exact mirror image and J jittered copies (same size, different pixels), drawn
  from the file name so a rebuild writes the same bytes; the same spec is reused, another one rebuilt."""
  import numpy as np
  from PIL import Image
  from facejax.data.faces import link_tree
  rng = np.random.default_rng(0)
  for person in ('a', 'b'):
    os.makedirs(tmp_path / 'chips' / person)
    for i in range(2):
      Image.fromarray(rng.integers(0, 256, (24, 24, 3), np.uint8)).save(tmp_path / 'chips' / person / f'{i}.png')
  sources, out = {'ids': str(tmp_path / 'chips')}, str(tmp_path / 'tree')
  counts = link_tree(sources, out, exclude={'ids/b'}, mirror=True, jittered=2)
  assert counts == {'identities': 1, 'images': 8, 'excluded_identities': 1}
  assert sorted(os.listdir(tmp_path / 'tree' / 'ids_a')) == [
      '0.png', '0_jitter0.png', '0_jitter1.png', '0_mirror.png', '1.png', '1_jitter0.png', '1_jitter1.png',
      '1_mirror.png']
  read = lambda name: np.asarray(Image.open(tmp_path / 'tree' / 'ids_a' / name))
  np.testing.assert_array_equal(read('0_mirror.png'), read('0.png')[:, ::-1])
  jittered = read('0_jitter0.png')
  assert jittered.shape == (24, 24, 3) and not np.array_equal(jittered, read('0.png'))
  assert not np.array_equal(jittered, read('0_jitter1.png'))
  stamp = os.path.getmtime(out + '.json')
  assert link_tree(sources, out, exclude={'ids/b'}, mirror=True, jittered=2) == counts
  assert os.path.getmtime(out + '.json') == stamp  # reused
  assert link_tree(sources, out, mirror=True)['images'] == 8  # another spec: rebuilt, both people, no jitter
  assert not os.path.exists(tmp_path / 'tree' / 'ids_a' / '0_jitter0.png')
  link_tree(sources, out, exclude={'ids/b'}, mirror=True, jittered=2)
  np.testing.assert_array_equal(read('0_jitter0.png'), jittered)  # the same draws again


def test_link_tree_is_swapped_in_whole(tmp_path, monkeypatch):
  """A rebuild leaves the old tree whole until the new one is complete, and when another run finishes the same
  tree first, that one is kept (two pipelines preparing one data_dir at once used to delete each other's files:
  FileNotFoundError)."""
  from PIL import Image
  from facejax.data.faces import link_tree
  for person in ('a', 'b'):
    os.makedirs(tmp_path / 'chips' / person)
    Image.new('RGB', (8, 8)).save(tmp_path / 'chips' / person / '0.png')
  sources, out = {'ids': str(tmp_path / 'chips')}, str(tmp_path / 'tree')
  link_tree(sources, out, exclude={'ids/b'})
  symlink, seen = os.symlink, []

  def another_run_meanwhile(src, dst):
    seen.append(sorted(os.listdir(out)))  # what a reader of `out` sees while this rebuild runs
    if len(seen) == 1:
      monkeypatch.setattr(os, 'symlink', symlink)
      link_tree(sources, out)  # the other run: the same tree, finished first
      monkeypatch.setattr(os, 'symlink', another_run_meanwhile)
      os.makedirs(os.path.join(out, 'theirs'))  # (a mark on the other run's tree)
    symlink(src, dst)

  monkeypatch.setattr(os, 'symlink', another_run_meanwhile)
  counts = link_tree(sources, out)
  assert seen == [['ids_a'], ['ids_a', 'ids_b', 'theirs']]
  assert counts == {'identities': 2, 'images': 2, 'excluded_identities': 0}
  assert sorted(os.listdir(out)) == ['ids_a', 'ids_b', 'theirs']  # the other run's tree kept, this one dropped
  assert sorted(os.listdir(tmp_path)) == ['chips', 'tree', 'tree.json']  # nothing half-built left behind


def test_a_killed_runs_half_built_tree_is_removed_by_the_next_build(tmp_path):
  """`<tree>.building-<pid>-*` of a process that is gone is deleted when the tree is next built; a live one (a run
  building the same tree now) is left alone."""
  from PIL import Image
  from facejax.data.faces import link_tree
  os.makedirs(tmp_path / 'chips' / 'a')
  Image.new('RGB', (8, 8)).save(tmp_path / 'chips' / 'a' / '0.png')
  proc = subprocess.Popen(['true'])  # a process that has exited: its pid names no one
  proc.wait()
  dead, alive = tmp_path / f'tree.building-{proc.pid}-x1', tmp_path / f'tree.building-{os.getpid()}-x2'
  for d in (dead, alive):
    os.makedirs(d / 'ids_a')
  link_tree({'ids': str(tmp_path / 'chips')}, str(tmp_path / 'tree'))
  assert not dead.exists() and alive.exists()
  assert sorted(os.listdir(tmp_path / 'tree')) == ['ids_a']


def test_keep_better_chooses_on_the_held_out_pairs_and_links_the_run(tmp_path):
  """The better student by held-out accuracy (the earlier name on a tie) is what <workdir>/kept links to; a model
  without a held-out result leaves the choice unmade."""
  from facejax.pipeline import keep_better
  runs = {n: {'workdir': str(tmp_path / n)} for n in ('student', 'siamese')}
  for r in runs.values():
    os.makedirs(r['workdir'])
  names = ('student', 'siamese')
  kept = keep_better({'student': {'accuracy': 0.70}, 'siamese': {'accuracy': 0.72}}, names, runs, str(tmp_path))
  assert (kept['kept'], kept['run']) == ('siamese', str(tmp_path / 'siamese'))
  assert os.path.realpath(tmp_path / 'kept') == str(tmp_path / 'siamese')
  assert kept['summary'].startswith("kept: siamese (72.00 % on the held-out pairs, against student's 70.00)")
  kept = keep_better({'student': {'accuracy': 0.72}, 'siamese': {'accuracy': 0.72}}, names, runs, str(tmp_path))
  assert kept['kept'] == 'student' and os.path.realpath(tmp_path / 'kept') == str(tmp_path / 'student')
  assert keep_better({'student': {'accuracy': 0.72}}, names, runs, str(tmp_path)) is None
  os.remove(tmp_path / 'kept')
  os.makedirs(tmp_path / 'kept')
  with pytest.raises(FileExistsError, match=r'kept: expected the link to the kept model \(config.keep_better\), '
                                            r'found a file or folder'):
    keep_better({'student': {'accuracy': 0.7}, 'siamese': {'accuracy': 0.7}}, names, runs, str(tmp_path))
