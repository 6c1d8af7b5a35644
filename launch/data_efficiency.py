"""The data-efficiency curve: LFW View 2 accuracy against training identities, ImageNet vs random initialisation.

  python -m launch.data_efficiency --config=configs/real_transfer.py --workdir=runs/curve
  python -m launch.data_efficiency --config=configs/real_transfer.py:teacher=efficientnet_lite0 \\
      --workdir=runs/curve_lite0 --identities=100,300 --steps=200

Writes <workdir>/data_efficiency.{json,md,png} and one pipeline run per point (<workdir>/identities_<N>/); a killed
curve resumes (facejax.data_efficiency).
"""
from absl import app, flags
from ml_collections import config_flags

from launch import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'A real-faces lineage config (configs/real_transfer.py[:ARGS]).',
                                lock_config=False)
flags.DEFINE_string('workdir', None, 'Output directory: one pipeline run per point plus data_efficiency.*.')
flags.DEFINE_list('identities', ['100', '300', '1000', '0'], 'Training identities per point (0: all of them).')
flags.DEFINE_integer('steps', 300, 'Training steps of each stage at every point (0: the config\'s own).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  common.quiet_library_logs()
  from facejax.data_efficiency import run_curve
  try:
    identities = [int(n) for n in FLAGS.identities]
  except ValueError:
    raise app.UsageError(f'--identities={",".join(FLAGS.identities)}: expected integers (0: all)') from None
  run_curve(FLAGS.config, FLAGS.workdir, identities, FLAGS.steps)


if __name__ == '__main__':
  app.run(main)
