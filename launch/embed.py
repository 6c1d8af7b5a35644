"""Embed image files with a trained run: python -m launch.embed --workdir=RUN --images=DIR_OR_GLOB --out=E.npz

--workdir may be a run directory or an exported model (M.jaxexport). Writes names [N] (paths relative to the
directory / the glob's common folder), embeddings float32 [N, D] (L2-normalised), skipped [M] (unreadable files,
and photos without a face when aligning: skipped and counted, never fatal) and meta (JSON string).
"""
import sys

from absl import app, flags

from launch import common

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Run directory of launch.train (model.json + checkpoints/) or an exported '
                    'model (.jaxexport).')
flags.DEFINE_string('images', None, 'A directory (searched recursively) or a glob pattern, e.g. "faces/**/*.jpg".')
flags.DEFINE_string('out', 'embeddings.npz', 'Output .npz path.')
flags.DEFINE_enum('flip', 'auto', ['auto', 'none', 'sum', 'concat'],
                  'Flip test-time augmentation; auto: the run\'s calibrated mode (threshold.json), else none.')
flags.DEFINE_enum('align', 'auto', ['auto', 'on', 'off'],
                  'Face alignment (dlib 5-point chips); auto: when the model asks for it (dlib\'s converted net).')
flags.DEFINE_integer('batch_size', 64, 'Images per compiled call.')
flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.mark_flags_as_required(['workdir', 'images'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  common.quiet_library_logs()
  from facejax.inference.embedder import embed_paths
  try:
    result = embed_paths(FLAGS.workdir, FLAGS.images, FLAGS.out, flip=FLAGS.flip, align=FLAGS.align,
                         batch_size=FLAGS.batch_size, progress=FLAGS.progress)
  except (OSError, ValueError, ImportError) as e:
    sys.exit(f'launch.embed: error: {e}')
  print(result.summary.format())
  print(f'wrote {FLAGS.out}: {len(result.names)} embeddings of dimension {result.embeddings.shape[1]}, '
        f'{len(result.skipped)} skipped')


if __name__ == '__main__':
  app.run(main)
