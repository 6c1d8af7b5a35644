"""Real files: robust decoding, identity folders -> TFDS ArrayRecord -> grain, LFW trees and pairs.txt."""
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from facejax.data import lfw_pairs, make_source, read_pairs, train_loader
from facejax.data.decode import UnreadableImage, decode_image
from facejax.data.loader import as_rgb_array
from tests.shared_data import ROOT, shared_data


def _encode(array_or_image, fmt='JPEG', **kw) -> bytes:
  img = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
  buf = io.BytesIO()
  img.save(buf, format=fmt, **kw)
  return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
  return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 40000) -> bytes:
  """A PNG whose header claims side x side RGB pixels (a decompression bomb); the pixel data is a stub."""
  ihdr = struct.pack('>IIBBBBB', side, side, 8, 2, 0, 0, 0)
  return (b'\x89PNG\r\n\x1a\n' + _png_chunk(b'IHDR', ihdr) + _png_chunk(b'IDAT', zlib.compress(b'\0' * 64))
          + _png_chunk(b'IEND', b''))


def _rgb(seed, h=40, w=32):
  return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


BAD_FILES = {  # file name -> (bytes, expected category or None if it must be converted and kept)
    'truncated.jpg': (_encode(_rgb(1, 120, 100))[:6000], 'truncated'),
    'empty.jpg': (b'', 'empty'),
    'not_an_image.jpg': (b'<html>404 not found</html>\n', 'not-an-image'),
    'gray.jpg': (_encode(_rgb(2)[..., 0]), None),
    'cmyk.jpg': (_encode(Image.fromarray(_rgb(3)).convert('CMYK')), None),
    'rgba.png': (_encode(np.dstack([_rgb(4), np.full((40, 32), 128, np.uint8)]), 'PNG'), None),
    'sixteen_bit.png': (_encode(Image.fromarray((np.arange(40 * 32, dtype=np.uint16) * 50).reshape(40, 32)),
                                'PNG'), None),
    'tiny_5x5.jpg': (_encode(_rgb(5, 5, 5)), 'too-small'),
    'bomb.png': (bomb_png(), 'too-large'),
}


def make_identity_tree(root, num_identities=4, images_per_identity=3, bad_files=True):
  """root/<person_k>/<j>.jpg plus every bad case in person_0 (and one identity with a single image)."""
  for k in range(num_identities):
    os.makedirs(os.path.join(root, f'person_{k}'), exist_ok=True)
    for j in range(images_per_identity):
      with open(os.path.join(root, f'person_{k}', f'{j}.jpg'), 'wb') as f:
        f.write(_encode(_rgb(100 * k + j)))
  if bad_files:
    for name, (data, _) in BAD_FILES.items():
      with open(os.path.join(root, 'person_0', name), 'wb') as f:
        f.write(data)
    os.makedirs(os.path.join(root, 'lonely'), exist_ok=True)
    with open(os.path.join(root, 'lonely', '0.jpg'), 'wb') as f:
      f.write(_encode(_rgb(999)))
    with open(os.path.join(root, 'person_1', 'notes.txt'), 'w') as f:
      f.write('not an image extension: ignored and counted\n')


@pytest.mark.parametrize('name', sorted(BAD_FILES))
def test_decode_each_bad_case(name):
  data, category = BAD_FILES[name]
  if category is not None:
    with pytest.raises(UnreadableImage) as e:
      decode_image(data, min_side=16)
    assert e.value.category == category
  else:
    x = decode_image(data, min_side=16)
    assert x.dtype == np.uint8 and x.shape == (40, 32, 3)


def test_decode_conversions_are_faithful():
  rgba = decode_image(BAD_FILES['rgba.png'][0])  # alpha 128 over white
  expected = (_rgb(4).astype(np.float32) * 128 + 255 * 127) / 255
  assert np.abs(rgba.astype(np.float32) - expected).max() <= 1.5
  sixteen = decode_image(BAD_FILES['sixteen_bit.png'][0])
  ref = (np.arange(40 * 32, dtype=np.float64) * 50).reshape(40, 32) / 65535 * 255
  assert np.abs(sixteen[..., 0] - ref).max() <= 1 and (sixteen[..., 0] == sixteen[..., 2]).all()
  with pytest.raises(UnreadableImage, match='too-large'):
    decode_image(_encode(_rgb(6)), max_pixels=100)  # header check, before decoding


def test_jpeg_fast_path_matches_pillow(monkeypatch):
  """Plain JPEGs decode through simplejpeg to Pillow's exact pixels; the rest keep Pillow's decoding."""
  import simplejpeg

  from facejax.data import decode
  smooth = np.asarray(Image.fromarray(_rgb(7, 30, 40)).resize((131, 97), Image.BILINEAR))
  cases = {'420': _encode(smooth, quality=90), '444': _encode(smooth, subsampling=0),
           'progressive': _encode(smooth, progressive=True), 'gray': _encode(smooth[..., 1]),
           'cmyk': _encode(Image.fromarray(smooth).convert('CMYK'))}
  calls = []
  real = simplejpeg.decode_jpeg
  monkeypatch.setattr(decode.simplejpeg, 'decode_jpeg', lambda *a, **k: calls.append(1) or real(*a, **k))
  for name, data in cases.items():
    calls.clear()
    got = decode_image(data)
    assert (len(calls) == 1) == (name != 'cmyk'), name  # CMYK: Pillow's conversion, the one meaning of it
    want = np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))
    assert got.dtype == np.uint8 and got.shape == (97, 131, 3), name
    np.testing.assert_array_equal(got, want, err_msg=name)
  calls.clear()
  with pytest.raises(UnreadableImage, match='too-small'):  # the limits hold on the fast path too
    decode_image(cases['420'], min_side=100)
  assert not calls


def test_folders_builder_tfds_source_and_loader(tmp_path):
  root, data_dir = str(tmp_path / 'faces'), str(tmp_path / 'tfds')
  make_identity_tree(root)
  from facejax.data.folders import prepare_folders
  path, summary, decode_summary = prepare_folders(root, data_dir, name='t', val_fraction=0.25, min_images=2)
  d = summary['decode']
  assert d['skipped_by_reason'] == {'truncated': 1, 'empty': 1, 'not-an-image': 1, 'too-small': 1, 'too-large': 1}
  assert d['converted_from'] == {'L': 1, 'CMYK': 1, 'RGBA': 1, 'I;16': 1}
  assert d['total'] == 4 * 3 + len(BAD_FILES) + 1 and d['ok'] == d['total'] - 5
  assert summary['identities_kept'] == 4 and summary['identities_below_min_images'] == 1
  assert summary['files_ignored'] == 1
  splits = summary['splits']
  assert splits['train']['identities'] == 3 and splits['val']['identities'] == 1
  assert splits['train']['images'] + splits['val']['images'] == 4 * 3 + 4  # + gray, cmyk, rgba, 16-bit
  text = decode_summary.format()
  for category in ('truncated', 'empty', 'not-an-image', 'too-small', 'too-large', 'from CMYK'):
    assert category in text
  train = make_source('folders', data_dir=data_dir, name='t', split='train')
  val = make_source('folders', data_dir=data_dir, name='t', split='val')
  assert len(train) + len(val) == 16 and train.num_classes == 3
  assert set(train.labels) == {0, 1, 2} and set(val.labels) == {3}  # train labels first, val identities after
  assert not {train[i]['identity'] for i in range(len(train))} & {val[i]['identity'] for i in range(len(val))}
  for i in range(len(train)):
    assert as_rgb_array(train[i]['image']).shape == (40, 32, 3)
  it = train_loader(train, global_batch_size=4, image_size=24, seed=0, num_devices=2, sampler='identity',
                    images_per_identity=2)
  b = next(it)
  assert b['image'].shape == (2, 2, 24, 24, 3) and set(np.unique(b['label'], return_counts=True)[1]) == {2}
  np.testing.assert_array_equal(b['label'].ravel(), train.labels[b['index'].ravel()])
  again, _, none = prepare_folders(root, data_dir, name='t')  # reused, not rebuilt
  assert again == path and none is None


def test_folders_split_by_image(tmp_path):
  from facejax.data.folders import prepare_folders
  root = str(tmp_path / 'faces')
  make_identity_tree(root, num_identities=3, images_per_identity=4, bad_files=False)
  _, summary, _ = prepare_folders(root, str(tmp_path / 'tfds'), name='img', split_by='image', val_fraction=0.25)
  assert summary['splits'] == {'train': {'identities': 3, 'images': 9}, 'val': {'identities': 3, 'images': 3}}
  train = make_source('folders', data_dir=str(tmp_path / 'tfds'), name='img')
  assert train.num_classes == 3 and sorted(set(train.labels)) == [0, 1, 2]


def test_folders_larger_than_tfds_memory_buffer_are_written_without_tensorflow(tmp_path, monkeypatch):
  """TFDS spills a split over its in-memory limit (1 GB) to disk through TensorFlow, which is not installed: the
  split is held in memory instead (same records as within the limit), or the error says what to do."""
  from tensorflow_datasets.core import shuffle
  from facejax.data.folders import prepare_folders
  root = str(tmp_path / 'faces')
  make_identity_tree(root, num_identities=3, images_per_identity=4, bad_files=False)
  prepare_folders(root, str(tmp_path / 'ref'), name='ref', val_fraction=0.0)
  monkeypatch.setattr(shuffle, 'MAX_MEM_BUFFER_SIZE', 1000)  # far below this tree's bytes
  prepare_folders(root, str(tmp_path / 'small'), name='small', val_fraction=0.0)
  assert shuffle.MAX_MEM_BUFFER_SIZE == 1000  # restored
  ref, small = (make_source('folders', data_dir=str(tmp_path / d), name=d) for d in ('ref', 'small'))
  assert len(ref) == len(small) == 12
  for i in range(len(ref)):
    assert ref[i]['label'] == small[i]['label'] and bytes(ref[i]['image']) == bytes(small[i]['image'])
  monkeypatch.setattr(os, 'sysconf', lambda name: 4096 if name == 'SC_PAGE_SIZE' else 10)  # 40 KB free
  with pytest.raises(MemoryError, match=r'faces: its largest split needs .* GiB in memory.*--name'):
    prepare_folders(root, str(tmp_path / 'none'), name='none', val_fraction=0.0)


def test_prepare_data_cli_prints_summary(tmp_path):
  root = str(tmp_path / 'faces')
  make_identity_tree(root)
  out = subprocess.run([sys.executable, '-m', 'launch.prepare_data', '--dataset=folders', f'--manual_dir={root}',
                        f'--data_dir={tmp_path / "tfds"}', '--name=cli', f'--summary_json={tmp_path / "s.json"}'],
                       capture_output=True, text=True, cwd=ROOT, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'skipped 1 truncated' in out.stdout and 'converted 1 from CMYK to RGB' in out.stdout
  assert json.load(open(tmp_path / 's.json'))['decode']['skipped'] == 5


def test_synthetic_tfds_roundtrip_is_exact(tmp_path):
  from facejax.data import SyntheticFaces
  src = make_source('synthetic_tfds', data_dir=str(tmp_path), num_identities=3, images_per_identity=2,
                    image_size=16, num_val_identities=2)
  ref = SyntheticFaces(3, 2, image_size=16)
  assert len(src) == 6 and src.num_classes == 3
  got = {r['identity'] + str(as_rgb_array(r['image']).tobytes()) for r in (src[i] for i in range(6))}
  assert got == {r['identity'] + str(r['image'].tobytes()) for r in (ref[i] for i in range(6))}
  val = make_source('synthetic_tfds', data_dir=str(tmp_path), num_identities=3, images_per_identity=2,
                    image_size=16, num_val_identities=2, split='val')
  assert len(val) == 4 and val[0]['identity'] not in {ref[i]['identity'] for i in range(6)}


def test_write_identity_folders_is_a_jpeg_tree_of_the_synthetic_faces(tmp_path):
  from facejax.data import SyntheticFaces
  from facejax.data.folders import prepare_folders
  from facejax.data.synthetic import write_identity_folders
  root = write_identity_folders(str(tmp_path / 'faces'), 3, 2, 24, processes=1)
  ref = SyntheticFaces(3, 2, image_size=24)
  files = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
  assert files == [f"{ref[i]['identity']}/{i:06d}.jpg" for i in range(6)]
  for i, rel in enumerate(files):
    with open(os.path.join(root, rel), 'rb') as f:
      assert f.read() == _encode(ref[i]['image'], quality=90)  # Pillow's JPEG at quality 90
  _, summary, _ = prepare_folders(root, str(tmp_path / 'tfds'), name='w', val_fraction=0.0)
  assert summary['splits']['train'] == {'identities': 3, 'images': 6}


# LFW.

LFW_NAMES = {'Ann_Smith': 2, 'Bob_Jones': 3, 'Cy_Young': 1, 'Di_Ross': 2}


def make_lfw_tree(root):
  for name, n in LFW_NAMES.items():
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(1, n + 1):
      with open(os.path.join(root, name, f'{name}_{i:04d}.jpg'), 'wb') as f:
        f.write(_encode(_rgb(hash(name) % 1000 + i, 25, 25)))


GOOD_PAIRS = """2\t2
Ann_Smith\t1\t2
Bob_Jones\t1\t3
Ann_Smith\t1\tCy_Young\t1
Bob_Jones\t2\tDi_Ross\t1
Di_Ross\t1\t2
Bob_Jones\t2\t3
Cy_Young\t1\tDi_Ross\t2
Ann_Smith\t2\tBob_Jones\t1
"""


def _write(path, text):
  with open(path, 'w') as f:
    f.write(text)
  return str(path)


@pytest.mark.parametrize('layout', ['lfw', 'lfw-deepfunneled/lfw-deepfunneled'])
def test_lfw_pairs(tmp_path, layout):
  make_lfw_tree(str(tmp_path / layout))
  pairs = lfw_pairs(str(tmp_path / layout.split('/')[0]), _write(tmp_path / 'pairs.txt', GOOD_PAIRS))
  assert len(pairs) == 8 and pairs.num_folds == 2
  np.testing.assert_array_equal(pairs.fold, [0, 0, 0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(pairs.issame, [1, 1, 0, 0, 1, 1, 0, 0])
  assert pairs.names[pairs.left[0]] == os.path.join('Ann_Smith', 'Ann_Smith_0001.jpg')
  assert pairs.names[pairs.right[3]] == os.path.join('Di_Ross', 'Di_Ross_0001.jpg')
  assert pairs.left[2] == pairs.left[0]  # one image, one entry
  assert len(pairs.images) == len(set(pairs.names)) == 8
  assert pairs.images[0].shape == (25, 25, 3)


@pytest.mark.parametrize('text, error', [
    ('2 2\nAnn_Smith 1\n', 'pairs.txt: header `2 2` promises 2 x 2 x 2 = 8 pair lines, found 1'),
    ('1 1\nAnn_Smith 1\nAnn_Smith 1 Bob_Jones 1\n', 'pairs.txt line 2: expected 3 or 4 fields, got 2'),
    ('1 1\nAnn_Smith 1 x\nAnn_Smith 1 Bob_Jones 1\n', "pairs.txt line 2: expected an image number, got 'x'"),
    ('1 1\nAnn_Smith 1 2\nAnn_Smith 0 Bob_Jones 1\n', 'pairs.txt line 3: expected an image number >= 1'),
    ('1 1\nAnn_Smith 1 Bob_Jones 1\nAnn_Smith 1 2\n', 'pairs.txt line 2: expected a matched `name i j` pair'),
    ('ten\n', 'pairs.txt line 1: expected a header'),
])
def test_read_pairs_errors_name_the_line(tmp_path, text, error):
  with pytest.raises(ValueError) as e:
    read_pairs(_write(tmp_path / 'pairs.txt', text))
  assert error in str(e.value)


def test_lfw_missing_images_name_the_line(tmp_path):
  make_lfw_tree(str(tmp_path / 'lfw'))
  missing = GOOD_PAIRS.replace('Bob_Jones\t2\t3', 'Bob_Jones\t2\t9')
  with pytest.raises(FileNotFoundError, match=r'pairs.txt line 7: no such image: expected .*Bob_Jones_0009.jpg'):
    lfw_pairs(str(tmp_path / 'lfw'), _write(tmp_path / 'pairs.txt', missing))
  unknown = GOOD_PAIRS.replace('Cy_Young\t1\tDi_Ross\t2', 'Zed_Nobody\t1\tDi_Ross\t2')
  with pytest.raises(FileNotFoundError, match=r'pairs.txt line 8: unknown name: expected .*Zed_Nobody_0001.jpg'):
    lfw_pairs(str(tmp_path / 'lfw'), _write(tmp_path / 'pairs.txt', unknown))
  assert len(read_pairs(_write(tmp_path / 'dev.txt', '1\nAnn_Smith 1 2\nAnn_Smith 1 Bob_Jones 2\n'))) == 2


def test_loader_stage_timings():
  """The loader's per-stage breakdown (launch.benchmark_data) runs every stage on encoded records and adds up."""
  from facejax.data.loader import stage_timings
  records = [{'image': _encode(_rgb(k, 60, 50)), 'label': 0} for k in range(4)]
  row = stage_timings(records, 32, n=8, rounds=1)
  assert row['image_size'] == 32
  assert set(row['ms_per_image']) == {'read', 'decode', 'crop_resize_flip', 'colour_jitter'}
  assert all(v > 0 for k, v in row['ms_per_image'].items() if k != 'read')
  assert row['images_per_s_one_thread'] == pytest.approx(1e3 / sum(row['ms_per_image'].values()), rel=1e-2)


def test_large_jpegs_decode_reduced_in_the_dct_domain():
  """reduce_to: a JPEG >= 2x that size decodes at the smallest n/8 scale keeping both sides >= reduce_to, close
  to the full decode resized; smaller JPEGs and other formats decode at full size, exactly."""
  from facejax.data.loader import Augment, ReadRecord
  smooth = np.asarray(Image.fromarray(_rgb(8, 40, 50)).resize((1000, 800), Image.BICUBIC))
  big = _encode(smooth, quality=95)
  reduced = decode_image(big, reduce_to=224)
  assert reduced.shape == (300, 375, 3)  # 3/8: 1/4 would give 200 < 224 rows
  want = np.asarray(Image.fromarray(decode_image(big)).resize((375, 300), Image.BILINEAR, reducing_gap=None))
  assert np.abs(reduced.astype(np.float32) - want).mean() < 2.0
  for data in (_encode(smooth[:400, :500]), _encode(smooth[:500, :500], 'PNG')):
    np.testing.assert_array_equal(decode_image(data, reduce_to=224), decode_image(data))
  assert Augment(224).source_side() == 273  # the smallest crop (75 % area, aspect 1/1.1) spans 224 pixels
  record = ReadRecord([{'image': big, 'label': 3}], Augment(224).source_side())(0)
  assert record['image'].shape == (300, 375, 3) and record['label'] == 3  # 300 rows >= 273


def test_folders_default_name_on_orl(tmp_path):
  """The default --name ('default') prepares like any other name (tfds once refused a custom config named like
  a registered one), and both read back through make_source side by side."""
  from facejax.data.folders import prepare_folders, prepared_dir
  orl, data_dir = shared_data('orl'), str(tmp_path / 'tfds')
  path, summary, decode_summary = prepare_folders(orl, data_dir)
  assert path == prepared_dir(data_dir) == prepared_dir(data_dir, 'default')
  assert decode_summary is not None and summary['decode']['converted_from'] == {'L': 400}
  assert summary['splits'] == {'train': {'identities': 36, 'images': 360}, 'val': {'identities': 4, 'images': 40}}
  train, val = make_source('folders', data_dir=data_dir), make_source('folders', data_dir=data_dir, split='val')
  assert len(train) == 360 and train.num_classes == 36 and len(val) == 40
  assert set(train.labels) == set(range(36)) and set(val.labels) == set(range(36, 40))
  for i in (0, 359):
    r = train[i]
    assert as_rgb_array(r['image']).shape == (112, 92, 3) and r['identity'].startswith('s')
  custom, _, _ = prepare_folders(orl, data_dir, name='orl_by_image', split_by='image', val_fraction=0.2)
  assert custom == prepared_dir(data_dir, 'orl_by_image')
  assert len(make_source('folders', data_dir=data_dir, name='orl_by_image')) == 320
  assert prepare_folders(orl, data_dir)[0] == path  # reused
  assert len(make_source('folders', data_dir=data_dir, name='default')) == 360


def test_prepare_data_cli_aligns_first(tmp_path, monkeypatch):
  """--align=hog: 3 ORL people -> chips under <data_dir>/aligned/<name>/ (not in the repository), prepared from
  there; photos without a face are skipped, printed and counted in --summary_json; the chips are made once."""
  pytest.importorskip('dlib', reason='alignment needs the optional [align] extra (dlib-bin)')
  from facejax.data import align, folders
  try:
    align.packaged_model_path(align.SHAPE_PREDICTOR)
  except (ImportError, FileNotFoundError) as e:
    pytest.skip(str(e))
  src, data_dir = tmp_path / 'orl3', tmp_path / 'tfds'
  for person in ('s1', 's2', 's3'):
    shutil.copytree(os.path.join(shared_data('orl'), person), src / person)
  out = subprocess.run([sys.executable, '-m', 'launch.prepare_data', '--dataset=folders', f'--manual_dir={src}',
                        f'--data_dir={data_dir}', '--align=hog', '--align_size=64', '--val_fraction=0',
                        f'--summary_json={tmp_path / "s.json"}'],
                       capture_output=True, text=True, cwd=ROOT, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  summary = json.load(open(tmp_path / 's.json'))
  a = summary['align']
  assert (a['detector'], a['upsample'], a['size'], a['padding']) == ('hog', 1, 64, 0.25)
  assert a['aligned'] + a['no_face'] + a['unreadable'] == 30 and a['aligned'] >= 20 and a['unreadable'] == 0
  assert f'skipped {a["no_face"]} without a face' in out.stdout
  chips_root = folders.aligned_dir(str(data_dir), 'default')
  assert a['chips'] == os.path.join(chips_root, 'chips') and sorted(os.listdir(a['chips'])) == ['s1', 's2', 's3']
  report = json.load(open(os.path.join(chips_root, folders.ALIGN_REPORT)))
  assert len(report['no_face']) == a['no_face'] and all(p.endswith('.pgm') for p in report['no_face'])
  assert summary['splits']['train']['images'] == a['aligned']
  train = make_source('folders', data_dir=str(data_dir))
  assert len(train) == a['aligned'] and train.num_classes == 3
  assert as_rgb_array(train[0]['image']).shape == (64, 64, 3)

  # Resumable: the done marker skips alignment; a prepared dataset is not reused for another --align.
  monkeypatch.setattr(align, 'align_folder', lambda *args, **kw: pytest.fail('aligned again'))
  marker = folders.align_once(str(src), chips_root, detector='hog', size=64)
  assert marker == a
  with pytest.raises(ValueError, match='already aligned with'):
    folders.align_once(str(src), chips_root, detector='hog', size=150)
  with pytest.raises(ValueError, match="already prepared with align='hog', asked for align='none'"):
    folders.prepare_folders(str(src), str(data_dir))
  assert folders.prepare_folders(str(src), str(data_dir), align='hog')[2] is None  # reused
