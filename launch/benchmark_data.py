"""Loader throughput: decode + augment + batch, images/s, and the per-image cost of each stage, as JSON.

  python -m launch.benchmark_data [--data_dir=... --name=...] [--sizes=112,224] [--workers=0,2]
      [--augment_on=host,device]

Without --name it writes a temporary identity-folder tree of 250x250 JPEG faces (LFW-sized; --side=1000 for large
photos, which decode at a reduced DCT scale), prepares it as ArrayRecord and reads it back through TfdsSource ->
train_loader, so the figure includes JPEG decoding.
'stages' times the loader's steps one by one on one thread (record read, decode, crop + resize + flip, colour
jitter): where a worker's time goes. --augment_on=device times the host's share of data.augment_on='device'
(read, decode, draws, canvas): the pixels are then made on the accelerator.
"""
import itertools
import json
import os
import tempfile
import time

from absl import app, flags

from launch.common import write_json

FLAGS = flags.FLAGS
flags.DEFINE_string('data_dir', None, 'TFDS data dir of a dataset prepared by launch.prepare_data.')
flags.DEFINE_string('name', None, 'Prepared folders dataset name; default: a temporary synthetic JPEG tree.')
flags.DEFINE_list('sizes', ['112', '224'], 'Output image sizes.')
flags.DEFINE_list('workers', ['0', '2'], 'grain worker processes (0: threads in this process).')
flags.DEFINE_list('augment_on', ['host'], "Where the augmentation's pixels are made: host and/or device.")
flags.DEFINE_integer('threads', 2, 'grain read threads (per process).')
flags.DEFINE_integer('batch_size', 64, 'Global batch size.')
flags.DEFINE_integer('batches', 8, 'Timed batches per setting (after warm-up).')
flags.DEFINE_integer('identities', 32, 'Temporary tree: identities.')
flags.DEFINE_integer('images_per_identity', 8, 'Temporary tree: images per identity.')
flags.DEFINE_integer('side', 250, 'Temporary tree: JPEG side in pixels.')
flags.DEFINE_string('json_out', None, 'Optional path for the JSON results.')


def measure(source, *, image_size, batch_size, num_workers, num_threads, batches, augment_on='host'):
  """-> images/s of train_loader (augment=True) over `batches` batches after two warm-up batches."""
  from facejax.data import train_loader
  it = train_loader(source, global_batch_size=batch_size, image_size=image_size, seed=0, num_devices=1,
                    num_threads=num_threads, num_workers=num_workers, augment_on=augment_on)
  next(it), next(it)  # start-up: worker processes, first reads
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  seconds = time.perf_counter() - start
  if hasattr(it, 'close'):
    it.close()  # stop worker processes before the next setting
  return batches * batch_size / seconds


def main(argv):
  del argv
  from facejax.data import make_source
  from facejax.data.loader import stage_timings
  with tempfile.TemporaryDirectory() as tmp:
    if FLAGS.name:
      source = make_source('folders', data_dir=FLAGS.data_dir, name=FLAGS.name, split='train')
      dataset = f'{FLAGS.data_dir}:{FLAGS.name}'
    else:
      from facejax.data.folders import prepare_folders
      from facejax.data.synthetic import write_identity_folders
      write_identity_folders(os.path.join(tmp, 'faces'), FLAGS.identities, FLAGS.images_per_identity, FLAGS.side,
                             processes=1)
      prepare_folders(os.path.join(tmp, 'faces'), os.path.join(tmp, 'tfds'), name='bench', val_fraction=0)
      source = make_source('folders', data_dir=os.path.join(tmp, 'tfds'), name='bench', split='train')
      dataset = f'temporary tree: {len(source)} JPEG {FLAGS.side}x{FLAGS.side} synthetic faces'
    stages = [stage_timings(source, int(size)) for size in FLAGS.sizes]
    for row in stages:
      print(json.dumps(row), flush=True)
    results = []
    for size, on, workers in itertools.product(map(int, FLAGS.sizes), FLAGS.augment_on, map(int, FLAGS.workers)):
      ips = measure(source, image_size=size, batch_size=FLAGS.batch_size, num_workers=workers,
                    num_threads=FLAGS.threads, batches=FLAGS.batches, augment_on=on)
      results.append({'image_size': size, 'augment_on': on, 'num_workers': workers, 'num_threads': FLAGS.threads,
                      'batch_size': FLAGS.batch_size, 'images_per_s': round(ips, 1)})
      print(json.dumps(results[-1]), flush=True)
  report = {'dataset': dataset, 'pipeline': 'ArrayRecord read + JPEG decode + random-resized-crop/flip/jitter + '
            'batch', 'cpu_count': os.cpu_count(), 'stages': stages, 'results': results}
  print(json.dumps(report, indent=2))
  write_json(FLAGS.json_out, report)


if __name__ == '__main__':
  app.run(main)
