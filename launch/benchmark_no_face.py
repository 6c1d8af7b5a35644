"""The no-face policies on the photos HOG misses: faces found by a second detector, and ms per photo.

  python -m launch.benchmark_no_face --misses=runs/no_face/misses.json --json_out=runs/no_face/policies.json
  python -m launch.benchmark_no_face --misses=hard.txt     # a text file of photo paths, one per line

--misses: a JSON object {set name: [photo paths]} (e.g. the no-face lists of launch.evaluate's results.json or of
an alignment report) or a text file of paths (one set). Every second detector runs once on every photo, one
process, one thread; a policy's time is that of the detectors it tries until one finds a face, plus landmarks and
the chip (facejax.data.no_face.policy_benchmark). Prints a markdown table and the CPU it ran on.
"""
import json
import sys

from absl import app, flags

from launch import common

FLAGS = flags.FLAGS
flags.DEFINE_string('misses', None, 'JSON {set: [paths]} or a text file of photo paths HOG finds no face in.')
flags.DEFINE_list('policies', ['detect', 'mmod', 'haar', 'center', 'lfw_box'], 'No-face policies to measure.')
flags.DEFINE_integer('upsample', 1, 'Times each photo is doubled before detection (the MMOD CNN).')
flags.DEFINE_string('json_out', '', 'Also write the records here.')
flags.mark_flags_as_required(['misses'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from facejax.data.no_face import NO_FACE, policy_benchmark
  from facejax.inference.hardware import cpu_info
  unknown = [p for p in FLAGS.policies if p not in NO_FACE]
  if unknown:
    raise app.UsageError(f'--policies: unknown {unknown}, expected some of {NO_FACE}')
  try:
    with open(FLAGS.misses) as f:
      sets = json.load(f) if FLAGS.misses.endswith('.json') else {'photos': [s.strip() for s in f if s.strip()]}
  except (OSError, ValueError) as e:
    raise app.UsageError(f'--misses={FLAGS.misses}: {e}') from None
  records = {}
  try:
    for name, paths in sets.items():
      records[name] = policy_benchmark(paths, FLAGS.policies, FLAGS.upsample)
  except ImportError as e:
    sys.exit(f'launch.benchmark_no_face: error: {e}')
  print('| policy | ' + ' | '.join(f'{n}: found / photos | {n}: ms/photo' for n in records) + ' |')
  print('|---|' + '---:|---:|' * len(records))
  for k, policy in enumerate(FLAGS.policies):
    print(f'| {policy} | ' + ' | '.join(f'{r[k]["found"]} / {r[k]["images"]} | {r[k]["ms_per_photo"]:.0f}'
                                       for r in records.values()) + ' |')
  for name, recs in records.items():
    for r in recs:
      print(f'{name} {r["policy"]}: found by {r["found_by"]}')
  out = {'cpu': cpu_info(), 'upsample': FLAGS.upsample, 'sets': records}
  if FLAGS.json_out:
    common.write_json(FLAGS.json_out, out)
    print(f'wrote {FLAGS.json_out}')


if __name__ == '__main__':
  app.run(main)
