"""Compress: distil a fine-tuned teacher run into a compact student (embedding mimic + soft targets + CE).

  python -m launch.train --config=configs/distill_student.py:student=mobilefacenet --workdir=runs/mfn \
      --config.distill.teacher_workdir=runs/resnet50

The student reads the same batches at its own input size; the teacher's input is resized in-graph.
"""
from facejax.models import default_image_size
from facejax.train.config import base_config, parse_arg, set_data


def get_config(arg=None):
  args = parse_arg(arg, 'configs/distill_student.py', bare='data', data='synthetic', student='mobilefacenet', size=0,
                   embed_dim=256)
  c = base_config()
  c.task = 'distill'
  c.model.name = args.student
  c.model.image_size = args.size or default_image_size(c.model.name)
  c.model.embed_dim = args.embed_dim  # must equal the teacher's for embedding mimic
  set_data(c, args.data, c.model.image_size)
  c.distill.update(teacher_workdir='', embed_weight=1.0, embed_kind='l2', soft_weight=0.5, temperature=4.0,
                   hard_weight=0.5)
  c.batch_size = 256
  c.total_steps = 20_000
  c.checkpoint_every = 1000
  c.log_every = 100
  c.optim.update(name='sgd', learning_rate=0.1, warmup_steps=500, weight_decay=5e-4)
  return c
