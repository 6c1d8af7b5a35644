"""Embed image files with a trained run: python -m launch.embed --workdir=RUN --images=DIR_OR_GLOB --out=E.npz

Writes names [N] (paths relative to the directory / the glob's common folder), embeddings float32 [N, D]
(L2-normalised), skipped [M] (unreadable files: skipped and counted, never fatal) and meta (JSON string).
"""
import sys

from absl import app, flags

from launch import common

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Run directory of launch.train (model.json + checkpoints/).')
flags.DEFINE_string('images', None, 'A directory (searched recursively) or a glob pattern, e.g. "faces/**/*.jpg".')
flags.DEFINE_string('out', 'embeddings.npz', 'Output .npz path.')
flags.DEFINE_enum('flip', 'auto', ['auto', 'none', 'sum', 'concat'],
                  'Flip test-time augmentation; auto: the run\'s calibrated mode (threshold.json), else none.')
flags.DEFINE_integer('batch_size', 64, 'Images per compiled call.')
flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.mark_flags_as_required(['workdir', 'images'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  common.quiet_library_logs()
  from facejax.evaluation import cli
  try:
    result = cli.embed_paths(FLAGS.workdir, FLAGS.images, FLAGS.out, flip=FLAGS.flip, batch_size=FLAGS.batch_size,
                             progress=FLAGS.progress)
  except (OSError, ValueError) as e:
    sys.exit(f'launch.embed: error: {e}')
  print(result.summary.format())
  print(f'wrote {FLAGS.out}: {len(result.names)} embeddings of dimension {result.embeddings.shape[1]}, '
        f'{len(result.skipped)} skipped')


if __name__ == '__main__':
  app.run(main)
