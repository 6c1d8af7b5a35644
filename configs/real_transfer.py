"""The paper's own lineage on real faces: an ImageNet CNN transferred to a restricted identity set, compressed
>= 9x, continued as a Siamese student; LFW View 2 and held-out CelebA identities as the yardsticks.

  make real    # = the command below with FACEJAX_DATA=../shared/data
  python -m launch.pipeline --config=configs/real_transfer.py --workdir=runs/real
  python -m launch.pipeline --config=configs/real_transfer.py:teacher=efficientnet_lite0 --workdir=runs/real_lite0
  python -m launch.pipeline --config=configs/real_transfer.py:identities=300 --workdir=runs/real_300
  python -m launch.pipeline --config=configs/real_transfer.py:tiny --workdir=/tmp/t   # minutes: the test variant

The ImageNet weights ship in pip packages (the [imagenet] extra: torchvision's MobileNetV2, EfficientNet-Lite0/1/2);
no registry package ships VGG or ResNet ImageNet weights, so these stand in for the paper's VGG-16.
Data paths default to $FACEJAX_DATA/{lfw,celeba,celeba299} (FACEJAX_DATA defaults to ../shared/data), read in
place; everything prepared goes under --workdir (facejax.lineage.prepare_faces):
  holdout         300 of celeba/'s identities, never trained on: 10 folds of 300 + 300 pairs in LFW's format
  data            celeba/ and celeba299/ aligned as dlib 5-point chips (photos without a face skipped and counted);
                  identities dlib's face ResNet (the judge) finds among LFW View 2's people dropped; with
                  identities=N only N of the rest (a data-efficiency point)
Stages (each a normal training run in <workdir>/<stage>, its sources named in its own config):
  teacher         classify: the ImageNet backbone, a new 128-d embedding and identity softmax, fine-tuned
  teacher_scratch the same net and steps from random initialisation: the control of the transfer claim
  student         distil: MobileNetV2 x0.3 with a 192-wide head (9.3x fewer parameters than MobileNetV2's), cut
                  from the trained teacher (init 'prune:stage:teacher': its most-used channels), the teacher's soft
                  targets and embedding, and the labels
  siamese         the student continued with a contrastive loss on P x K identity batches
Reports: teacher, teacher_scratch, student, student_siamese, and dlib's net as a reference row, on both yardsticks.
Args: teacher=ARCH (mobilenet_v2 | efficientnet_lite0 | efficientnet_lite1 | efficientnet_lite2), identities=N
(0: all), classifier=softmax|arcface, tiny.
"""
from __future__ import annotations

import copy
import os

import ml_collections

from configs import lfw_eval
from facejax.train.config import parse_arg, stage_config

# The face size these nets are fine-tuned and evaluated at (dlib chips resized). 112 px is the usual face size,
# but XLA's CPU backward of depthwise nets is slow: MobileNetV2's step at batch 64 took 8.4 s at 112 px and 2.5 s
# at 64 px on 2 loaded Sapphire Rapids cores (launch.benchmark_train, docs/real_faces.md).
IMAGE_SIZE = 64
TEACHERS = ('mobilenet_v2', 'efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2')
PREPROCESSING = {'efficientnet_lite0': 'efficientnet_lite', 'efficientnet_lite1': 'efficientnet_lite',
                 'efficientnet_lite2': 'efficientnet_lite'}  # the rest: torchvision's mean and std
# MobileNetV2 x0.3, head 1280 -> 192: 256K params with the 128-d embedding, 9.3x fewer than the teacher's 2.39M.
# Chosen on the held-out pairs over x0.25 with a 256 head (187K, 12.8x): +0.88 +- 0.36 pp (p = 0.038).
STUDENT = dict(width=0.3, head=192)
TINY_BLOCKS = ((1, 8, 1, 1, 3), (6, 16, 1, 2, 3))  # tiny: two inverted-residual blocks (compiles in seconds)


def data_root() -> str:
  return os.environ.get('FACEJAX_DATA', os.path.join('..', 'shared', 'data'))


def _stage(task: str, model: str, steps: int, lr: float, batch: int = 64) -> ml_collections.ConfigDict:
  c = stage_config(task, model, IMAGE_SIZE, steps, lr, batch)
  c.model.preprocessing = PREPROCESSING.get(model, 'torchvision')  # the ImageNet weights' input scaling
  c.log_every, c.checkpoint_every = max(1, steps // 20), max(1, steps // 5)
  c.optim.warmup_steps = max(1, steps // 20)
  c.model.align = 'dlib_5pt'  # trained on dlib chips: evaluate / verify / embed align photos for it
  c.data.source = 'folders'
  c.data.kwargs = ml_collections.ConfigDict(dict(name='prepared:identities', data_dir='', split='train'))
  c.val.synthetic.image_size = IMAGE_SIZE
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, 'configs/real_transfer.py', teacher='mobilenet_v2', identities=0, classifier='softmax',
                tiny=False)
  if a.teacher not in TEACHERS:
    raise ValueError(f'configs/real_transfer.py:teacher={a.teacher}: expected one of {TEACHERS}')
  if a.classifier not in ('softmax', 'arcface'):
    raise ValueError(f"configs/real_transfer.py:classifier={a.classifier}: expected 'softmax' or 'arcface'")
  root = data_root()
  c = ml_collections.ConfigDict()
  c.faces = ml_collections.ConfigDict(dict(
      lfw_dir=os.path.join(root, 'lfw'), pairs='',  # '' -> <lfw_dir>/pairs.txt (View 2)
      identities=ml_collections.ConfigDict({'celeba': os.path.join(root, 'celeba'),
                                            'celeba299': os.path.join(root, 'celeba299')}),
      holdout=ml_collections.ConfigDict(dict(source='celeba', identities=300, folds=10, seed=0)),  # 0: none
      data_dir='',  # prepared data; '' -> <workdir>/data
      detector='hog', upsample=1,  # facejax.data.align
      max_identities=a.identities, seed=0,
      leakage=ml_collections.ConfigDict(dict(
          judge='dlib',  # the face model that judges who is a View 2 person ('': no check)
          drop=True, far=0.01, threshold=0.0)),  # threshold 0: calibrated on View 2's people at `far`
  ))
  c.stages = ('teacher', 'teacher_scratch', 'student', 'siamese')  # the order they train in (a tuple: overridable)
  c.report = ml_collections.ConfigDict({'teacher': 'teacher', 'teacher_scratch': 'teacher_scratch',
                                        'student': 'student', 'student_siamese': 'siamese',
                                        'dlib': 'dlib'})  # a stage, or a reference: dlib's net as a reference row
  # The paper's three claims, then the rest, each a paired per-fold comparison on both yardsticks.
  c.comparisons = [('teacher', 'teacher_scratch'), ('student', 'teacher'), ('student_siamese', 'teacher'),
                   ('student_siamese', 'student'), ('teacher', 'dlib')]
  # The Siamese stage has lowered the student as often as not: the better of the two on the held-out pairs is the
  # one <workdir>/kept links to (facejax.pipeline.keep_better).
  c.keep_better = ('student', 'student_siamese')

  # 1,500 steps (6 epochs of the ~15,700 chips): where the held-out accuracy of a 3,000-step run flattened
  # (docs/real_faces.md, learning curves); the student and the Siamese stage as in that run.
  c.teacher = _stage('classify', a.teacher, 1500, 0.05)
  c.teacher.init.path = f'imagenet:{a.teacher}'
  c.teacher.init.mode = 'backbone'  # a new embedding and identity classifier on the ImageNet backbone
  c.teacher.classify.label_smoothing = 0.1
  if a.classifier == 'arcface':
    c.teacher.model.classifier, c.teacher.model.cosine_scale, c.teacher.classify.margin = 'cosine', 32.0, 0.3
  c.teacher_scratch = copy.deepcopy(c.teacher)  # ConfigDict(x) would share x's sections
  c.teacher_scratch.init.path = ''
  # The pretrained backbone learns 10x slower than the new head, so a random head's first gradients do not wash
  # out the ImageNet features; from random init every layer learns at the full rate.
  c.teacher.optim.lr_mult = ml_collections.ConfigDict({'backbone': 0.1})

  c.student = _stage('distill', 'mobilenet_v2', 1500, 0.1)
  c.student.model.kwargs = ml_collections.ConfigDict(STUDENT)
  c.student.distill.teacher_workdir = 'stage:teacher'
  # Cut from the trained teacher (facejax.convert.prune.prune_mobilenet), not random init: docs/real_faces.md.
  c.student.init.path, c.student.init.mode = 'prune:stage:teacher', 'all'
  c.student.distill.embed_weight = 1.0
  c.student.distill.soft_weight = 1.0
  c.student.distill.hard_weight = 0.5

  c.siamese = _stage('siamese', 'mobilenet_v2', 300, 0.005)
  c.siamese.model.kwargs = ml_collections.ConfigDict(STUDENT)
  c.siamese.init.path, c.siamese.init.mode = 'stage:student', 'all'
  c.siamese.distill.teacher_workdir = 'stage:teacher'  # the teacher's embeddings anchor it (mimic_weight)
  c.siamese.siamese.mimic_weight = 5.0
  c.siamese.data.sampler = 'identity'
  c.siamese.data.images_per_identity = 4

  c.eval = lfw_eval.get_config('lfw')
  c.eval.calibrate = True  # each run's threshold.json: LFW View 2, for launch.verify
  c.benchmark = ml_collections.ConfigDict(dict(batch_size=32, warmup=5, runs=30))

  if a.tiny:
    c.faces.holdout.identities, c.faces.holdout.folds = 6, 2
    c.faces.leakage.judge = ''
    del c.report['dlib']  # the wiring only: no reference row
    for name in c.stages:
      stage = c[name]
      stage.total_steps, stage.batch_size, stage.log_every, stage.checkpoint_every = 2, 8, 1, 2
      stage.progress = False
      stage.model.image_size, stage.val.synthetic.image_size = 48, 48
      stage.model.kwargs = ml_collections.ConfigDict(dict(blocks=TINY_BLOCKS, stem=8, head=32))
    c.teacher.init.path = ''  # no ImageNet package needed: the wiring, not the weights
    c.teacher_scratch.total_steps = 0  # left out, with its report row
    c.eval.progress = False
    c.benchmark.update(warmup=1, runs=2, batch_size=4)
  return c
