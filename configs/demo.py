"""The paper end to end on the embedded synthetic faces, in minutes on 2 CPU cores.

  python -m launch.pipeline --config=configs/demo.py --workdir=runs/demo
  python -m launch.pipeline --config=configs/demo.py:micro --workdir=/tmp/micro   # seconds: the test variant

Stages (each a normal training run in <workdir>/<stage>, resumable on its own):
  pretrain  classify synthetic *objects* (the ImageNet stand-in) with the teacher backbone
  teacher   transfer: load the pretrained backbone, new embedding + identity head, fine-tune on faces
  student   compress: distil the teacher into a >= 9x smaller student (embedding mimic + soft targets)
  siamese   continue the student with a contrastive loss on P x K identity batches
then verification on disjoint identities (10 folds), CPU benchmark and the report.
"""
from __future__ import annotations

import ml_collections

from configs import lfw_eval
from facejax.train.config import parse_arg, stage_config

IMAGE_SIZE = 48


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  micro = parse_arg(arg, 'configs/demo.py', micro=False).micro
  faces = dict(num_identities=12 if micro else 200, images_per_identity=8 if micro else 40, image_size=IMAGE_SIZE,
               difficulty=1.0, seed=0)
  # micro: as many object classes as face identities, so the pretrain and teacher models are the same program to
  # initialise (one compile of it).
  objects = dict(num_classes=12 if micro else 50, images_per_class=8 if micro else 60, image_size=IMAGE_SIZE, seed=1)
  pairs = dict(num_identities=20 if micro else 300, images_per_identity=4 if micro else 8, image_size=IMAGE_SIZE,
               difficulty=1.0, seed=0, identity_offset=100_000, num_folds=10, pairs_per_fold=8 if micro else 60)
  steps = (lambda n: 3) if micro else (lambda n: n)
  batch = 16 if micro else 64

  c = ml_collections.ConfigDict()
  c.pretrain = stage_config('classify', 'vgg_small', IMAGE_SIZE, steps(150), 0.05, batch)
  c.pretrain.data.source = 'synthetic_objects'
  c.pretrain.data.kwargs = ml_collections.ConfigDict(objects)

  c.teacher = stage_config('classify', 'vgg_small', IMAGE_SIZE, steps(400), 0.05, batch)
  c.teacher.optim.lr_mult = ml_collections.ConfigDict({'backbone': 0.5})  # transfer: gentler on pretrained layers
  c.teacher.init.mode = 'backbone'  # init.path: the pretrain run, unless set (e.g. a converted checkpoint)

  c.student = stage_config('distill', 'student_vgg', IMAGE_SIZE, steps(400), 0.05, batch)
  c.student.distill.embed_weight = 1.0
  c.student.distill.soft_weight = 0.5
  c.student.distill.hard_weight = 0.5

  c.siamese = stage_config('siamese', 'student_vgg', IMAGE_SIZE, steps(150), 0.01, batch)
  c.siamese.data.sampler = 'identity'
  c.siamese.data.images_per_identity = 4
  c.siamese.init.mode = 'all'  # init.path: the student run
  c.siamese.siamese.margin = 1.0

  for stage in (c.teacher, c.student, c.siamese):
    stage.data.kwargs = ml_collections.ConfigDict(faces)
  for stage in (c.pretrain, c.teacher, c.student, c.siamese):
    stage.val.synthetic = ml_collections.ConfigDict(pairs)
    if micro:
      stage.progress = False

  c.eval = lfw_eval.get_config('synthetic')  # the same protocol and files as `launch.evaluate` on each run
  c.eval.data.synthetic = ml_collections.ConfigDict(pairs)
  c.eval.progress = not micro
  c.eval.calibrate = True  # each run's threshold.json (launch.verify's default) from these pairs
  c.benchmark = ml_collections.ConfigDict(dict(batch_size=32, warmup=2 if micro else 5, runs=3 if micro else 30))
  return c
