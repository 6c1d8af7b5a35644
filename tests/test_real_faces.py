"""The dlib lineage on a small real subset of ../shared/data (skipped when absent): LFW pairs of 12 people aligned
and evaluated with dlib's own pipeline as reference, the leakage check, the student cut from dlib by its init
reference, and the whole lineage (configs/real_faces.py) in its tiny variant."""
import json
import os

import ml_collections
import numpy as np
import pytest

from tests.shared_data import shared_data, tiny_lfw

pytest.importorskip('dlib')


@pytest.fixture(scope='module')
def tiny_real(tmp_path_factory):
  """A 2-fold, 12-pair LFW tree (symlinks to real people, real View 2 lines), 6 real identities of at most 8
  photos each (46: what the wiring needs; each photo costs alignment and teacher passes in the tiny pipeline) and
  6 other real identities to hold out (celeba/, 5 photos each)."""
  celeba299, celeba = shared_data('celeba299'), shared_data('celeba')
  root = tmp_path_factory.mktemp('real')
  tiny_lfw(root / 'lfw')
  for identity in sorted(os.listdir(celeba299))[:6]:
    os.makedirs(root / 'ids' / identity)
    for photo in sorted(os.listdir(os.path.join(celeba299, identity)))[:8]:
      os.symlink(os.path.join(celeba299, identity, photo), root / 'ids' / identity / photo)
  os.makedirs(root / 'heldout')
  for identity in sorted(os.listdir(celeba))[:6]:
    os.symlink(os.path.join(celeba, identity), root / 'heldout' / identity)
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


def test_real_pipeline_tiny(tiny_real, tmp_path, monkeypatch):
  """configs/real_faces.py:tiny end to end on 6 real identities, 12 real LFW pairs and 6 held-out identities: the
  stages train from what their configs name (the optional finetune step too), the report has every model on both
  yardsticks, the leakage check and dlib's own pipeline as a reference row (its LFW evaluation of dlib's net also
  the judge's and the teacher's: made once); a rerun resumes (skips) everything."""
  from configs.real_faces import get_config
  from facejax import pipeline
  from facejax.evaluation import evaluator
  evaluated = []
  def counted(config, run, **kw):
    evaluated.append((config.name or 'lfw', os.path.basename(run)))
    return evaluate_run(config, run, **kw)
  evaluate_run = evaluator.evaluate_run
  monkeypatch.setattr(evaluator, 'evaluate_run', counted)
  monkeypatch.setattr(pipeline, 'evaluate_run', counted)
  c = get_config('tiny')
  c.faces.lfw_dir = str(tiny_real / 'lfw')
  c.faces.identities = ml_collections.ConfigDict({'celeba299': str(tiny_real / 'ids')})
  c.faces.holdout.source = str(tiny_real / 'heldout')
  # A mimic folder holding one of the held-out identities under its name (a larger copy of the same data): left out.
  more = tiny_real / 'more'
  more.mkdir(exist_ok=True)
  held = sorted(os.listdir(tiny_real / 'heldout'))[0]
  if not (more / held).exists():
    os.symlink(os.readlink(tiny_real / 'heldout' / held), more / held)
  c.faces.mimic.folders = (str(more),)
  workdir = tmp_path / 'real'
  report = pipeline.run_pipeline(c, str(workdir))
  assert sorted(evaluated) == sorted((y, run) for y in ('lfw', 'holdout')
                                     for run in ('dlib', 'student', 'siamese', 'finetune'))
  models = {'teacher', 'student', 'student_siamese', 'teacher_finetuned', 'dlib_native'}
  assert set(report['models']) == set(report['holdout']['models']) == models
  assert report['models']['teacher']['accuracy'] == report['models']['dlib_native']['accuracy']
  assert report['models']['dlib_native']['params'] == report['models']['teacher']['params']
  assert report['compression']['param_ratio'] >= 9
  photos = sum(len(os.listdir(tiny_real / 'ids' / i)) for i in os.listdir(tiny_real / 'ids'))
  assert report['data']['aligned']['celeba299']['aligned'] > 0.75 * photos  # (was > 100 of 134 photos)
  assert report['leakage']['train_identities'] == 6 and report['leakage']['test_identities'] == 12
  comparisons = {'student vs teacher', 'student_siamese vs student', 'teacher_finetuned vs teacher',
                 'teacher vs dlib_native'}
  assert comparisons <= set(report['comparisons']) and comparisons <= set(report['holdout']['comparisons'])
  assert report['holdout']['pairs']['num_folds'] == 2 and report['holdout']['pairs']['photos'] == 30
  # The sets: labelled identities, and the mimic set of every chip and its mirror image.
  sets = report['data']['sets']
  assert report['data']['aligned']['more']['aligned'] >= 4  # aligned, then left out as a held-out identity
  assert sets['identities']['identities'] == sets['mimic']['identities'] == 6
  assert sets['mimic']['images'] == 2 * sets['identities']['images']
  # Each stage trained from what its config named: the teacher is dlib's net converted once, shared by the
  # student, the Siamese anchor and the fine-tuned copy.
  dlib = str(workdir / 'weights' / 'dlib')
  assert report['runs']['teacher']['workdir'] == report['runs']['dlib_native']['workdir'] == dlib
  read = lambda stage: json.loads((workdir / stage / 'config.json').read_text())
  assert read('student')['distill']['teacher_workdir'] == read('siamese')['distill']['teacher_workdir'] == dlib
  assert read('student')['data']['kwargs']['name'] == sets['mimic']['name']
  assert read('siamese')['init']['path'] == str(workdir / 'student')
  assert read('finetune')['init']['path'] == dlib
  # The fine-tuned teacher is dlib's whole net with a classifier over the 6 identities.
  assert report['models']['teacher_finetuned']['params'] == report['models']['teacher']['params']
  info = json.loads((workdir / 'finetune' / 'model.json').read_text())
  assert info['num_classes'] == 6 and info['align']['kind'] == 'dlib_5pt'
  for f in ('results.json', 'results.md', 'roc.png'):
    assert (workdir / f).stat().st_size > 0
  text = (workdir / 'results.md').read_text()
  assert 'Identity leakage (by face)' in text and 'dlib native at its published rule' in text
  assert 'Held-out identities (6 people, 2 folds of' in text
  # Students read dlib chips: their model.json says so, so evaluate / verify align photos for them.
  assert json.loads((workdir / 'siamese' / 'model.json').read_text())['align'] == {
      'kind': 'dlib_5pt', 'size': 150, 'padding': 0.25}
  logs = {s: (workdir / s / 'metrics.jsonl').read_text() for s in ('student', 'siamese', 'finetune')}
  again = pipeline.run_pipeline(c, str(workdir))
  assert again['models']['student']['accuracy'] == report['models']['student']['accuracy']
  assert {s: (workdir / s / 'metrics.jsonl').read_text() for s in logs} == logs  # finished stages skipped


def test_the_student_is_cut_from_dlib_by_its_init_reference(tmp_path):
  """init.path='prune:dlib' (configs/real_faces.py's student) resolves to dlib's net cut to the stage's model by
  cut_init (when the stage is about to train), calibrated on the stage's prepared set, kept for a resumed plan; a
  model it cannot cut is named."""
  from PIL import Image
  from configs.real_faces import get_config
  from facejax.lineage import cut_init, cut_inits, stage_plan
  from facejax.runs import load_converted
  rng = np.random.default_rng(0)
  tree = tmp_path / 'tree'
  for person in ('a', 'b'):
    os.makedirs(tree / person)
    for i in range(2):
      Image.fromarray(rng.integers(0, 256, (150, 150, 3), np.uint8)).save(tree / person / f'{i}.png')
  c = get_config()
  c.stages = ('student',)
  prepared = {'data_dir': '/d', 'sets': {'mimic': {'name': 'mimic_abc', 'tree': str(tree)}}}
  plan = stage_plan(c, str(tmp_path), prepared)
  init = str(tmp_path / 'student_init')
  assert plan['student'].init.path == init and plan['student'].distill.teacher_workdir == str(tmp_path / 'weights' /
                                                                                               'dlib')
  assert not os.path.exists(init)  # cut when the stage trains: its teacher may be an earlier stage
  cut_init('student', c, plan, str(tmp_path), prepared)
  meta = load_converted(init)[2]
  assert meta['source'] == 'prune' and meta['kwargs']['channels'] == list(c.student.model.kwargs.channels)
  assert meta['calibration_images'] == 4 and meta['teacher'] == str(tmp_path / 'weights' / 'dlib')
  cut = cut_inits(plan)['student']  # what the report says of it
  assert (cut['path'], cut['summary'], cut['params']) == (init, meta['summary'], meta['params'])
  assert cut_inits({'s': ml_collections.ConfigDict({'init': {'path': str(tmp_path / 'weights' / 'dlib')}})}) == {}
  stamp = os.path.getmtime(os.path.join(init, os.listdir(init)[0]))
  cut_init('student', c, stage_plan(c, str(tmp_path), prepared), str(tmp_path), prepared)  # kept
  assert os.path.getmtime(os.path.join(init, os.listdir(init)[0])) == stamp
  c.student.model.embed_dim = 256  # to mimic another teacher: the cut's backbone under a new embedding layer
  with pytest.raises(ValueError, match=r"embed_dim=128 \(any with config.student.init.mode='backbone'\); got "
                                       r"'dlib_resnet', 150, 'dlib', 256"):
    cut_init('student', c, stage_plan(c, str(tmp_path), prepared), str(tmp_path), prepared)
  c.student.init.mode = 'backbone'
  cut_init('student', c, stage_plan(c, str(tmp_path), prepared), str(tmp_path), prepared)
  assert load_converted(init)[2] == meta  # the same cut
  c.student.model.name = 'student_vgg'
  with pytest.raises(ValueError, match=r"config.student.init.path='prune:...' cuts the stage's model from dlib's "
                                       r"net: it needs config.student.model name='dlib_resnet'"):
    cut_init('student', c, stage_plan(c, str(tmp_path), prepared), str(tmp_path), prepared)


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
