"""The real-faces path on a small real subset of ../shared/data (skipped when absent): LFW pairs of 12 people
aligned and evaluated with dlib's own pipeline as reference, the leakage check, and the whole real pipeline in
its tiny variant."""
import json
import os

import numpy as np
import pytest

from tests.shared_data import shared_data, tiny_lfw

pytest.importorskip('dlib')


@pytest.fixture(scope='module')
def tiny_real(tmp_path_factory):
  """A 2-fold, 12-pair LFW tree (symlinks to real people, real View 2 lines) and 6 real identities of at most 8
  photos each (46: what the wiring needs; each photo costs alignment and teacher passes in the tiny pipeline)."""
  celeba = shared_data('celeba299')
  root = tmp_path_factory.mktemp('real')
  tiny_lfw(root / 'lfw')
  for identity in sorted(os.listdir(celeba))[:6]:
    os.makedirs(root / 'ids' / identity)
    for photo in sorted(os.listdir(os.path.join(celeba, identity)))[:8]:
      os.symlink(os.path.join(celeba, identity, photo), root / 'ids' / identity / photo)
  return root


def test_align_files_matches_one_process_and_falls_back_in_the_box(tiny_real):
  from facejax.data import align
  people = sorted(os.listdir(tiny_real / 'lfw'))[:3]
  paths = [str(tiny_real / 'lfw' / p / f'{p}_0001.jpg') for p in people if p != 'pairs.txt']
  blank = tiny_real / 'blank.png'
  from PIL import Image
  Image.new('RGB', (250, 250), (128, 128, 128)).save(blank)
  broken = tiny_real / 'broken.jpg'
  broken.write_bytes(b'not a jpeg')
  paths += [str(blank), str(broken)]
  one = align.align_files(paths, workers=1)
  two = align.align_files(paths, workers=2, chunk=2)
  np.testing.assert_array_equal(one['chips'], two['chips'])
  assert one['found'].tolist() == [True] * (len(paths) - 2) + [False, False]
  assert one['readable'].tolist() == [True] * (len(paths) - 1) + [False]
  # The no-face chip is the 5-point fit inside FALLBACK_BOX: what align_or_fallback makes of the photo.
  aligner = align.default_aligner()
  chip, found = aligner.align_or_fallback(np.asarray(Image.open(blank)), 'blank')
  assert not found and (chip == one['chips'][-2]).all()
  # dlib's own descriptor of a chip is the one of its photo and detected shape (compute_face_descriptor(img, shape)).
  import dlib
  photo = np.asarray(Image.open(paths[0]).convert('RGB'))
  face = aligner.detect(photo)[0]
  shape = dlib.full_object_detection(dlib.rectangle(*face.box), [dlib.point(int(x), int(y)) for x, y in face.landmarks])
  native = np.asarray(align._recognition_net().compute_face_descriptor(photo, shape))
  np.testing.assert_allclose(align.dlib_descriptors(one['chips'][:1])[0], native, atol=1e-6)


def test_evaluate_with_dlib_reference_on_real_lfw_pairs(tiny_real, tmp_path):
  from configs.lfw_eval import get_config
  from facejax.convert.dlib import convert_dlib, default_dat_path
  from facejax.evaluation.evaluator import evaluate_run
  run = str(tmp_path / 'dlib')
  convert_dlib(default_dat_path(), run)
  c = get_config('lfw')
  c.data.lfw_dir = str(tiny_real / 'lfw')
  c.reference = 'dlib'
  c.cache_dir = str(tmp_path / 'cache')
  c.progress = False
  c.batch_size = 8
  out = evaluate_run(c, run)
  ref = out['reference']
  # facejax's converted net and dlib's own on the same chips: the same verdicts on these real pairs.
  assert out['result']['accuracy'] == ref['results']['facejax, normalised']['accuracy']
  for a, b in (('facejax, raw', 'dlib native, raw'), ('facejax, normalised', 'dlib native, normalised')):
    np.testing.assert_allclose(ref['results'][a]['fold_accuracies'], ref['results'][b]['fold_accuracies'])
  assert ref['results']['dlib native, raw']['accuracy'] >= 0.9  # 12 real LFW pairs, a 99 % model
  assert 0.5 <= ref['dlib_fixed_threshold']['accuracy'] <= 1
  assert sorted(os.listdir(c.cache_dir))[0].startswith('chips-') and len(os.listdir(c.cache_dir)) == 2
  with open(os.path.join(out['out_dir'], 'results.json')) as f:
    saved = json.load(f)
  assert set(saved['reference']['rows']) == {'facejax, normalised', 'facejax, raw', 'dlib native, normalised',
                                             'dlib native, raw'}
  assert saved['protocol']['no_face'] == 0 and saved['protocol']['align_images_per_s'] > 0
  # The second evaluation reads the cached chips and descriptors, and gives the same numbers.
  again = evaluate_run(c, run)
  assert list(again['result']['fold_accuracies']) == list(out['result']['fold_accuracies'])
  np.testing.assert_array_equal(again['embeddings'], out['embeddings'])


def test_leakage_check_finds_a_planted_overlap():
  from facejax.evaluation.leakage import leakage_check
  rng = np.random.default_rng(0)
  people = rng.normal(size=(20, 16))
  test = np.repeat(people, 3, axis=0) + 0.1 * rng.normal(size=(60, 16))
  test_ids = np.repeat([f'p{i}' for i in range(20)], 3)
  train = np.concatenate([people[7] + 0.1 * rng.normal(size=(4, 16)), rng.normal(size=(8, 16))])
  train_ids = ['7001'] * 4 + [f'9{i:03d}' for i in range(8)]
  norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  check = leakage_check(norm(train), train_ids, norm(test), test_ids, threshold=0.2)
  assert [(s['train'], s['test']) for s in check['suspects']] == [('7001', 'p7')]
  assert check['nearest'][0]['train'] == '7001' and check['train_identities'] == 9
  assert check['test_identities'] == 20


def test_real_pipeline_tiny(tiny_real, tmp_path):
  """configs/real_faces.py:tiny end to end on 6 real identities and 12 real LFW pairs: every stage runs (the
  optional finetune step too), the report has every model, the leakage check and the dlib reference; a rerun
  resumes (skips) everything."""
  from configs.real_faces import get_config
  from facejax.pipeline import run_pipeline
  c = get_config('tiny')
  c.real.lfw_dir = str(tiny_real / 'lfw')
  c.real.identities_dir = str(tiny_real / 'ids')
  workdir = str(tmp_path / 'real')
  report = run_pipeline(c, workdir)
  assert set(report['models']) == {'teacher', 'student', 'student_siamese', 'teacher_finetuned', 'dlib_native'}
  assert report['models']['teacher']['accuracy'] == report['models']['dlib_native']['accuracy']
  assert report['compression']['param_ratio'] >= 9
  photos = sum(len(os.listdir(tiny_real / 'ids' / i)) for i in os.listdir(tiny_real / 'ids'))
  assert report['data']['aligned']['identities']['aligned'] > 0.75 * photos  # (was > 100 of 134 photos)
  assert report['leakage']['train_identities'] == 6 and report['leakage']['test_identities'] == 12
  assert {'student vs teacher', 'student_siamese vs student', 'teacher_finetuned vs teacher',
          'teacher vs dlib_native'} <= set(report['comparisons'])
  # The fine-tuned teacher is dlib's whole net with a classifier over the 6 identities, started from the teacher.
  finetuned, teacher = report['models']['teacher_finetuned'], report['models']['teacher']
  assert finetuned['params'] == teacher['params']
  with open(os.path.join(workdir, 'finetune', 'model.json')) as f:
    info = json.load(f)
  assert info['num_classes'] == 6 and info['align']['kind'] == 'dlib_5pt'
  for f in ('results.json', 'results.md', 'roc.png'):
    assert os.path.getsize(os.path.join(workdir, f)) > 0
  text = open(os.path.join(workdir, 'results.md')).read()
  assert 'Identity leakage (by face)' in text and 'dlib native at its fixed 0.6' in text
  # Students read dlib chips: their model.json says so, so evaluate / verify align photos for them.
  with open(os.path.join(workdir, 'siamese', 'model.json')) as f:
    assert json.load(f)['align'] == {'kind': 'dlib_5pt', 'size': 150, 'padding': 0.25}
  again = run_pipeline(c, workdir)
  assert again['models']['student']['accuracy'] == report['models']['student']['accuracy']


def test_identity_threshold_is_calibrated_on_the_test_people():
  """Halves of the same person sit closer than the `far` quantile of the nearest other person, so a planted
  overlap is caught and ~far of new identities are flagged by chance."""
  from facejax.evaluation.leakage import identity_threshold, leakage_check
  rng = np.random.default_rng(1)
  norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  people = norm(rng.normal(size=(300, 32)))
  test = norm(np.repeat(people, 4, axis=0) + 0.05 * rng.normal(size=(1200, 32)))
  test_ids = np.repeat([f'p{i}' for i in range(300)], 4)
  cal = identity_threshold(test, test_ids, far=0.01)
  assert cal['people'] == 300 and cal['recall'] > 0.99
  new = norm(rng.normal(size=(200, 32)))
  train = norm(np.concatenate([np.repeat(people[:3], 5, axis=0), np.repeat(new, 5, axis=0)])
               + 0.05 * rng.normal(size=(1015, 32)))
  train_ids = np.repeat([f'leak{i}' for i in range(3)] + [f'new{i}' for i in range(200)], 5)
  check = leakage_check(train, train_ids, test, test_ids, cal['threshold'])
  flagged = {s['train'] for s in check['suspects']}
  assert {'leak0', 'leak1', 'leak2'} <= flagged and len(flagged - {'leak0', 'leak1', 'leak2'}) <= 10
