"""Prepare a dataset once as TFDS ArrayRecord (no TensorFlow); training configs then name it.

  python -m launch.prepare_data --dataset=folders --manual_dir=/data/casia --data_dir=~/tensorflow_datasets \
      --name=casia [--split_by=identity|image --val_fraction=0.1 --min_images=2]
      [--align=hog|cnn|hog+cnn --align_size=150 --align_padding=0.25]
  python -m launch.prepare_data --dataset=synthetic --data_dir=... --num_identities=500 --images_per_identity=20

--align first aligns the photos (dlib, the optional [align] extra) into <data_dir>/aligned/<name>/chips once
(re-running reuses them) and prepares the chips; photos without a face are skipped and counted.

Prints the summary (identities, images per split, converted and skipped files by reason) and writes it as
JSON with --summary_json.
"""
import json
import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum('dataset', 'folders', ['folders', 'synthetic'], 'What to prepare.')
flags.DEFINE_string('data_dir', os.path.expanduser('~/tensorflow_datasets'), 'TFDS data dir to write into.')
flags.DEFINE_string('manual_dir', None, 'folders: the identity-folder root (root/<identity>/<image>).')
flags.DEFINE_string('name', 'default', 'folders: name of the prepared dataset (its TFDS config name).')
flags.DEFINE_enum('split_by', 'identity', ['identity', 'image'], 'folders: how train/val are separated.')
flags.DEFINE_float('val_fraction', 0.1, 'folders: fraction of identities (or of each identity\'s images) in val.')
flags.DEFINE_integer('min_images', 2, 'folders: drop identities with fewer usable images.')
flags.DEFINE_integer('min_side', 16, 'folders: skip images with a side shorter than this (pixels).')
flags.DEFINE_integer('max_pixels', 64_000_000, 'folders: skip images above this many pixels (bomb guard).')
flags.DEFINE_enum('align', 'none', ['none', 'hog', 'cnn', 'hog+cnn'],
                  'folders: align faces first with this dlib detector (hog+cnn: the CNN only where HOG finds none).')
flags.DEFINE_integer('align_upsample', 1, 'folders --align: times photos are doubled before detection.')
flags.DEFINE_integer('align_size', 150, 'folders --align: chip side (pixels).')
flags.DEFINE_float('align_padding', 0.25, 'folders --align: chip padding around the landmarks (dlib get_face_chip).')
flags.DEFINE_integer('seed', 0, 'Split seed (folders) / generator seed (synthetic).')
flags.DEFINE_integer('num_identities', 100, 'synthetic: training identities.')
flags.DEFINE_integer('num_val_identities', 0, 'synthetic: extra disjoint identities in a val split.')
flags.DEFINE_integer('images_per_identity', 10, 'synthetic: images per identity.')
flags.DEFINE_integer('image_size', 64, 'synthetic: resolution.')
flags.DEFINE_float('difficulty', 1.0, 'synthetic: nuisance scale.')
flags.DEFINE_integer('identity_offset', 0, 'synthetic: first identity id.')
flags.DEFINE_string('summary_json', None, 'Optional path to write the summary as JSON.')


def main(argv):
  del argv
  if FLAGS.dataset == 'folders':
    if not FLAGS.manual_dir:
      raise app.UsageError('--dataset=folders needs --manual_dir=<root> holding <root>/<identity>/<image>.jpg')
    from facejax.data.folders import prepare_folders
    try:
      path, summary, decode_summary = prepare_folders(
          FLAGS.manual_dir, FLAGS.data_dir, name=FLAGS.name, split_by=FLAGS.split_by,
          val_fraction=FLAGS.val_fraction, min_images=FLAGS.min_images, min_side=FLAGS.min_side,
          max_pixels=FLAGS.max_pixels, seed=FLAGS.seed, align=FLAGS.align, align_upsample=FLAGS.align_upsample,
          align_size=FLAGS.align_size, align_padding=FLAGS.align_padding)
    except (ImportError, OSError, ValueError) as e:  # the message names the input and what was expected
      sys.exit(f'prepare_data: {e}')
    if decode_summary is None:
      print(f'already prepared: {path} (delete it to prepare again); stored summary:')
    else:
      print(decode_summary.format())
    s = summary or {}
    if s.get('align'):
      a = s['align']
      print(f'aligned ({a["detector"]}, upsample {a["upsample"]}, {a["size"]} px): {a.get("aligned")} photos; '
            f'skipped {a.get("no_face")} without a face, {a.get("unreadable")} unreadable (listed in '
            f'{a.get("report")}); chips in {a.get("chips")}')
    print(f'identities: {s.get("identity_folders")} folders, {s.get("identities_kept")} kept, '
          f'{s.get("identities_below_min_images")} below --min_images={FLAGS.min_images} '
          f'({s.get("images_below_min_images")} images), {s.get("files_ignored")} non-image files ignored')
    for split, c in (s.get('splits') or {}).items():
      print(f'  {split}: {c["identities"]} identities, {c["images"]} images')
    print(f'use: make_source("folders", data_dir={FLAGS.data_dir!r}, name={FLAGS.name!r}, split="train")')
  else:
    from facejax.data.synthetic_tfds import prepare_synthetic
    from facejax.data.tfds_source import TfdsSource
    path = prepare_synthetic(FLAGS.data_dir, num_identities=FLAGS.num_identities,
                             images_per_identity=FLAGS.images_per_identity, image_size=FLAGS.image_size,
                             difficulty=FLAGS.difficulty, seed=FLAGS.seed, identity_offset=FLAGS.identity_offset,
                             num_val_identities=FLAGS.num_val_identities)
    summary = TfdsSource(path).summary
    for split, c in summary['splits'].items():
      print(f'  {split}: {c["identities"]} identities, {c["images"]} images')
    print(f'use: make_source("tfds", path={path!r}, split="train")')
  print(f'prepared: {path}')
  if FLAGS.summary_json:
    with open(FLAGS.summary_json, 'w') as f:
      json.dump({'path': path, **(summary or {})}, f, indent=2)


if __name__ == '__main__':
  app.run(main)
