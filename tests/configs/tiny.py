"""A seconds-scale training config for tests: `tests/configs/tiny.py:classify|siamese`."""
import ml_collections

from facejax.train import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = base_config()
  c.task = arg or 'classify'
  c.total_steps = 6
  c.batch_size = 8
  c.log_every = 1
  c.checkpoint_every = 2
  c.keep_checkpoints = 10
  c.progress = False
  c.model.name = 'student_vgg'
  c.model.image_size = 16
  c.model.embed_dim = 16
  c.model.kwargs = ml_collections.ConfigDict(dict(width=0.25))
  c.data.kwargs = ml_collections.ConfigDict(dict(num_identities=4, images_per_identity=6, image_size=16))
  c.optim.warmup_steps = 1
  c.optim.learning_rate = 0.05
  if c.task == 'siamese':
    c.data.sampler = 'identity'
    c.data.images_per_identity = 2
  return c
