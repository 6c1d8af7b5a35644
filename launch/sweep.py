"""Run a sweep of pipeline variants, collate one table and the Pareto / loss plots (facejax/sweep.py,
facejax/sweep_report.py).

  python -m launch.sweep --config=configs/sweeps/student_width.py --workdir=runs/student_width [--print_commands]

Writes <workdir>/<variant>/ (a normal pipeline run + log.txt per variant), <workdir>/sweep.{md,json},
pareto.png and loss_curves.png.
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from launch import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Sweep config file (configs/sweeps/<name>.py).')
flags.DEFINE_string('workdir', None, 'Sweep directory: one pipeline run per variant, plus the collated results.')
flags.DEFINE_bool('print_commands', False, 'Print one launch.pipeline command per variant (in order) and exit.')
flags.DEFINE_bool('rerun_finished', False, 'Re-run variants that already finished (their stages resume; the '
                  'evaluation and benchmark are redone).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  common.quiet_library_logs()
  from facejax import sweep
  try:
    if FLAGS.print_commands:
      print(sweep.command_lines(FLAGS.config, FLAGS.workdir))
    else:
      sweep.run_sweep(FLAGS.config, FLAGS.workdir, rerun_finished=FLAGS.rerun_finished)
  except (OSError, ValueError) as e:
    sys.exit(f'launch.sweep: error: {e}')


if __name__ == '__main__':
  app.run(main)
