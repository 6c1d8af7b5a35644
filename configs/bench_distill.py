"""Training throughput: distillation of a frozen teacher (VGG-16 or ResNet-50 at 224x224, random weights) into
MobileFaceNet at 112x112 (the teacher resizes the student's batch in-graph, as in training), bf16, batch 256,
10,575 identities; losses: embedding L2 + soft targets (T=4) + hard labels, so the teacher's logits are used.

  python -m launch.benchmark_train --config=configs/bench_distill.py:teacher=vgg16 --data=device
  python -m launch.benchmark_train --config=configs/bench_distill.py:teacher=resnet50 --data=device

Arg: teacher=vgg16, student=mobilefacenet, batch=256, size=112 (student), teacher_size=224, classes=10575,
data_dir='', tiny. A trained teacher instead: --config.distill.teacher_workdir=RUN.
"""
from facejax.train.config import benchmark_config, parse_arg


def get_config(arg=None):
  a = parse_arg(arg, 'configs/bench_distill.py', teacher='vgg16', student='mobilefacenet', batch=256, size=112,
                teacher_size=224, classes=10575, data_dir='', tiny=False)
  c = benchmark_config('distill', a.student, image_size=a.size, batch_size=a.batch, num_classes=a.classes,
                       data_dir=a.data_dir, teacher=a.teacher, teacher_image_size=a.teacher_size, tiny=a.tiny)
  c.distill.embed_weight = 1.0
  c.distill.soft_weight = 0.5
  c.distill.hard_weight = 0.5
  return c
