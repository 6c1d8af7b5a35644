"""Accuracy against images seen: every kept checkpoint of a training run verified on a pair set.

  python -m launch.learning_curve --config=configs/lfw_eval.py:lfw --workdir=RUN \\
      --config.data.lfw_dir=DATA/lfw                                   # LFW View 2
  python -m launch.learning_curve --config=configs/lfw_eval.py:lfw --workdir=RUN --config.name=holdout \\
      --config.data.lfw_dir=RUNS/data/holdout                          # a pipeline's held-out CelebA pairs

Train with --config.keep_checkpoints=0 to keep every checkpoint (the default keeps the last 2). Writes
RUN/eval/<name>/step_<step>/ per checkpoint (reused when it is there) and RUN/eval/<name>/learning_curve.
{json,md,png}; see facejax/evaluation/learning_curve.py.
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from launch import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Evaluation config file (configs/lfw_eval.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory of launch.train (model.json + checkpoints/<step>/).')
flags.DEFINE_list('steps', [], 'Checkpoint steps to evaluate (default: every one kept).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  common.quiet_library_logs()
  from facejax.evaluation.learning_curve import curve_markdown, learning_curve
  try:
    steps = [int(s) for s in FLAGS.steps]
  except ValueError:
    raise app.UsageError(f'--steps={",".join(FLAGS.steps)}: expected checkpoint steps (integers)') from None
  try:
    curve = learning_curve(FLAGS.config, FLAGS.workdir, steps or None)
  except (OSError, ValueError, ImportError) as e:
    sys.exit(f'launch.learning_curve: error: {e}')
  print(curve_markdown(curve), end='')


if __name__ == '__main__':
  app.run(main)
