"""CPU/GPU inference benchmark of the embedding network (AOT-compiled; compile time reported separately).

  python -m launch.benchmark --model=resnet50 --batch_size=1 --image_size=224 [--optimize] --json_out=PATH
  python -m launch.benchmark --all [--batch_sizes=1,8] --json_out=runs/bench/models.json   # + models.md table
                                   # (every registry model: plain, optimized float32, bf16, int8,
                                   #  float32 with oneDNN convs where built)
  python -m launch.benchmark --workdir=RUN [--optimize]                                   # a trained run

XLA flags act per process: set them in the environment (`XLA_FLAGS=... python -m launch.benchmark ...`); the
JSON records them.
"""
import json
import os

from absl import app, flags

from launch import common

FLAGS = flags.FLAGS
flags.DEFINE_string('model', None, 'Registry model name.')
flags.DEFINE_string('workdir', None, 'Benchmark the trained model of this run directory instead of --model.')
flags.DEFINE_bool('all', False, 'Every registry model at its default size; also writes a markdown table.')
flags.DEFINE_integer('batch_size', 1, 'Batch size.')
flags.DEFINE_list('batch_sizes', ['1', '8'], '--all: batch sizes to time.')
flags.DEFINE_integer('image_size', None, 'Input size (default: the model\'s).')
flags.DEFINE_integer('embed_dim', 128, 'Embedding size of the head (registry models).')
flags.DEFINE_bool('optimize', False, 'Time the optimize_for_inference forward instead of the plain flax apply.')
flags.DEFINE_enum('conv', 'auto', ['auto', 'im2col', 'winograd', 'xla', 'onednn'],
                  '--optimize: conv lowering (onednn: the oneDNN custom call, float32 or --dtype=bfloat16).')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16', 'int8'], '--optimize: dtype policy.')
flags.DEFINE_enum('weights', 'const', ['const', 'args'], '--optimize: weights as constants or arguments.')
flags.DEFINE_integer('runs', 15, 'Timed runs (median and p90 reported).')
flags.DEFINE_integer('warmup', 3, 'Untimed runs after compilation.')
flags.DEFINE_string('json_out', None, 'Write the JSON record(s) here.')


def _options():
  return {'conv': FLAGS.conv, 'dtype': FLAGS.dtype, 'weights': FLAGS.weights} if FLAGS.optimize else False


def main(argv):
  del argv
  from facejax.inference.benchmark import benchmark_all, benchmark_model, markdown_table
  timing = dict(warmup=FLAGS.warmup, runs=FLAGS.runs)
  if FLAGS.all:
    records = benchmark_all([int(b) for b in FLAGS.batch_sizes], embed_dim=FLAGS.embed_dim, **timing,
                            log=lambda r: print(json.dumps(r), flush=True))
    table = markdown_table(records)
    print(table)
    common.write_json(FLAGS.json_out, records)
    if FLAGS.json_out:
      with open(os.path.splitext(FLAGS.json_out)[0] + '.md', 'w') as f:
        f.write(table + '\n')
    return
  if FLAGS.workdir:
    from facejax.runs import load_run
    model, variables, info = load_run(FLAGS.workdir)
    record = benchmark_model(model, variables, batch_size=FLAGS.batch_size,
                             image_size=FLAGS.image_size or int(info['image_size']), optimize=_options(), **timing)
    record['model'] = info['name']
    record['workdir'] = FLAGS.workdir
  elif FLAGS.model:
    record = benchmark_model(FLAGS.model, batch_size=FLAGS.batch_size, image_size=FLAGS.image_size,
                             optimize=_options(), embed_dim=FLAGS.embed_dim, **timing)
  else:
    raise app.UsageError('pass --model=NAME, --workdir=RUN or --all')
  print(json.dumps(record), flush=True)
  common.write_json(FLAGS.json_out, record)


if __name__ == '__main__':
  app.run(main)
