"""Transfer: fine-tune ImageNet ResNet-50 on face identities.

  python -m launch.convert --from=torchvision --arch=resnet50 --src=resnet50.pth --out=weights/resnet50
  python -m launch.train --config=configs/finetune_resnet50.py:folders --workdir=runs/resnet50 \
      --config.init.path=weights/resnet50 --config.data.kwargs.data_dir=data/facescrub

For Keras weights use `--from=keras_h5 --arch=resnet50_keras` and `:folders,model=resnet50_keras,preprocessing=keras`.
"""
from facejax.train.config import base_config, parse_arg, set_data


def get_config(arg=None):
  args = parse_arg(arg, 'configs/finetune_resnet50.py', bare='data', data='synthetic', model='resnet50',
                   preprocessing='torchvision')
  c = base_config()
  c.task = 'classify'
  c.model.name = args.model
  c.model.image_size = 224
  c.model.embed_dim = 256
  c.model.preprocessing = args.preprocessing
  set_data(c, args.data, 224)
  c.batch_size = 256
  c.total_steps = 20_000
  c.half_precision = True
  c.checkpoint_every = 1000
  c.log_every = 100
  c.optim.update(name='sgd', learning_rate=0.1, warmup_steps=500, weight_decay=1e-4)
  c.optim.lr_mult = {'backbone': 0.1}
  c.optim.freeze = ('backbone/conv1', 'backbone/bn1')  # the stem
  return c
