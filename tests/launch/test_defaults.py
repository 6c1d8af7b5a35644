"""Every launch script as a user first meets it: `python -m launch.X` with no flags either succeeds or names the
flag to pass (no traceback), and each script that needs flags succeeds with its cheapest required ones.

The scripts are found with `launch/*.py`, so a new one is checked too; `test_every_script_has_a_cheap_run` asks
for its entry below. One tiny training run (module fixture) feeds evaluate, verify, embed, export and benchmark.
Set FACEJAX_SLOW_TESTS=1 to also run what takes minutes here (full default benchmarks, the micro pipeline that
tests/test_pipeline.py runs anyway).
"""
import glob
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from facejax.data.synthetic import SyntheticFaces
from tests.xla_flags import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(ROOT, 'launch', '*.py'))
                 if os.path.basename(p) not in ('__init__.py', 'common.py'))
SLOW = bool(os.environ.get('FACEJAX_SLOW_TESTS'))


def installed(*modules: str) -> bool:
  return all(importlib.util.find_spec(m) is not None for m in modules)


# Bare `python -m launch.X`: None -> must succeed (within the timeout); a tuple -> must exit non-zero and name at
# least one of these in its message (a missing flag, or what to install). Scripts in SLOW_BARE are skipped unless
# FACEJAX_SLOW_TESTS=1: their default is a full benchmark, and their cheap run below covers them.
BARE = {
    'benchmark': ('--model', '--workdir', '--all'),
    'benchmark_align': ('--images',),
    'benchmark_data': None,
    'benchmark_dlib': None,
    'benchmark_no_face': ('--misses',),
    'benchmark_train': ('--config',),
    'contact_sheet': ('--misses', '--out'),
    'compare_cpu': None if installed('onnx', 'onnxruntime', 'openvino', 'jax2onnx', 'torch') else ('pip install',),
    'convert': ('--from', '--out'),
    'data_efficiency': ('--config', '--workdir'),
    'embed': ('--workdir', '--images'),
    'evaluate': ('--config', '--workdir'),
    'learning_curve': ('--config', '--workdir'),
    'export': ('--workdir', '--out'),
    'model_zoo': None,
    'pipeline': ('--config', '--workdir'),
    'prepare_data': ('--manual_dir',),
    'sweep': ('--config', '--workdir'),
    'train': ('--config', '--workdir'),
    'verify': ('--workdir', 'IMG_A IMG_B'),
}
SLOW_BARE = {
    'benchmark_dlib': 'the default is the full dlib benchmark (~90 s on 2 busy cores); its cheap run is below',
    **({'compare_cpu': 'the default compares 7 models with ONNX Runtime, OpenVINO and torch (minutes)'}
       if BARE['compare_cpu'] is None else {}),
}


def run(script: str, *args: str, timeout: float = 180, env_extra: dict | None = None) -> subprocess.CompletedProcess:
  """`python -m launch.<script> args` from the repo root on one CPU device (tests/cli_process.py's setup)."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': ROOT, 'XLA_FLAGS': xla_flags(), **(env_extra or {})}
  return subprocess.run([sys.executable, '-m', f'launch.{script}', *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def no_traceback(proc: subprocess.CompletedProcess) -> str:
  out = proc.stdout + proc.stderr
  assert 'Traceback' not in out, out[-3000:]
  return out


def succeeded(proc: subprocess.CompletedProcess) -> str:
  assert proc.returncode == 0, (proc.stdout[-2000:] + proc.stderr[-3000:])
  return no_traceback(proc)


@pytest.mark.parametrize('script', SCRIPTS)
def test_bare_command_succeeds_or_names_the_missing_flag(script):
  if script in SLOW_BARE and not SLOW:
    pytest.skip(f'launch.{script}: {SLOW_BARE[script]} (FACEJAX_SLOW_TESTS=1 runs it)')
  proc = run(script, timeout=600 if script in SLOW_BARE else 90)
  out = no_traceback(proc)
  expected = BARE.get(script, ('--',))  # a script not listed yet: at least a flag in its message
  if expected is None:
    assert proc.returncode == 0, out[-3000:]
  else:
    assert proc.returncode != 0, f'launch.{script} with no flags succeeded; expected a message naming {expected}'
    assert any(e in proc.stderr for e in expected), f'launch.{script}: none of {expected} in:\n{proc.stderr[-2000:]}'


# ---- One cheap run per script that needs flags. ----

@pytest.fixture(scope='module')
def faces(tmp_path_factory):
  """<dir>/<person_k>/<j>.png: 3 people x 3 synthetic 32 px faces (embed, verify, prepare_data)."""
  root = tmp_path_factory.mktemp('faces')
  data = SyntheticFaces(3, 3, image_size=32, seed=7)
  for i in range(len(data)):
    r = data[i]
    os.makedirs(root / f'person_{int(r["label"])}', exist_ok=True)
    Image.fromarray(r['image']).save(root / f'person_{int(r["label"])}' / f'{i}.png')
  return root


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """launch.train on tests/configs/tiny.py for 2 steps: the run the other cheap runs take."""
  workdir = tmp_path_factory.mktemp('run')
  succeeded(run('train', '--config=tests/configs/tiny.py', f'--workdir={workdir}', '--config.total_steps=2'))
  assert os.path.isdir(workdir / 'checkpoints' / '2')
  return workdir


EVAL_FLAGS = ('--config=configs/lfw_eval.py', '--config.calibrate=True', '--config.progress=False',
              '--config.data.synthetic.num_identities=4', '--config.data.synthetic.images_per_identity=2',
              '--config.data.synthetic.num_folds=2', '--config.data.synthetic.pairs_per_fold=4')


@pytest.fixture(scope='module')
def evaluated(trained):
  """launch.evaluate of that run on 2 folds of synthetic pairs, calibrating launch.verify's default threshold."""
  succeeded(run('evaluate', f'--workdir={trained}', *EVAL_FLAGS))
  assert os.path.isfile(trained / 'threshold.json')
  return trained


def cheap_benchmark(request, tmp_path):
  out = tmp_path / 'b.json'
  succeeded(run('benchmark', '--model=student_vgg', '--image_size=24', '--runs=2', '--warmup=1', f'--json_out={out}'))
  assert json.loads(out.read_text())['model'] == 'student_vgg'
  run_dir = request.getfixturevalue('trained')
  succeeded(run('benchmark', f'--workdir={run_dir}', '--runs=2', '--warmup=1', f'--json_out={out}'))
  assert json.loads(out.read_text())['workdir'] == str(run_dir)


def ran_with_dlib(proc: subprocess.CompletedProcess) -> bool:
  """Whether a script that needs dlib ran and succeeded; without dlib installed it must name what to pip install."""
  if not installed('dlib', 'face_recognition_models'):
    assert proc.returncode != 0 and 'pip install' in no_traceback(proc)
    return False
  succeeded(proc)
  return True


def cheap_benchmark_align(request, tmp_path):
  out = tmp_path / 'a.json'
  proc = run('benchmark_align', f'--images={request.getfixturevalue("faces")}', '--limit=2', '--detectors=hog',
             f'--json_out={out}')
  if ran_with_dlib(proc):
    assert json.loads(out.read_text())['detectors'][0]['images'] == 2


def cheap_benchmark_dlib(request, tmp_path):
  out = tmp_path / 'dlib.json'
  proc = run('benchmark_dlib', '--batch_sizes=1', '--variants=plain', '--runs=1', '--rounds=1', f'--json_out={out}')
  if not installed('dlib', 'face_recognition_models', 'matplotlib'):
    assert proc.returncode != 0 and 'pip install' in no_traceback(proc)
    return
  succeeded(proc)
  assert json.loads(out.read_text())['results'][0]['facejax']['plain']['min_cosine_vs_dlib'] > 0.999


def cheap_benchmark_train(request, tmp_path):
  out = tmp_path / 't.json'
  succeeded(run('benchmark_train', '--config=configs/bench_siamese.py:tiny,model=student_vgg', '--steps=1',
                '--warmup=1', '--window=1', f'--json_out={out}'))
  assert json.loads(out.read_text())['task'] == 'siamese'


def cheap_compare_cpu(request, tmp_path):
  variants = 'jax_plain,jax_opt,jax_onednn' + (',torch' if installed('torch') else '')
  if installed('torch', 'onnx', 'onnxruntime', 'openvino', 'jax2onnx'):
    variants += ',ort,ort_facejax,openvino,openvino_f32'
  out = tmp_path / 'c.json'
  succeeded(run('compare_cpu', '--models=student_vgg', '--batch_sizes=1', f'--variants={variants}', '--rounds=1',
                '--calls=2', '--pause_s=0', f'--json_out={out}'))
  records = json.loads(out.read_text())['records']
  assert {r['variant'] for r in records} == set(variants.split(','))
  assert {r['pause_s'] for r in records} == {0.0}
  for r in records:  # every anchor computes the same embeddings (OpenVINO's default may be bf16 on this CPU)
    assert r['min_cosine_vs_jax_plain'] > (0.99 if r['variant'] == 'openvino' else 0.99999), r


def cheap_convert(request, tmp_path):
  proc = run('convert', '--from=dlib', f'--out={tmp_path / "dlib"}')  # the one source that ships with a package
  if not installed('face_recognition_models'):
    assert proc.returncode != 0 and 'face_recognition_models' in no_traceback(proc)
    return
  succeeded(proc)
  assert os.path.isfile(tmp_path / 'dlib' / 'model.json')


def cheap_embed(request, tmp_path):
  run_dir, images = request.getfixturevalue('trained'), request.getfixturevalue('faces')
  out = tmp_path / 'e.npz'
  assert '0 skipped' in succeeded(run('embed', f'--workdir={run_dir}', f'--images={images}', f'--out={out}',
                                      '--noprogress'))
  with np.load(out) as z:
    assert z['embeddings'].shape == (9, 16)


def cheap_evaluate(request, tmp_path):
  run_dir = request.getfixturevalue('evaluated')
  assert os.path.isfile(run_dir / 'eval' / 'synthetic_pairs' / 'results.json')


def cheap_learning_curve(request, tmp_path):
  run_dir = request.getfixturevalue('trained')
  out = succeeded(run('learning_curve', f'--workdir={run_dir}', *EVAL_FLAGS, '--config.name=curve'))
  assert '| 2 | 16 |' in out  # step 2, 2 x the tiny config's batch of 8 images seen
  assert os.path.isfile(run_dir / 'eval' / 'curve' / 'learning_curve.png')


def cheap_export(request, tmp_path):
  out = tmp_path / 'm.jaxexport'
  succeeded(run('export', f'--workdir={request.getfixturevalue("trained")}', f'--out={out}'))
  assert os.path.getsize(out) > 0 and os.path.isfile(f'{out}.json')


def cheap_pipeline(request, tmp_path):
  if not SLOW:
    pytest.skip('the micro pipeline takes ~80 s here and tests/test_pipeline.py runs the same command '
                '(FACEJAX_SLOW_TESTS=1 runs it)')
  succeeded(run('pipeline', '--config=configs/demo.py:micro', f'--workdir={tmp_path / "demo"}', timeout=600))
  assert os.path.isfile(tmp_path / 'demo' / 'results.json')


def _misses(request, tmp_path) -> str:
  """A text file naming two photos (launch.benchmark_no_face's and launch.contact_sheet's --misses)."""
  photos = sorted(glob.glob(str(request.getfixturevalue('faces') / '*' / '*.png')))[:2]
  (tmp_path / 'misses.txt').write_text('\n'.join(photos) + '\n')
  return str(tmp_path / 'misses.txt')


def cheap_benchmark_no_face(request, tmp_path):
  out = tmp_path / 'nf.json'
  proc = run('benchmark_no_face', f'--misses={_misses(request, tmp_path)}', '--policies=center,lfw_box',
             f'--json_out={out}')
  if ran_with_dlib(proc):
    assert [(r['policy'], r['images']) for r in json.loads(out.read_text())['sets']['photos']] == [
        ('center', 2), ('lfw_box', 2)]


def cheap_contact_sheet(request, tmp_path):
  proc = run('contact_sheet', f'--misses={_misses(request, tmp_path)}', '--policy=center', '--limit=2',
             f'--out={tmp_path / "sheet.png"}')
  if ran_with_dlib(proc):
    assert Image.open(tmp_path / 'sheet.png').size[0] > 0


def cheap_data_efficiency(request, tmp_path):
  pytest.skip('its cheap run needs real faces: tests/test_real_transfer.py::test_tiny_data_efficiency_curve runs '
              'launch.data_efficiency on a tiny real subset')


def cheap_prepare_data(request, tmp_path):
  """The default --dataset=folders with the default --name, and the synthetic set."""
  data_dir = tmp_path / 'tfds'
  out = succeeded(run('prepare_data', f'--manual_dir={request.getfixturevalue("faces")}', f'--data_dir={data_dir}',
                      '--val_fraction=0'))
  assert "name='default'" in out and os.path.isfile(data_dir / 'facejax_folders' / 'default' / '1.0.0' /
                                                    'dataset_info.json')
  succeeded(run('prepare_data', '--dataset=synthetic', f'--data_dir={data_dir}', '--num_identities=3',
                '--images_per_identity=2', '--image_size=16'))


def cheap_sweep(request, tmp_path):
  """--print_commands parses the sweep and its workdir; the micro sweep itself runs in tests/test_sweep.py."""
  out = succeeded(run('sweep', '--config=configs/sweeps/micro.py', f'--workdir={tmp_path}', '--print_commands'))
  assert out.count('python -m launch.pipeline') == 2


def cheap_train(request, tmp_path):
  assert os.path.isfile(request.getfixturevalue('trained') / 'config.json')


def cheap_verify(request, tmp_path):
  run_dir, images = request.getfixturevalue('evaluated'), request.getfixturevalue('faces')
  out = succeeded(run('verify', f'--workdir={run_dir}', str(images / 'person_0' / '0.png'),
                      str(images / 'person_1' / '3.png')))
  assert out.strip().splitlines()[-1] in ('same', 'different')


CHEAP = {
    'benchmark': cheap_benchmark, 'benchmark_align': cheap_benchmark_align, 'benchmark_dlib': cheap_benchmark_dlib,
    'benchmark_no_face': cheap_benchmark_no_face, 'benchmark_train': cheap_benchmark_train,
    'compare_cpu': cheap_compare_cpu, 'contact_sheet': cheap_contact_sheet, 'convert': cheap_convert,
    'data_efficiency': cheap_data_efficiency, 'embed': cheap_embed, 'evaluate': cheap_evaluate,
    'export': cheap_export, 'learning_curve': cheap_learning_curve, 'pipeline': cheap_pipeline, 'prepare_data': cheap_prepare_data, 'sweep': cheap_sweep,
    'train': cheap_train, 'verify': cheap_verify,
}


def test_every_script_has_a_cheap_run():
  """Scripts that need flags (or whose bare run is a long benchmark) need an entry in CHEAP."""
  missing = [s for s in SCRIPTS if (BARE.get(s, ()) is not None or s in SLOW_BARE) and s not in CHEAP]
  assert not missing, f'add a cheap run for launch.{missing} to tests/launch/test_defaults.py'


@pytest.mark.parametrize('script', sorted(s for s in CHEAP if s in SCRIPTS))
def test_cheap_run_succeeds(script, request, tmp_path):
  CHEAP[script](request, tmp_path)


# What needs dlib (the optional [align] extra), run with dlib hidden: script -> flags ({faces}: a photo folder,
# {a}/{b}: two photos, {run}: the tiny trained run, {tmp}: a scratch folder).
NEEDS_DLIB = {
    'benchmark_align': ('--images={faces}', '--limit=1', '--detectors=hog'),
    'benchmark_dlib': ('--batch_sizes=1', '--variants=plain', '--runs=1', '--rounds=1'),
    'embed': ('--workdir={run}', '--images={faces}', '--out={tmp}/e.npz', '--align=on'),
    'prepare_data': ('--manual_dir={faces}', '--data_dir={tmp}/tfds', '--align=hog'),
    'verify': ('--workdir={run}', '--align=on', '{a}', '{b}'),
}


@pytest.mark.parametrize('script', sorted(s for s in NEEDS_DLIB if s in SCRIPTS))
def test_missing_dlib_is_named(script, request, tmp_path):
  """As on a machine without the [align] extra: the message says what to install, without a traceback."""
  hidden = tmp_path / 'hide'
  (hidden / 'dlib').mkdir(parents=True)
  (hidden / 'dlib' / '__init__.py').write_text("raise ImportError(\"No module named 'dlib'\")\n")
  faces = request.getfixturevalue('faces')
  values = {'faces': faces, 'a': faces / 'person_0' / '0.png', 'b': faces / 'person_1' / '3.png', 'tmp': tmp_path}
  if any('{run}' in a for a in NEEDS_DLIB[script]):
    values['run'] = request.getfixturevalue('evaluated')
  proc = run(script, *(a.format(**values) for a in NEEDS_DLIB[script]),
             env_extra={'PYTHONPATH': f'{hidden}{os.pathsep}{ROOT}'})
  assert proc.returncode != 0, proc.stdout[-2000:]
  assert 'pip install' in proc.stderr and 'dlib' in proc.stderr, proc.stderr[-2000:]
  no_traceback(proc)
