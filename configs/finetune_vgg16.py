"""Transfer: fine-tune ImageNet VGG-16 (fc6/fc7 kept) on face identities, as in the paper.

  python -m launch.convert --from=torchvision --arch=vgg16 --src=vgg16.pth --out=weights/vgg16
  python -m launch.train --config=configs/finetune_vgg16.py:folders --workdir=runs/vgg16 \
      --config.init.path=weights/vgg16 --config.data.kwargs.data_dir=data/facescrub

Without init.path the backbone starts from scratch; without ':folders' it trains on synthetic faces.
Preprocessing must match the converted weights: 'torchvision' (RGB, ImageNet mean/std) or 'keras' (BGR caffe).
"""
from facejax.train.config import base_config, parse_arg, set_data


def get_config(arg=None):
  args = parse_arg(arg, 'configs/finetune_vgg16.py', bare='data', data='synthetic', preprocessing='torchvision')
  c = base_config()
  c.task = 'classify'
  c.model.name = 'vgg16'
  c.model.image_size = 224
  c.model.embed_dim = 256
  c.model.dropout = 0.5
  c.model.preprocessing = args.preprocessing
  set_data(c, args.data, 224)
  c.batch_size = 128
  c.total_steps = 20_000
  c.half_precision = True
  c.checkpoint_every = 1000
  c.log_every = 100
  c.optim.update(name='sgd', learning_rate=0.01, warmup_steps=500, weight_decay=5e-4)
  c.optim.lr_mult = {'backbone': 0.1}  # pretrained layers move slowly, the new head at full rate
  c.optim.freeze = ('backbone/conv1_', 'backbone/conv2_')  # the first two blocks are generic edge/texture filters
  return c
