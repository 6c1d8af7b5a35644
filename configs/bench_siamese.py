"""Training throughput: Siamese (contrastive, margin 1) training of MobileFaceNet at 112x112 on P x K identity
batches (64 identities x 4 images = 256), bf16, 10,575 identities.

  python -m launch.benchmark_train --config=configs/bench_siamese.py --data=device

Arg: model=mobilefacenet, batch=256, size=112, per_identity=4, loss=contrastive (or triplet), classes=10575,
data_dir='', tiny.
"""
from facejax.train.config import benchmark_config, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, 'configs/bench_siamese.py', model='mobilefacenet', batch=256, size=112, per_identity=4,
                loss='contrastive', classes=10575, data_dir='', tiny=False)
  c = benchmark_config('siamese', a.model, image_size=a.size, batch_size=a.batch, num_classes=a.classes,
                       data_dir=a.data_dir, tiny=a.tiny)
  c.data.sampler = 'identity'
  c.data.images_per_identity = a.per_identity
  c.siamese.loss = a.loss
  c.siamese.margin = 1.0
  return c
