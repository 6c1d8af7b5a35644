"""facejax vs ONNX Runtime, OpenVINO and PyTorch eager on this CPU: same networks and weights, one process,
interleaved (bench.cpu_comparison describes every variant).

  pip install -e '.[bench]'      # onnxruntime, onnx, openvino, jax2onnx, torch (facejax never imports torch)
  python -m launch.compare_cpu --models=resnet50,vgg16 --batch_sizes=1,8 --json_out=runs/bench/compare_cpu.json
"""
import json
import os
import sys

from absl import app, flags

from bench.cpu_comparison import ANCHORS, OPT_VARIANTS, comparison_table, missing_packages, run
from launch import common

FLAGS = flags.FLAGS
flags.DEFINE_list('models', ['resnet50', 'vgg16', 'vgg_small', 'student_vgg', 'mobilefacenet', 'resnet18',
                             'resnet18_w050'], 'Registry models (each at its default input size, random '
                  'weights) or run directories (their own weights and size, e.g. a converted tfjs graph).')
flags.DEFINE_list('batch_sizes', ['1', '8'], 'Batch sizes (the table shows batch 1 and ms/image at the largest).')
flags.DEFINE_list('variants', ['jax_plain', 'jax_opt', 'jax_onednn', 'jax_bf16', 'jax_int8', 'jax_int8_static',
                                'ort', 'ort_facejax', 'openvino', 'openvino_f32', 'torch', 'torch_1t'],
                  'What to time.')
flags.DEFINE_bool('ort_int8', False, 'Also time ONNX Runtime dynamic int8 quantization.')
flags.DEFINE_integer('rounds', 7, 'Interleaved rounds.')
flags.DEFINE_integer('calls', 3, 'Calls per variant per round (the first of each block is not timed).')
flags.DEFINE_float('pause_s', 0.05, "Seconds idle before each variant's block of calls, so the previous "
                   "framework's spinning threads go idle: a sporadic caller. 0 with many --calls: a sustained "
                   'stream of faces (worker threads stay awake).')
flags.DEFINE_integer('embed_dim', 128, 'Embedding size.')
flags.DEFINE_string('opt_variants', '{}', 'JSON {name: optimize_for_inference options} adding (or redefining) '
                    'jax_* variants, e.g. {"jax_opt_xla": {"conv": "xla"}}; name them in --variants too.')
flags.DEFINE_string('json_out', None, 'Write all records here (and the markdown table next to it, .md).')


def main(argv):
  del argv
  unknown = sorted(set(FLAGS.variants) - set(ANCHORS) - set(OPT_VARIANTS) - set(json.loads(FLAGS.opt_variants)))
  if unknown:
    raise app.UsageError(f'--variants: unknown {unknown}; expected some of jax_plain, {", ".join(OPT_VARIANTS)}, '
                         f'{", ".join(ANCHORS[1:])} (or a name defined in --opt_variants)')
  missing = missing_packages(FLAGS.variants, FLAGS.ort_int8)
  if missing:
    without_ort = ','.join(v for v in FLAGS.variants if not v.startswith(('ort', 'openvino'))) or 'jax_plain,jax_opt'
    sys.exit(f'launch.compare_cpu: --variants={",".join(FLAGS.variants)}{" --ort_int8" * FLAGS.ort_int8} need '
             f"{', '.join(missing)}, not installed: pip install -e '.[bench]'"
             + ('' if 'torch' in missing else f' (or leave ONNX Runtime out: --variants={without_ort})'))
  opt_variants = dict(OPT_VARIANTS, **json.loads(FLAGS.opt_variants))
  records = run(FLAGS.models, FLAGS.batch_sizes, FLAGS.variants, rounds=FLAGS.rounds, calls=FLAGS.calls,
                embed_dim=FLAGS.embed_dim, opt_variants=opt_variants, ort_int8=FLAGS.ort_int8,
                pause=FLAGS.pause_s, log=lambda line: print(line, flush=True))
  table = comparison_table(records)
  print(table)
  if FLAGS.json_out:
    common.write_json(FLAGS.json_out, {'records': records, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
                                       'opt_variants': opt_variants})
    with open(os.path.splitext(FLAGS.json_out)[0] + '.md', 'w') as f:
      f.write(table + '\n')


if __name__ == '__main__':
  app.run(main)
