"""Training throughput of one config: img/s, step time, compile time, MFU, device memory, as JSON.

  python -m launch.benchmark_train --config=configs/bench_resnet50.py --data=device --steps=30 --json_out=PATH
  python -m launch.benchmark_train --config=configs/bench_resnet50.py:data_dir=D --data=loader
  python -m launch.benchmark_train --prepare_data=D      # the bench identity folders (JPEG) -> ArrayRecord, then exit
  python -m launch.benchmark_train --config=configs/bench_resnet50.py --data=device --steps=10 \
      --profile_dir=/tmp/prof --hlo_out=/tmp/step.hlo.txt.gz     # + a jax.profiler trace and the optimized HLO
  python -m launch.benchmark_train --summarize=DIR       # markdown tables of DIR/*.json (+ DIR/summary.md)

Pipeline knobs live in the config: --config.bench.prefetch=thread|device_put|none, --config.bench.num_workers=N,
--config.bench.cache=none|decoded. XLA flags act per process: set them in the environment; the JSON records them.
"""
import glob
import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from launch import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training config (e.g. configs/bench_resnet50.py[:arg]).',
                                lock_config=False)
flags.DEFINE_enum('data', 'device', ['device', 'loader'], 'device: one on-device batch reused (pure compute); '
                  'loader: the grain train_loader of config.data, prefetched to the devices.')
flags.DEFINE_integer('steps', 30, 'Timed steps.')
flags.DEFINE_integer('warmup', 5, 'Untimed steps after compilation.')
flags.DEFINE_integer('window', None, 'Steps between host syncs (default config.bench.window).')
flags.DEFINE_float('peak_tflops', None, 'Dense bf16 peak per chip for MFU (default: by device kind; H100/H200 989).')
flags.DEFINE_string('name', None, 'Name stored in the record (e.g. classify_r50_device).')
flags.DEFINE_string('json_out', None, 'Write the JSON record here.')
flags.DEFINE_string('profile_dir', None, 'After the timed steps, profile --profile_steps more with jax.profiler into '
                    'this folder; the record gets a summary (device busy time, top kernels and HLO ops).')
flags.DEFINE_integer('profile_steps', 3, 'Steps under the profiler (--profile_dir).')
flags.DEFINE_string('hlo_out', None, "Write the compiled step's optimized HLO text here (gzipped if it ends in .gz).")
flags.DEFINE_string('prepare_data', None, 'Prepare the bench identity folders under this TFDS data dir and exit.')
flags.DEFINE_integer('prepare_identities', 200, '--prepare_data: identities.')
flags.DEFINE_integer('prepare_images', 8, '--prepare_data: images per identity.')
flags.DEFINE_integer('prepare_size', 250, '--prepare_data: JPEG side (CASIA-WebFace crops are 250x250).')
flags.DEFINE_integer('prepare_processes', None, '--prepare_data: rendering processes (default: all cores).')
flags.DEFINE_string('summarize', None, 'Print markdown tables of DIR/*.json (every run; device vs pipeline '
                    'pairs), write DIR/summary.md, and exit.')


def _log(msg):
  print(msg, file=sys.stderr, flush=True)


def main(argv):
  del argv
  common.quiet_library_logs()
  if FLAGS.summarize:
    from facejax.train.throughput_report import paired_table, summary_table
    records = []
    for path in sorted(glob.glob(os.path.join(FLAGS.summarize, '*.json')), key=os.path.getmtime):  # run order
      with open(path) as f:
        r = json.load(f)
      if isinstance(r, dict) and ('img_per_s' in r or 'error' in r):
        records.append(r)
    table = summary_table(records) + '\n\n' + paired_table(records)
    print(table)
    with open(os.path.join(FLAGS.summarize, 'summary.md'), 'w') as f:
      f.write(table + '\n')
    return
  if FLAGS.prepare_data:
    import time

    from facejax.train.throughput_input import prepare_bench_folders
    t0 = time.perf_counter()
    out = prepare_bench_folders(FLAGS.prepare_data, num_identities=FLAGS.prepare_identities,
                                images_per_identity=FLAGS.prepare_images, image_size=FLAGS.prepare_size,
                                processes=FLAGS.prepare_processes)
    print(json.dumps({'prepared': out, 'seconds': round(time.perf_counter() - t0, 1)}), flush=True)
    return
  if FLAGS.config is None:
    raise app.UsageError('pass --config=configs/bench_*.py[:arg] (or --prepare_data / --summarize)')
  from facejax.train.throughput import benchmark_training
  record = benchmark_training(FLAGS.config, steps=FLAGS.steps, warmup=FLAGS.warmup, data=FLAGS.data,
                              window=FLAGS.window, peak_tflops=FLAGS.peak_tflops, profile_dir=FLAGS.profile_dir,
                              profile_steps=FLAGS.profile_steps, hlo_out=FLAGS.hlo_out, log=_log)
  if FLAGS.name:
    record = {'name': FLAGS.name, **record}
  print(json.dumps(record), flush=True)
  common.write_json(FLAGS.json_out, record)


if __name__ == '__main__':
  app.run(main)
