"""Same person or not: python -m launch.verify --workdir=RUN IMG_A IMG_B

Prints the distance, the calibrated threshold and the pair set it came from (RUN/threshold.json, written by
launch.evaluate --config.calibrate=True, or with --pairs=NAME RUN/eval/NAME/threshold.json; for dlib's converted
net without any, dlib's published rule: raw descriptors closer than 0.6), how faces were prepared and, on the last
line, `same` or `different`. --workdir may be an exported model M.jaxexport (threshold: M.jaxexport.threshold.json).
Exit status 0 either way; 1 for errors (unreadable image, no face found, missing run or threshold).
"""
import sys

from absl import app, flags

from launch import common

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Run directory evaluated by launch.evaluate (holds threshold.json), a converted '
                    'dlib run, or an exported model (.jaxexport, with .jaxexport.threshold.json).')
flags.DEFINE_enum('align', 'auto', ['auto', 'on', 'off'],
                  'Face alignment (dlib 5-point chips); auto: when the model asks for it (dlib\'s converted net).')
flags.DEFINE_string('pairs', '', 'Use the threshold calibrated on this pair set (RUN/eval/<pairs>/threshold.json, '
                    'written by launch.evaluate); default: RUN/threshold.json (launch.evaluate '
                    '--config.calibrate=True).')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) != 3:
    raise app.UsageError(f'expected two image paths IMG_A IMG_B, got {len(argv) - 1} argument(s)')
  common.quiet_library_logs()
  from facejax.evaluation.threshold import format_verification, verify_pair
  try:
    result = verify_pair(FLAGS.workdir, argv[1], argv[2], align=FLAGS.align, pairs=FLAGS.pairs)
  except (OSError, ValueError, ImportError) as e:
    sys.exit(f'launch.verify: error: {e}')
  print(format_verification(result))


if __name__ == '__main__':
  app.run(main)
