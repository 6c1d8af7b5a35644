"""launch.evaluate / launch.embed / launch.verify on a tiny trained run and a fake LFW tree (2 folds)."""
import json
import os
import shutil

import ml_collections
import numpy as np
import pytest
from PIL import Image

from facejax.data.synthetic import SyntheticFaces
from facejax.data.pairs import resolve_source
from facejax.evaluation.evaluator import evaluate_run
from facejax.evaluation.threshold import format_verification, verify_pair
from facejax.inference.embedder import calibration_images, embed_paths, load_embedder
from facejax.inference.hardware import has_bf16_dots, has_int8_dots
from facejax.runs import calibrated_pair_sets, read_threshold, threshold_path, write_threshold
from facejax.train import train
from tests.cli_process import launch
from tests.configs.tiny import get_config

NAMES = ('Ada_Lovelace', 'Alan_Turing', 'Grace_Hopper', 'John_von_Neumann')
IMAGES_PER_NAME = 3


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A 2-step classify run of student_vgg (width 0.25) at 48 px."""
  c = get_config('classify')
  c.total_steps = 2
  c.model.image_size = 48
  c.data.kwargs = ml_collections.ConfigDict(dict(num_identities=4, images_per_identity=4, image_size=48))
  workdir = str(tmp_path_factory.mktemp('run'))
  train(c, workdir)
  return workdir


@pytest.fixture(scope='module')
def lfw_dir(tmp_path_factory):
  """<dir>/<Name>/<Name>_000k.jpg (64 px synthetic faces, so evaluation resizes) + pairs.txt: 2 folds of 3
  matched then 3 mismatched pairs, folds over disjoint names as in View 2."""
  root = tmp_path_factory.mktemp('lfw')
  faces = SyntheticFaces(len(NAMES), IMAGES_PER_NAME, image_size=64, seed=3, identity_offset=5000)
  for n, name in enumerate(NAMES):
    os.makedirs(root / name)
    for j in range(IMAGES_PER_NAME):
      Image.fromarray(faces[n * IMAGES_PER_NAME + j]['image']).save(root / name / f'{name}_{j + 1:04d}.jpg',
                                                                    quality=90)
  a, b, c, d = NAMES
  lines = ['2\t3',
           f'{a}\t1\t2', f'{a}\t2\t3', f'{b}\t1\t3', f'{a}\t1\t{b}\t2', f'{a}\t3\t{b}\t1', f'{b}\t2\t{a}\t2',
           f'{c}\t1\t2', f'{d}\t1\t3', f'{d}\t2\t3', f'{c}\t1\t{d}\t1', f'{c}\t2\t{d}\t3', f'{d}\t2\t{c}\t3']
  (root / 'pairs.txt').write_text('\n'.join(lines) + '\n')
  return str(root)


@pytest.fixture(scope='module')
def evaluated(run_dir, lfw_dir):
  """launch.evaluate on the fake LFW tree (a subprocess: the real command line)."""
  proc = launch('evaluate', '--config=configs/lfw_eval.py', f'--workdir={run_dir}',
                f'--config.data.lfw_dir={lfw_dir}', f'--config.data.pairs={lfw_dir}/pairs.txt', '--config.batch_size=8',
                '--config.calibrate=True')
  assert proc.returncode == 0, proc.stderr
  return proc


def test_evaluate_writes_results_and_threshold(run_dir, evaluated):
  out = os.path.join(run_dir, 'eval', 'lfw')
  for f in ('results.json', 'results.md', 'roc.png', 'config.json'):
    assert os.path.getsize(os.path.join(out, f)) > 0, f
  with open(os.path.join(out, 'results.json')) as f:
    results = json.load(f)
  row = results['models'][os.path.basename(run_dir)]
  assert set(row) >= {'accuracy', 'accuracy_std', 'auc', 'eer', 'tar_at_far_1e-3', 'threshold'}
  assert results['protocol']['source'] == 'lfw'
  assert results['protocol']['pairs_total'] == 12 and results['protocol']['folds'] == 2
  assert results['protocol']['images'] == 12  # the distinct images the pairs use, each embedded once
  assert len(results['result']['fold_accuracies']) == 2
  with open(os.path.join(run_dir, 'threshold.json')) as f:
    calibration = json.load(f)
  assert calibration['threshold'] == pytest.approx(row['threshold'])
  assert (calibration['distance'], calibration['flip'], calibration['step']) == ('euclidean', '', 2)
  assert calibration['evaluation'] == os.path.join('eval', 'lfw')
  assert '| model |' in evaluated.stdout and 'threshold.json' in evaluated.stdout


def test_verify_prints_distance_threshold_and_decision(run_dir, lfw_dir, evaluated):
  img = os.path.join(lfw_dir, NAMES[0], f'{NAMES[0]}_0001.jpg')
  other = os.path.join(lfw_dir, NAMES[2], f'{NAMES[2]}_0002.jpg')
  proc = launch('verify', f'--workdir={run_dir}', img, other)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  distance = float(lines[0].split()[1])
  threshold = float(lines[1].split()[1])
  assert lines[-1] == ('same' if distance < threshold else 'different')
  assert 'threshold.json' in lines[1]
  # Both decisions, through the library with the calibrated rule moved (exit code and format are covered above).
  with open(os.path.join(run_dir, 'threshold.json')) as f:
    calibration = json.load(f)
  v = verify_pair(run_dir, img, img)
  assert v['distance'] == pytest.approx(0, abs=1e-6)
  assert v['same'] == (v['distance'] < calibration['threshold'])
  try:
    for thr, expected in ((-1.0, 'different'), (4.5, 'same')):
      write_threshold(threshold_path(run_dir), dict(calibration, threshold=thr))
      assert format_verification(verify_pair(run_dir, img, other)).splitlines()[-1] == expected
  finally:
    write_threshold(threshold_path(run_dir), calibration)


def test_verify_errors(run_dir, lfw_dir, evaluated, tmp_path):
  img = os.path.join(lfw_dir, NAMES[0], f'{NAMES[0]}_0001.jpg')
  bad = tmp_path / 'bad.jpg'
  bad.write_bytes(b'not a jpeg')
  proc = launch('verify', f'--workdir={run_dir}', img, str(bad))
  assert proc.returncode == 1 and 'bad.jpg' in proc.stderr and 'not-an-image' in proc.stderr
  assert 'Traceback' not in proc.stderr
  proc = launch('verify', f'--workdir={run_dir}', img)
  assert proc.returncode != 0 and 'IMG_A IMG_B' in proc.stderr

  with pytest.raises(FileNotFoundError, match='does not exist'):
    verify_pair(str(tmp_path / 'no_run'), img, img)
  with pytest.raises(FileNotFoundError, match='no such image'):
    verify_pair(run_dir, img, str(tmp_path / 'missing.jpg'))
  uncalibrated = tmp_path / 'uncalibrated'
  shutil.copytree(run_dir, uncalibrated, ignore=shutil.ignore_patterns('threshold.json', 'eval'))
  with pytest.raises(FileNotFoundError, match='run `python -m launch.evaluate'):
    verify_pair(str(uncalibrated), img, img)
  with pytest.raises(FileNotFoundError, match='not a facejax run directory'):
    load_embedder(str(tmp_path))
  stale = tmp_path / 'stale'
  shutil.copytree(run_dir, stale)
  calibration = json.loads((stale / 'threshold.json').read_text())
  write_threshold(threshold_path(str(stale)), dict(calibration, step=99))
  with pytest.raises(FileNotFoundError, match='calibrated on checkpoint step 99, which is gone'):
    verify_pair(str(stale), img, img)


def test_embed_writes_names_and_skips_unreadable(run_dir, lfw_dir, evaluated, tmp_path):
  images = tmp_path / 'images'
  shutil.copytree(lfw_dir, images, ignore=shutil.ignore_patterns('pairs.txt'))
  (images / NAMES[1] / 'truncated.jpg').write_bytes((images / NAMES[1] / f'{NAMES[1]}_0001.jpg').read_bytes()[:200])
  (images / 'empty.png').write_bytes(b'')
  out = tmp_path / 'emb' / 'embeddings.npz'
  proc = launch('embed', f'--workdir={run_dir}', f'--images={images}', f'--out={out}', '--batch_size=8')
  assert proc.returncode == 0, proc.stderr
  assert '2 skipped' in proc.stdout
  with np.load(out) as z:
    names, emb, skipped, meta = list(z['names']), z['embeddings'], list(z['skipped']), json.loads(str(z['meta']))
  assert len(names) == len(NAMES) * IMAGES_PER_NAME == emb.shape[0]
  assert names[0] == os.path.join(NAMES[0], f'{NAMES[0]}_0001.jpg') and names == sorted(names)
  assert sorted(skipped) == ['Alan_Turing/truncated.jpg', 'empty.png']
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, rtol=1e-5)
  assert meta['flip'] == 'none' and meta['skipped'] == 2 and meta['step'] == 2

  # A glob, in-process: same embeddings for the same files (batching and padding do not change them).
  glob_result = embed_paths(run_dir, str(images / 'A*' / '*.jpg'), str(tmp_path / 'a.npz'), batch_size=4,
                                progress=False)
  assert glob_result.names == [n for n in names if n.startswith('A')]
  np.testing.assert_allclose(glob_result.embeddings, emb[:len(glob_result.names)], atol=1e-5)
  with pytest.raises(FileNotFoundError, match='no image files found'):
    embed_paths(run_dir, str(tmp_path / 'nothing' / '*.jpg'), str(tmp_path / 'x.npz'))


def test_evaluate_synthetic_default_without_calibration(run_dir, lfw_dir, evaluated):
  from configs.lfw_eval import get_config
  c = get_config('classic')
  c.data.synthetic.update(num_identities=8, images_per_identity=2, num_folds=2, pairs_per_fold=4)
  c.calibrate = False
  c.progress = False
  before = open(os.path.join(run_dir, 'threshold.json')).read()
  out = evaluate_run(c, run_dir)
  assert out['out_dir'] == os.path.join(run_dir, 'eval', 'synthetic_pairs')
  assert out['result']['threshold_search'] == 'grid' and not out['calibrated']
  assert out['protocol']['images'] <= 16  # only the images the 8 pairs use
  assert open(os.path.join(run_dir, 'threshold.json')).read() == before  # the second pair set replaced nothing
  # ... but its own calibration is kept, and verify uses it when asked for by name.
  with open(os.path.join(out['out_dir'], 'threshold.json')) as f:
    assert json.load(f)['threshold'] == pytest.approx(out['result']['threshold'])
  assert calibrated_pair_sets(run_dir) == ['lfw', 'synthetic_pairs']
  img = os.path.join(lfw_dir, NAMES[0], f'{NAMES[0]}_0001.jpg')
  default, chosen = (verify_pair(run_dir, img, img, pairs=p) for p in ('', 'synthetic_pairs'))
  assert default['threshold_file'] == os.path.join(run_dir, 'threshold.json')
  assert chosen['threshold'] == pytest.approx(out['result']['threshold'])
  assert 'calibrated on: pair set synthetic_pairs' in format_verification(chosen)
  assert 'calibrated on: pair set lfw' in format_verification(default)
  with pytest.raises(FileNotFoundError, match='calibrated pair sets: lfw, synthetic_pairs'):
    verify_pair(run_dir, img, img, pairs='cfp')


def test_config_switches():
  from configs.lfw_eval import get_config
  c = get_config('lfw,classic,flip')
  assert (c.data.source, c.thresholds, c.flip) == ('lfw', 'classic', 'sum')
  assert resolve_source(get_config().data) == 'synthetic_pairs'
  c = get_config()
  c.data.lfw_dir = '/data/lfw'
  assert resolve_source(c.data) == 'lfw'
  with pytest.raises(ValueError, match='unknown switch'):
    get_config('lfw,bogus')
  c.flip = 'mirror'
  with pytest.raises(ValueError, match="flip='mirror'"):
    evaluate_run(c, '/nonexistent')


# ---- Exported models (launch.export's artifact) through the same seam. ----

@pytest.fixture(scope='module')
def exported(run_dir, tmp_path_factory):
  """The tiny run exported as launch.export does it (optimized forward, no flip), with its sidecar."""
  from facejax.inference.export import export_embedder, save_exported
  from facejax.runs import load_run
  model, variables, info = load_run(run_dir)
  path = str(tmp_path_factory.mktemp('export') / 'tiny.jaxexport')
  meta = {'model': info['name'], 'image_size': 48, 'flip': None, 'step': info['step']}
  save_exported(export_embedder(model, variables, info['preprocessing_obj'], 48, metadata=meta), path, meta)
  return path


def test_exported_model_embeds_like_the_run(run_dir, lfw_dir, evaluated, exported, tmp_path):
  images = os.path.join(lfw_dir, '*', '*.jpg')
  ref = embed_paths(run_dir, images, str(tmp_path / 'run.npz'), batch_size=8, progress=False)
  out = embed_paths(exported, images, str(tmp_path / 'export.npz'), batch_size=8, progress=False)
  assert out.names == ref.names and len(out.names) == len(NAMES) * IMAGES_PER_NAME
  assert np.abs(out.embeddings - ref.embeddings).max() <= 1e-4
  with np.load(tmp_path / 'export.npz') as z:
    meta = json.loads(str(z['meta']))
  assert (meta['step'], meta['flip'], meta['align']) == (2, 'none', None)

  with pytest.raises(ValueError, match="baked into the export as none, got flip=sum"):
    load_embedder(exported, 'sum')
  with pytest.raises(ValueError, match='raw embeddings need the run directory'):
    load_embedder(exported, raw=True)
  with pytest.raises(FileNotFoundError, match='exported model .* does not exist'):
    load_embedder(str(tmp_path / 'missing.jaxexport'))


def test_evaluate_and_verify_an_exported_model(run_dir, lfw_dir, exported):
  img = os.path.join(lfw_dir, NAMES[0], f'{NAMES[0]}_0001.jpg')
  other = os.path.join(lfw_dir, NAMES[2], f'{NAMES[2]}_0002.jpg')
  with pytest.raises(FileNotFoundError, match=f'launch.evaluate --config=configs/lfw_eval.py --workdir={exported}'):
    verify_pair(exported, img, other)
  from configs.lfw_eval import get_config
  c = get_config('lfw')
  c.data.lfw_dir = lfw_dir
  c.batch_size = 8
  c.progress = False
  c.calibrate = True
  out = evaluate_run(c, exported)
  assert out['out_dir'] == exported + '.eval/lfw' and os.path.isfile(exported + '.threshold.json')
  calibration = read_threshold(exported)
  assert calibration['evaluation'] == 'tiny.jaxexport.eval/lfw' and calibration['step'] == 2
  with open(os.path.join(run_dir, 'eval', 'lfw', 'results.json')) as f:  # the run's own evaluation
    assert calibration['accuracy_at_threshold'] == pytest.approx(json.load(f)['result']['accuracy_at_threshold'])
  v = verify_pair(exported, img, other)
  assert v['threshold_file'] == exported + '.threshold.json' and v['threshold'] == calibration['threshold']
  assert format_verification(v).splitlines()[-1] == ('same' if v['distance'] < v['threshold'] else 'different')


def test_export_int8_calibrated_on_the_runs_training_data(run_dir, lfw_dir, tmp_path):
  out = tmp_path / 'int8.jaxexport'
  proc = launch('export', f'--workdir={run_dir}', f'--out={out}', '--dtype=int8', '--calibration=12')
  assert proc.returncode == 0, proc.stderr[-2000:]
  meta = json.loads((tmp_path / 'int8.jaxexport.json').read_text())
  assert meta['calibration'] == {'images': 12, 'source': 'training data'} and meta['optimize']['dtype'] == 'int8'
  faces = calibration_images(run_dir, 8, 48, images=lfw_dir)  # other faces than the calibration ones
  ref, _ = load_embedder(run_dir)
  emb, _ = load_embedder(str(out))
  cos = np.sum(np.asarray(emb(faces)) * np.asarray(ref(faces)), axis=-1)
  assert cos.min() >= 0.98, cos
  bad = launch('export', f'--workdir={run_dir}', f'--out={tmp_path / "f32.jaxexport"}', '--calibration=4')
  assert bad.returncode != 0 and '--calibration: static activation scales are for --dtype=int8' in bad.stderr
  bad = launch('export', f'--workdir={run_dir}', f'--out={tmp_path / "x.jaxexport"}', '--dtype=int8', '--calibration=4',
               f'--calibration_images={tmp_path}/no_such_dir')
  assert bad.returncode != 0 and 'Traceback' not in bad.stderr
  assert f'launch.export: --calibration_images={tmp_path}/no_such_dir: no image files found' in bad.stderr


def test_export_auto_dtype_records_its_choice_and_exports_it(run_dir, lfw_dir, tmp_path):
  """--dtype=auto times each policy on this CPU and exports the fastest that agrees with float32; the sidecar
  says which, with every candidate's time and agreement on the held-out faces."""
  out = tmp_path / 'auto.jaxexport'
  proc = launch('export', f'--workdir={run_dir}', f'--out={out}', '--dtype=auto', '--calibration=12',
                '--auto_batch=2')
  assert proc.returncode == 0, proc.stderr[-2000:]
  meta = json.loads((tmp_path / 'auto.jaxexport.json').read_text())
  choice = meta['dtype_choice']
  assert {'float32', 'float32/xla', 'float32/onednn', 'int8', 'float32/ort'} <= set(choice['candidates'])
  assert ('bfloat16/onednn' in choice['candidates']) == has_bf16_dots(choice['cpu_flags'])
  assert ('int8/onednn' in choice['candidates']) == has_int8_dots(choice['cpu_flags'])
  assert choice['batch_size'] == 2
  times = {d: c['ms_median'] for d, c in choice['candidates'].items()}
  assert choice['fastest'] == min(times, key=times.get)
  onnx = tmp_path / 'auto.onnx'  # written only where ONNX Runtime beat every facejax path, and said so
  assert onnx.exists() == (choice['fastest'] == 'float32/ort') == ('deploy ' + str(onnx) in proc.stdout)
  agreeing = [d for d, c in choice['candidates'].items() if c['agrees'] and d != 'float32/ort']
  best = choice['candidates'][min(agreeing, key=lambda d: choice['candidates'][d]['ms_median'])]
  assert meta['optimize']['dtype'] == choice['dtype'] == best['dtype']
  assert meta['optimize']['conv'] == choice['conv'] == best['conv']
  assert (meta['calibration'] is not None) == (choice['dtype'] == 'int8')
  faces = calibration_images(run_dir, 8, 48, images=lfw_dir)
  ref, _ = load_embedder(run_dir)
  emb, _ = load_embedder(str(out))
  assert np.sum(np.asarray(emb(faces)) * np.asarray(ref(faces)), axis=-1).min() >= 0.98
  bad = launch('export', f'--workdir={run_dir}', f'--out={tmp_path / "x.jaxexport"}', '--dtype=auto', '--nooptimize')
  assert bad.returncode != 0 and '--dtype=auto chooses among the optimized forward' in bad.stderr


def test_calibration_images_from_a_folder_skip_unreadable_files(run_dir, lfw_dir, tmp_path):
  folder = tmp_path / 'faces'
  shutil.copytree(os.path.join(lfw_dir, NAMES[0]), folder)
  (folder / 'broken.jpg').write_bytes(b'not a jpeg')
  crops = calibration_images(run_dir, 10, 48, images=str(folder))
  assert crops.shape == (IMAGES_PER_NAME, 48, 48, 3) and crops.dtype == np.uint8  # 4 files, the broken one skipped
  with pytest.raises(FileNotFoundError, match='no training config to take calibration images from'):
    calibration_images(str(tmp_path), 4, 48)
  (tmp_path / 'config.json').write_text(json.dumps({'task': 'convert', 'source': 'dlib', 'sha256': '0'}))
  with pytest.raises(FileNotFoundError, match=r'config.json: no training config .* \(--calibration_images=DIR\)'):
    calibration_images(str(tmp_path), 4, 48)  # a converted model's record names no training data
