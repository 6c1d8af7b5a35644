"""The paper end to end: python -m launch.pipeline --config=configs/demo.py --workdir=runs/demo."""
from absl import app, flags
from ml_collections import config_flags

from launch import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Pipeline config file (e.g. configs/demo.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Output directory: one sub-run per stage plus results.{json,md} and roc.png.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  common.quiet_library_logs()
  from facejax.pipeline import run_pipeline
  run_pipeline(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
