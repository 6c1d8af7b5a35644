"""Face detectors on your photos: how many faces each finds, and how fast (dlib HOG, dlib's MMOD CNN, HOG then CNN).

  python -m launch.benchmark_align --images=../shared/data/lfw --limit=200 --json_out=runs/bench/align.json
  python -m launch.benchmark_align --images=faces.txt    # a file listing photo paths, one per line

Photos are taken evenly spaced over the sorted files (--limit). One process, one thread (dlib's detectors run on
one); the time is detection + the 5-point landmarks per photo. Prints one JSON record with the CPU it ran on.
"""
import json
import os
import sys

from absl import app, flags

from launch import common

FLAGS = flags.FLAGS
flags.DEFINE_string('images', None, 'A folder of photos (searched recursively), a glob, or a text file of paths.')
flags.DEFINE_integer('limit', 200, 'Photos to time, evenly spaced over the files found (0: all).')
flags.DEFINE_list('detectors', ['hog', 'cnn', 'hog+cnn'], 'Detectors: hog | cnn | hog+cnn.')
flags.DEFINE_integer('upsample', 1, 'Times each photo is doubled before detection.')
flags.DEFINE_string('json_out', '', 'Also write the JSON record here.')
flags.mark_flags_as_required(['images'])


def main(argv):
  del argv
  import numpy as np
  from facejax.data.align import DETECTORS, detector_benchmark
  from facejax.inference.embedder import find_images
  from facejax.inference.hardware import cpu_info
  unknown = [d for d in FLAGS.detectors if d not in DETECTORS]
  if unknown:
    raise app.UsageError(f'--detectors: unknown {unknown}, expected some of {DETECTORS}')
  if os.path.isfile(FLAGS.images) and FLAGS.images.endswith('.txt'):
    with open(FLAGS.images) as f:
      paths = [line.strip() for line in f if line.strip()]
  else:
    try:
      paths, _ = find_images(FLAGS.images)
    except FileNotFoundError as e:
      raise app.UsageError(str(e)) from None
  if FLAGS.limit and len(paths) > FLAGS.limit:
    paths = [paths[i] for i in np.linspace(0, len(paths) - 1, FLAGS.limit).round().astype(int)]
  try:
    records = detector_benchmark(paths, FLAGS.detectors, FLAGS.upsample)
  except ImportError as e:
    sys.exit(f'launch.benchmark_align: error: {e}')
  record = {'images': FLAGS.images, 'cpu': cpu_info(), 'detectors': records}
  common.write_json(FLAGS.json_out, record)
  print(json.dumps({**record, 'detectors': [{k: v for k, v in r.items() if k != 'missed'} | {
      'missed': r['missed'][:10]} for r in record['detectors']]}, indent=2))


if __name__ == '__main__':
  app.run(main)
