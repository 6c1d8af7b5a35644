"""Siamese: continue a distilled student with a contrastive (or batch-hard triplet) loss on P x K batches.

  python -m launch.train --config=configs/siamese_student.py --workdir=runs/mfn_siamese \
      --config.init.path=runs/mfn  [--config.siamese.loss=triplet --config.siamese.margin=0.2]
"""
from facejax.models import default_image_size
from facejax.train.config import base_config, parse_arg, set_data


def get_config(arg=None):
  args = parse_arg(arg, 'configs/siamese_student.py', bare='data', data='synthetic', student='mobilefacenet', size=0,
                   embed_dim=256)
  c = base_config()
  c.task = 'siamese'
  c.model.name = args.student
  c.model.image_size = args.size or default_image_size(c.model.name)
  c.model.embed_dim = args.embed_dim
  set_data(c, args.data, c.model.image_size)
  c.data.sampler = 'identity'
  c.data.images_per_identity = 4
  c.init.mode = 'all'  # the whole distilled student, not just its backbone
  c.siamese.update(loss='contrastive', margin=1.0)
  c.batch_size = 256
  c.total_steps = 5_000
  c.checkpoint_every = 500
  c.log_every = 50
  c.optim.update(name='sgd', learning_rate=0.01, warmup_steps=100, weight_decay=5e-4)
  return c
