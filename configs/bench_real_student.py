"""Training throughput of `make real`'s distillation step (configs/real_faces.py's student stage): dlib's net with
the given residual-stream channels and blocks at 150x150, float32, batch 64, embedding mimic against the teacher's
cached outputs (the step looks them up; dlib's net, random weights, fills the cache once), SGD.

  python -m launch.benchmark_train --config=configs/bench_real_student.py --data=device --json_out=DIR/ch8.json
  python -m launch.benchmark_train --config=configs/bench_real_student.py:channels=10/20/41/82 --data=device \\
      --json_out=DIR/ch10.json     # the 0.32-width cut; then --summarize=DIR

  python -m launch.benchmark_train --config=configs/bench_real_student.py:mode=function_matching --data=device
      # configs/real_faces.py:fm's step: dlib's whole net (random weights) runs in the step on the mixed batch

Arg: channels=8/24/48/96 (one count per stream, '/'-separated; see DlibResNet), blocks=1/2/2/2/1, batch=64,
mode=cached|function_matching, tiny (a 4/4/4/4-channel student at batch 4: a smoke run of the same code path).
"""
import ml_collections

from configs import real_faces
from facejax.train.config import bench_section, parse_arg


def _counts(text: str, key: str) -> tuple:
  try:
    return tuple(int(c) for c in text.split('/'))
  except ValueError:
    raise ValueError(f'configs/bench_real_student.py: {key}={text!r}: expected counts separated by /') from None


def get_config(arg=None):
  a = parse_arg(arg, 'configs/bench_real_student.py', channels='/'.join(map(str, real_faces.STUDENT_CHANNELS)),
                blocks='/'.join(map(str, real_faces.STUDENT_BLOCKS)), batch=64, mode='cached', tiny=False)
  if a.mode not in ('cached', 'function_matching'):
    raise ValueError(f"configs/bench_real_student.py: mode={a.mode!r}: expected 'cached' or 'function_matching'")
  c = real_faces.get_config('fm' if a.mode == 'function_matching' else '').student
  c.init.path = c.distill.teacher_workdir = ''  # random weights: speed does not depend on them (bench_section)
  c.model.kwargs = ml_collections.ConfigDict(dict(channels=_counts(a.channels, 'channels'),
                                                  blocks=_counts(a.blocks, 'blocks')))
  c.batch_size = a.batch
  c.progress = False
  c.data.source = 'synthetic'
  c.data.kwargs = ml_collections.ConfigDict(dict(num_identities=16, images_per_identity=4,
                                                 image_size=real_faces.STUDENT_SIZE))
  c.bench = bench_section()
  c.bench.num_classes = 16  # the mimic never reads labels
  c.bench.teacher.update(name='dlib_resnet', image_size=real_faces.STUDENT_SIZE, preprocessing='dlib')
  if a.tiny:
    c.model.kwargs.channels = (4, 4, 4, 4)
    c.batch_size = 4
    c.bench.num_workers = 0
    c.bench.loader_seconds = 0.5
  return c
