"""A contact sheet of no-face chips: what a no-face policy makes of the photos HOG finds no face in.

  python -m launch.contact_sheet --misses=runs/no_face/misses.json --out=runs/no_face/sheet.png
  python -m launch.contact_sheet --misses=hard.txt --policy=haar --only=haar_profile --out=profiles.png

--misses: a JSON object {set name: [photo paths]} or a text file of paths. Each tile: the photo with the box the
policy used (green: a second detector's, as no_face.BOX_TO_HOG moves it; red: the fallback's) and dlib's 5
landmarks, beside the chip, labelled with what found the face and, where the landmark chip is zoomed against the
box (profiles), by how much (facejax.data.no_face.contact_sheet).
"""
import json
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string('misses', None, 'JSON {set: [paths]} or a text file of photo paths HOG finds no face in.')
flags.DEFINE_string('out', None, 'PNG to write.')
flags.DEFINE_string('policy', 'detect', 'No-face policy (facejax.data.no_face.POLICIES).')
flags.DEFINE_list('sets', [], 'Only these sets of a JSON --misses (default: all).')
flags.DEFINE_integer('limit', 24, 'Photos per set, evenly spaced over its list (0: all).')
flags.DEFINE_integer('columns', 6, 'Photo + chip pairs per row.')
flags.DEFINE_integer('upsample', 1, 'Times each photo is doubled before detection (the MMOD CNN).')
flags.mark_flags_as_required(['misses', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  import numpy as np
  from facejax.data.no_face import check_policy, contact_sheet, count_found_by
  try:
    check_policy(FLAGS.policy, '--policy')
    with open(FLAGS.misses) as f:
      sets = json.load(f) if FLAGS.misses.endswith('.json') else {'photos': [s.strip() for s in f if s.strip()]}
  except (OSError, ValueError) as e:
    raise app.UsageError(f'{e}') from None
  paths = []
  for name, listed in sets.items():
    if FLAGS.sets and name not in FLAGS.sets:
      continue
    if FLAGS.limit and len(listed) > FLAGS.limit:
      listed = [listed[i] for i in np.linspace(0, len(listed) - 1, FLAGS.limit).round().astype(int)]
    paths += listed
  if not paths:
    raise app.UsageError(f'--misses={FLAGS.misses} --sets={FLAGS.sets}: no photos')
  try:
    sheet, kinds = contact_sheet(paths, FLAGS.policy, FLAGS.upsample, FLAGS.columns)
  except ImportError as e:
    sys.exit(f'launch.contact_sheet: error: {e}')
  sheet.save(FLAGS.out)
  print(f'wrote {FLAGS.out}: {len(paths)} photos, found by {count_found_by(kinds)}')


if __name__ == '__main__':
  app.run(main)
