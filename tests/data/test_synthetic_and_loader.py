"""Synthetic data and grain loaders: determinism, exact resume, shapes, P x K balance, sharding."""
import json

import jax
import numpy as np
import pytest

from facejax.data import SyntheticFaces, SyntheticObjects, eval_batches, synthetic_pairs, train_loader
from facejax.data.loader import (Augment, AugmentOnDevice, canvas_side, center_crop, colour_jitter, device_augment,
                                   resize_box)
from facejax.data.synthetic import SourceImages


def test_synthetic_faces_records_are_deterministic_and_typed():
  src = SyntheticFaces(4, 3, image_size=32, seed=7)
  assert len(src) == 12 and src.num_classes == 4
  r = src[5]
  assert r['image'].shape == (32, 32, 3) and r['image'].dtype == np.uint8
  assert r['label'] == 1 and r['label'].dtype == np.int32 and r['index'] == 5 and isinstance(r['identity'], str)
  np.testing.assert_array_equal(r['image'], SyntheticFaces(4, 3, image_size=32, seed=7)[5]['image'])
  assert not np.array_equal(r['image'], SyntheticFaces(4, 3, image_size=32, seed=8)[5]['image'])
  np.testing.assert_array_equal(src.labels, [src[i]['label'] for i in range(len(src))])
  with pytest.raises(IndexError):
    src[12]


def test_identity_traits_depend_only_on_global_identity():
  full = SyntheticFaces(6, 2, image_size=32, seed=1)
  shifted = SyntheticFaces(3, 2, image_size=32, seed=1, identity_offset=3)
  np.testing.assert_array_equal(full[3 * 2 + 1]['image'], shifted[1]['image'])
  assert shifted[1]['label'] == 0 and shifted[1]['identity'] == full[7]['identity']


def test_difficulty_scales_nuisance():
  same = SyntheticFaces(2, 3, image_size=32, difficulty=0.0)
  np.testing.assert_array_equal(same[0]['image'], same[2]['image'])  # no nuisance: identical images
  hard = SyntheticFaces(2, 3, image_size=32, difficulty=1.0)
  assert not np.array_equal(hard[0]['image'], hard[2]['image'])


def test_synthetic_objects():
  src = SyntheticObjects(5, 2, image_size=24)
  assert len(src) == 10 and src.num_classes == 5
  r = src[9]
  assert r['image'].shape == (24, 24, 3) and r['label'] == 4
  np.testing.assert_array_equal(r['image'], SyntheticObjects(5, 2, image_size=24)[9]['image'])


def test_synthetic_pairs_follow_lfw_layout():
  pairs = synthetic_pairs(20, 3, image_size=16, num_folds=4, pairs_per_fold=6, identity_offset=100)
  assert len(pairs) == 24 and pairs.left.dtype == np.int32 and pairs.fold.dtype == np.int32
  np.testing.assert_array_equal(pairs.fold, np.repeat(np.arange(4), 6))
  np.testing.assert_array_equal(pairs.issame, np.tile([True] * 3 + [False] * 3, 4))
  ident = lambda k: pairs.names[k].split('/')[0]
  for l, r, same in zip(pairs.left, pairs.right, pairs.issame):
    assert l != r and (ident(l) == ident(r)) == same
  folds_of = {}
  for f, l, r in zip(pairs.fold, pairs.left, pairs.right):
    for k in (l, r):
      folds_of.setdefault(ident(k), set()).add(int(f))
  assert all(len(v) == 1 for v in folds_of.values())  # no identity spans two folds
  assert all(int(name.split('_')[1]) >= 100 for name in folds_of)  # disjoint from training ids [0, 100)
  assert pairs.images[0].shape == (16, 16, 3) and len(pairs.images) == len(pairs.names) == 60


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize('sampler', ['random', 'identity'])
def test_train_loader_shapes_determinism_and_exact_resume(sampler):
  src = SyntheticFaces(6, 4, image_size=24)
  kw = dict(global_batch_size=8, image_size=16, seed=3, num_devices=2, sampler=sampler, images_per_identity=2)
  it = train_loader(src, **kw)
  first = _take(it, 2)
  b = first[0]
  assert b['image'].shape == (2, 4, 16, 16, 3) and b['image'].dtype == np.uint8
  assert b['label'].shape == (2, 4) and b['label'].dtype == np.int32 and b['index'].dtype == np.int32
  np.testing.assert_array_equal(b['label'], src.labels[b['index']])
  state = json.loads(json.dumps(it.get_state()))
  rest = _take(it, 5)  # crosses an epoch boundary (24 records, 8 per batch)
  _assert_batches_equal(first, _take(train_loader(src, **kw), 2))
  resumed = train_loader(src, **kw)
  resumed.set_state(state)
  _assert_batches_equal(rest, _take(resumed, 5))
  other = next(train_loader(src, **{**kw, 'seed': 4}))
  assert not np.array_equal(other['image'], b['image'])


def _device_images(batch, size):
  """An augment_on='device' batch -> its images made as the trainer makes them, [B, size, size, 3]."""
  c = batch['image'].shape[-2]
  return np.asarray(jax.jit(device_augment, static_argnums=2)(
      batch['image'].reshape(-1, c, c, 3), batch['aug'].reshape(-1, 8), size))


# (image side, output): canvas padded (49 > 40), exactly the image (40), the image shrunk on the host (40 < 48).
@pytest.mark.parametrize('image_size,size,canvas,max_diff,mean_diff', [
    (40, 40, 49, 2, 0.3), (40, 32, 40, 2, 0.3), (48, 16, 40, 12, 1.0)])
def test_device_augment_matches_the_host_loader(image_size, size, canvas, max_diff, mean_diff):
  """augment_on='device' carries the host loader's draws (same records, crop boxes, flips, jitter) and makes the
  pixels in jit within 2 levels of Pillow's; only an image shrunk on the host to fit the canvas (interpolated
  twice) strays further. The device loader resumes exactly too."""
  src = SyntheticFaces(6, 4, image_size=image_size)
  kw = dict(global_batch_size=8, image_size=size, seed=3, num_devices=2)
  host = _take(train_loader(src, **kw), 3)
  it = train_loader(src, augment_on='device', **kw)
  dev = _take(it, 2)
  state = json.loads(json.dumps(it.get_state()))
  resumed = train_loader(src, augment_on='device', **kw)
  resumed.set_state(state)
  dev.append(next(resumed))
  _assert_batches_equal(dev[2:], [next(it)])
  for h, d in zip(host, dev):
    np.testing.assert_array_equal(h['index'], d['index'])
    assert d['image'].shape == (2, 4, canvas, canvas, 3) and d['aug'].shape == (2, 4, 8)
    diff = np.abs(_device_images(d, size).astype(int) - h['image'].reshape(8, size, size, 3))
    assert diff.max() <= max_diff and diff.mean() < mean_diff, (diff.max(), diff.mean())
  with pytest.raises(ValueError, match="augment_on='gpu': expected 'host' or 'device'"):
    train_loader(src, augment_on='gpu', **kw)


def test_device_augment_of_a_non_square_image_and_no_jitter():
  img = SyntheticFaces(2, 2, image_size=44)[1]['image'][7:37]  # 30 x 44: the canvas pads the rows
  for aug in (Augment(24), Augment(24, jitter=0.0)):
    dev = AugmentOnDevice(aug, canvas_side(aug, img))
    want = aug({'image': img}, np.random.default_rng(1))['image']
    r = dev({'image': img, 'label': 3}, np.random.default_rng(1))
    assert dev.canvas == 44 and r['image'].shape == (44, 44, 3) and r['label'] == 3
    np.testing.assert_array_equal(r['image'][30:], np.broadcast_to(img[-1], (14, 44, 3)))  # last row repeated
    got = np.asarray(device_augment(r['image'][None], r['aug'][None], 24))[0]
    assert np.abs(got.astype(int) - want).max() <= 2


def test_random_sampler_visits_every_record_once_per_epoch():
  src = SyntheticFaces(5, 4, image_size=8)
  it = train_loader(src, global_batch_size=4, image_size=8, seed=0, num_devices=1, augment=False)
  seen = np.concatenate([next(it)['index'].ravel() for _ in range(5)])
  assert sorted(seen) == list(range(20))
  nxt = np.concatenate([next(it)['index'].ravel() for _ in range(5)])
  assert sorted(nxt) == list(range(20)) and not np.array_equal(seen, nxt)  # new shuffle each epoch


def test_identity_sampler_is_balanced():
  src = SyntheticFaces(10, 5, image_size=8)
  it = train_loader(src, global_batch_size=12, image_size=8, seed=0, num_devices=2, sampler='identity',
                    images_per_identity=3, augment=False)
  for _ in range(6):
    b = next(it)
    labels, idx = b['label'].ravel(), b['index'].ravel()
    ids, counts = np.unique(labels, return_counts=True)
    assert len(ids) == 4 and set(counts) == {3}  # P=4 distinct identities x K=3 images
    assert len(set(idx)) == 12  # K images drawn without replacement (each identity has 5)
    np.testing.assert_array_equal(labels.reshape(4, 3), np.repeat(labels.reshape(4, 3)[:, :1], 3, axis=1))
  with pytest.raises(ValueError, match='divisible by images_per_identity'):
    train_loader(src, global_batch_size=10, image_size=8, seed=0, num_devices=1, sampler='identity',
                 images_per_identity=3)


def test_process_sharding_is_disjoint():
  src = SyntheticFaces(8, 4, image_size=8)
  kw = dict(global_batch_size=8, image_size=8, seed=5, num_devices=1, augment=False)
  p0 = train_loader(src, process_index=0, process_count=2, **kw)
  p1 = train_loader(src, process_index=1, process_count=2, **kw)
  i0 = np.concatenate([next(p0)['index'].ravel() for _ in range(4)])
  i1 = np.concatenate([next(p1)['index'].ravel() for _ in range(4)])
  assert next(train_loader(src, process_index=0, process_count=2, **kw))['image'].shape[1] == 4
  assert not set(i0) & set(i1) and sorted(np.concatenate([i0, i1])) == list(range(32))


@pytest.mark.parametrize('sampler', ['random', 'identity'])
def test_augmented_batches_do_not_depend_on_the_process_count(sampler):
  """2 processes' shares of a step = the 1-process batch of that step, augmented pixels included: the crop, flip
  and jitter come from the record's global stream position."""
  src = SyntheticFaces(12, 6, image_size=40)
  kw = dict(image_size=32, seed=3, num_devices=1, sampler=sampler, images_per_identity=2)
  one = train_loader(src, global_batch_size=8, **kw)
  shares = [train_loader(src, global_batch_size=8, process_index=i, process_count=2, **kw) for i in range(2)]

  def flat(b):
    return sorted((int(i), x.tobytes()) for i, x in zip(b['index'].ravel(), b['image'].reshape(-1, 32, 32, 3)))
  for _ in range(6):
    assert flat(next(one)) == sorted(sum((flat(next(s)) for s in shares), []))


def test_no_augment_is_center_crop_and_eval_batches():
  src = SyntheticFaces(3, 2, image_size=20)
  b = next(train_loader(src, global_batch_size=2, image_size=12, seed=0, num_devices=1, augment=False))
  np.testing.assert_array_equal(b['image'][0, 0], center_crop(src[int(b['index'][0, 0])]['image'], 12))
  batches = list(eval_batches(SourceImages(src), batch_size=4, image_size=12))
  assert [x.shape for x in batches] == [(4, 12, 12, 3), (2, 12, 12, 3)]
  np.testing.assert_array_equal(batches[1][1], center_crop(src[5]['image'], 12))
  rect = np.arange(10 * 6 * 3, dtype=np.uint8).reshape(10, 6, 3)
  np.testing.assert_array_equal(center_crop(rect, 6), rect[2:8])


def test_worker_processes_give_the_same_batches_and_resume():
  src = SyntheticFaces(6, 4, image_size=16)
  kw = dict(global_batch_size=4, image_size=16, seed=2, num_devices=1)
  ref = _take(train_loader(src, **kw), 4)
  it = train_loader(src, num_workers=1, **kw)
  _assert_batches_equal(ref[:2], _take(it, 2))
  state = json.loads(json.dumps(it.get_state()))
  resumed = train_loader(src, num_workers=1, **kw)
  resumed.set_state(state)
  _assert_batches_equal(ref[2:], _take(resumed, 2))
  it.close(), resumed.close()


def test_make_source_by_name_and_one_pair_set_schema():
  from facejax.data import make_source
  from facejax.data.pairs import load_pairs, pairs_config
  assert len(make_source('synthetic', num_identities=3, images_per_identity=2)) == 6
  assert make_source('synthetic_objects', num_classes=4, images_per_class=2).num_classes == 4
  with pytest.raises(ValueError, match="unknown data source 'nope'; expected one of: synthetic"):
    make_source('nope')
  cfg = pairs_config(num_identities=20, images_per_identity=2, num_folds=10, pairs_per_fold=4)
  pairs, described = load_pairs(cfg, 24)  # image_size absent: the model's input size
  assert len(pairs) == 40 and np.asarray(pairs.images[0]).shape == (24, 24, 3)
  assert described['source'] == 'synthetic_pairs' and described['image_size'] == 24
  cfg.source = 'nope'
  with pytest.raises(ValueError, match=r"config\.val\.source='nope': expected one of \('auto', 'lfw'"):
    load_pairs(cfg, 24, 'config.val')
  cfg.source = 'lfw'
  with pytest.raises(ValueError, match=r'config\.val\.source=lfw needs config\.val\.lfw_dir'):
    load_pairs(cfg, 24, 'config.val')


def test_augment_parts_match_references():
  """Flip mirrors the crop exactly; the colour jitter is the identity at b = c = s = 1 and otherwise the float64
  affine map within one level; Augment is a pure function of (record, rng)."""
  img = SyntheticFaces(2, 2, image_size=48, seed=3)[1]['image']
  box = (3.5, 2.25, 40.75, 38.0)
  np.testing.assert_array_equal(resize_box(img, box, 24, flip=True), resize_box(img, box, 24)[:, ::-1])
  np.testing.assert_array_equal(colour_jitter(img, 1.0, 1.0, 1.0), img)
  b, c, s = 1.15, 0.85, 1.2
  x = img.astype(np.float64)
  grey = x @ np.array([0.299, 0.587, 0.114])
  want = np.clip(np.round(c * s * x + (c * (1 - s) * grey + (b - c) * grey.mean())[..., None]), 0, 255)
  got = colour_jitter(img, b, c, s)
  assert got.dtype == np.uint8 and np.abs(got - want).max() <= 1 and (got == want).mean() > 0.99
  aug = Augment(24)
  one, two = (aug({'image': img, 'label': 1}, np.random.default_rng(5)) for _ in range(2))
  np.testing.assert_array_equal(one['image'], two['image'])
  assert one['image'].shape == (24, 24, 3) and one['label'] == 1
