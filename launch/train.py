"""Train one task: python -m launch.train --config=configs/X.py[:arg] --workdir=W [--config.total_steps=N].

Re-running on W resumes from its latest checkpoint. Multi-host: pass --jax_coordinator (host:port),
--jax_num_processes and --jax_process_id on every host (calls jax.distributed.initialize)."""
from absl import app, flags
from ml_collections import config_flags

from launch import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, metrics, config).')
flags.mark_flags_as_required(['config', 'workdir'])
common.define_distributed_flags()


def main(argv):
  del argv
  common.quiet_library_logs()
  common.init_distributed()
  from facejax.train import train
  train(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
