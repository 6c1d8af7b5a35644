"""Verify a trained run on LFW (View 2) or synthetic pairs and calibrate its threshold.

  python -m launch.evaluate --config=configs/lfw_eval.py --workdir=RUN \
      [--config.data.lfw_dir=data/lfw --config.data.pairs=data/lfw/pairs.txt]

Writes RUN/eval/<name>/{config.json, results.json, results.md, roc.png, threshold.json}; with
--config.calibrate=True also RUN/threshold.json, the default threshold of launch.verify; see
facejax/evaluation/evaluator.py. --workdir=M.jaxexport (launch.export) writes M.jaxexport.eval/<name>/ and
M.jaxexport.threshold.json. Models that ask for aligned faces (dlib's) get their LFW photos aligned
(config.align='auto'); a photo HOG finds no face in gets the no-face policy config.no_face ('detect': dlib's MMOD
CNN, then OpenCV's Haar cascades, then the center crop; 'lfw_box' for LFW's framing only; docs/alignment.md).
"""
import sys

from absl import app, flags
from launch import common
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Evaluation config file (configs/lfw_eval.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory of launch.train (model.json + checkpoints/) or an exported '
                    'model (.jaxexport).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  common.quiet_library_logs()
  from facejax.evaluation.evaluator import evaluate_run
  from facejax.runs import threshold_path
  try:
    out = evaluate_run(FLAGS.config, FLAGS.workdir)
  except (OSError, ValueError, ImportError) as e:
    sys.exit(f'launch.evaluate: error: {e}')
  with open(f'{out["out_dir"]}/results.md') as f:
    print(f.read(), end='')
  print(f'wrote {out["out_dir"]}/{{results.json,results.md,roc.png,threshold.json}}')
  name = out['calibration']['name']
  if out['calibrated']:
    print(f'calibrated threshold {out["calibration"]["threshold"]:.6g} on {name} -> '
          f'{threshold_path(FLAGS.workdir)} (launch.verify\'s default)')
  else:
    print(f'threshold {out["calibration"]["threshold"]:.6g} on {name} kept in {out["out_dir"]}/threshold.json: '
          f'launch.verify --pairs={name} uses it; --config.calibrate=True makes it the default')


if __name__ == '__main__':
  app.run(main)
