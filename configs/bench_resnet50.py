"""Training throughput: ResNet-50 identity classification at 224x224, bf16 compute, global batch 256,
10,575 identities (CASIA-WebFace's count) -- the reference point of docs/gpu_training.md.

  python -m launch.benchmark_train --config=configs/bench_resnet50.py --data=device
  python -m launch.benchmark_train --prepare_data=/tmp/fj_bench            # once: 1,600 JPEG faces -> ArrayRecord
  python -m launch.benchmark_train --config=configs/bench_resnet50.py:data_dir=/tmp/fj_bench --data=loader

Arg (comma-separated key=value): model=resnet50, batch=256, size=224, classes=10575, data_dir='' (prepared bench
folders; '' reads the on-the-fly synthetic faces), s2d (the stem conv on 2x2 space-to-depth input: ResNet's
stem_space_to_depth), tiny (CPU smoke: same code at 1/16 width, 32x32, batch 8).
"""
from facejax.train.config import benchmark_config, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, 'configs/bench_resnet50.py', model='resnet50', batch=256, size=224, classes=10575, data_dir='',
                s2d=False, tiny=False)
  return benchmark_config('classify', a.model, image_size=a.size, batch_size=a.batch, num_classes=a.classes,
                          data_dir=a.data_dir, tiny=a.tiny,
                          model_kwargs={'stem_space_to_depth': True} if a.s2d else None)
