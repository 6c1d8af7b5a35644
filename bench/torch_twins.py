"""PyTorch twins of facejax's flax backbones (torchvision layout, NCHW), the flax weights copied in layer by layer,
and their ONNX export: the anchors `bench.cpu_comparison` times facejax against. Needs torch (the [bench] extra);
facejax itself never imports this package."""
from __future__ import annotations

ONNX_OPSET = 17


def _torch_modules():
  import torch
  from torch import nn

  def conv_bn(cin, cout, k, stride=1, groups=1, bias=False, eps=1e-5, pad=None):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2 if pad is None else pad, groups=groups, bias=bias),
                         nn.BatchNorm2d(cout, eps=eps))

  class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, f, stride, stride_in_1x1, bias, eps):
      super().__init__()
      self.a = conv_bn(cin, f, 3, stride, bias=bias, eps=eps)
      self.b = conv_bn(f, f, 3, bias=bias, eps=eps)
      self.down = conv_bn(cin, f, 1, stride, bias=bias, eps=eps) if (stride != 1 or cin != f) else None

    def forward(self, x):
      y = self.b(torch.relu(self.a(x)))
      return torch.relu(y + (self.down(x) if self.down is not None else x))

  class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, f, stride, stride_in_1x1, bias, eps):
      super().__init__()
      s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
      self.a = conv_bn(cin, f, 1, s1, bias=bias, eps=eps)
      self.b = conv_bn(f, f, 3, s3, bias=bias, eps=eps)
      self.c = conv_bn(f, 4 * f, 1, bias=bias, eps=eps)
      self.down = conv_bn(cin, 4 * f, 1, stride, bias=bias, eps=eps) if (stride != 1 or cin != 4 * f) else None

    def forward(self, x):
      y = self.c(torch.relu(self.b(torch.relu(self.a(x)))))
      return torch.relu(y + (self.down(x) if self.down is not None else x))

  class ResNet(nn.Module):
    def __init__(self, b):  # b: the flax ResNet module (its fields)
      super().__init__()
      from facejax.models.common import scaled
      from facejax.models.resnet import BottleneckBlock
      f0 = scaled(b.num_filters, b.width)
      self.stem = conv_bn(3, f0, 7, 2, bias=b.conv_bias, eps=b.bn_eps)
      self.stem_pool = b.stem_pool
      block = Bottleneck if b.block_cls is BottleneckBlock else Basic
      blocks, cin = [], f0
      for i, n in enumerate(b.stage_sizes):
        for j in range(n):
          blocks.append(block(cin, f0 * 2**i, 2 if i > 0 and j == 0 else 1, b.stride_in_1x1, b.conv_bias, b.bn_eps))
          cin = f0 * 2**i * block.expansion
      self.blocks = nn.Sequential(*blocks)
      self.out_dim = cin

    def forward(self, x):
      x = torch.relu(self.stem(x))
      if self.stem_pool:
        x = nn.functional.max_pool2d(x, 3, 2, 1)
      return self.blocks(x).mean((2, 3))

  class VGG(nn.Module):
    def __init__(self, b):
      super().__init__()
      from facejax.models.common import scaled
      layers, cin = [], 3
      for n, w in zip(b.stage_sizes, b.widths):
        for _ in range(n):
          w_ = scaled(w, b.width)
          layers += [nn.Conv2d(cin, w_, 3, 1, 1, bias=not b.norm)] + ([nn.BatchNorm2d(w_)] if b.norm else [])
          layers.append(nn.ReLU())
          cin = w_
        layers.append(nn.MaxPool2d(2, 2))
      self.features = nn.Sequential(*layers)
      self.fc = nn.ModuleList()
      self.flatten = bool(b.fc_dims)
      self.channels = cin
      self.fc_dims = [scaled(d, b.width) for d in b.fc_dims]

    def build_fc(self, spatial):
      cin = self.channels * spatial * spatial
      for d in self.fc_dims:
        self.fc.append(nn.Linear(cin, d))
        cin = d
      self.out_dim = cin if self.fc_dims else self.channels

    def forward(self, x):
      x = self.features(x)
      if not self.flatten:
        return x.mean((2, 3))
      x = x.permute(0, 2, 3, 1).flatten(1)  # NHWC flatten, as the flax model (and Keras) does
      for fc in self.fc:
        x = torch.relu(fc(x))
      return x

  class ConvBNAct(nn.Module):
    def __init__(self, cin, cout, k, stride=1, groups=1, act=True):
      super().__init__()
      self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
      self.bn = nn.BatchNorm2d(cout)
      self.act = nn.PReLU(1) if act else None

    def forward(self, x):
      x = self.bn(self.conv(x))
      return self.act(x) if self.act is not None else x

  class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, t, stride):
      super().__init__()
      h = cin * t
      self.body = nn.Sequential(ConvBNAct(cin, h, 1), ConvBNAct(h, h, 3, stride, groups=h),
                                ConvBNAct(h, cout, 1, act=False))
      self.residual = stride == 1 and cin == cout

    def forward(self, x):
      y = self.body(x)
      return x + y if self.residual else y

  class MobileFaceNet(nn.Module):
    def __init__(self, b, image_size):
      super().__init__()
      from facejax.models.common import scaled
      c0 = scaled(64, b.width)
      layers = [ConvBNAct(3, c0, 3, 2), ConvBNAct(c0, c0, 3, 1, groups=c0)]
      cin = c0
      for t, c, n, s in b.blocks:
        for i in range(n):
          c_ = scaled(c, b.width)
          layers.append(InvertedResidual(cin, c_, t, s if i == 0 else 1))
          cin = c_
      d = scaled(b.out_dim, b.width)
      layers.append(ConvBNAct(cin, d, 1))
      self.body = nn.Sequential(*layers)
      with torch.no_grad():
        hw = self.body(torch.zeros(1, 3, image_size, image_size)).shape[2:]
      self.gdconv = nn.Conv2d(d, d, tuple(hw), groups=d, bias=False)
      self.gdbn = nn.BatchNorm2d(d)
      self.out_dim = d

    def forward(self, x):
      return self.gdbn(self.gdconv(self.body(x))).flatten(1)

  class SameConv2d(nn.Conv2d):
    """TF 'SAME' padding from the input size (EfficientNet-Lite): the odd pixel of a stride-2 pad goes at the end."""

    def forward(self, x):
      pads = []
      for n, k, s in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1]):  # w, then h
        n = int(n)  # a constant in the ONNX graph (its integer Div truncates; the spatial size is fixed anyway)
        total = max(((n + s - 1) // s - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
      return nn.functional.conv2d(nn.functional.pad(x, pads), self.weight, None, self.stride, 0, 1, self.groups)

  class MobileNet(nn.Module):
    """facejax.models.mobilenet.MobileNet (MobileNetV2, EfficientNet-Lite): the same layers in the same order."""

    def __init__(self, b):
      super().__init__()

      def conv_bn(cin, cout, k, stride=1, groups=1):
        conv = (SameConv2d(cin, cout, k, stride, groups=groups, bias=False) if b.same_padding else
                nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False))
        return nn.Sequential(conv, nn.BatchNorm2d(cout, eps=b.bn_eps))

      from facejax.models.mobilenet import round_channels
      stem = b.stem if b.fixed_stem_head else round_channels(b.stem * b.width)
      head = b.head if b.fixed_stem_head else round_channels(b.head * max(1.0, b.width))
      self.stem = conv_bn(3, stem, 3, 2)
      self.blocks, self.residual, cin = nn.ModuleList(), [], stem
      for t, c, k, s in b.block_specs():
        h = cin * t
        layers = ([conv_bn(cin, h, 1), nn.ReLU6()] if t != 1 else []) + [conv_bn(h, h, k, s, h), nn.ReLU6(),
                                                                          conv_bn(h, c, 1)]
        self.blocks.append(nn.Sequential(*layers))
        self.residual.append(s == 1 and cin == c)
        cin = c
      self.head = conv_bn(cin, head, 1)
      self.out_dim = head

    def forward(self, x):
      x = torch.nn.functional.relu6(self.stem(x))
      for block, residual in zip(self.blocks, self.residual):
        x = x + block(x) if residual else block(x)
      return torch.nn.functional.relu6(self.head(x)).mean((2, 3))

  class Embedder(nn.Module):
    def __init__(self, backbone, embed_dim):
      super().__init__()
      self.backbone = backbone
      self.dense = nn.Linear(backbone.out_dim, embed_dim)
      self.bn = nn.BatchNorm1d(embed_dim)

    def forward(self, x):
      return nn.functional.normalize(self.bn(self.dense(self.backbone(x))), dim=-1, eps=1e-10)

  return dict(ResNet=ResNet, VGG=VGG, MobileFaceNet=MobileFaceNet, MobileNet=MobileNet, Embedder=Embedder)


def torch_twin(model, variables, image_size: int):
  """A torch.nn.Module computing `model.embed` ([B, 3, S, S] NCHW input) with the flax weights copied in."""
  import flax.linen as fnn
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from torch import nn

  from facejax.models.mobilenet import MobileNet
  from facejax.models.resnet import ResNet
  from facejax.models.students import MobileFaceNet
  from facejax.models.vgg import VGG
  mods = _torch_modules()
  b = model.backbone
  if isinstance(b, ResNet):
    backbone = mods['ResNet'](b)
  elif isinstance(b, VGG):
    backbone = mods['VGG'](b)
    if b.fc_dims:
      with torch.no_grad():
        spatial = backbone.features(torch.zeros(1, 3, image_size, image_size)).shape[-1]
      backbone.build_fc(spatial)
    else:
      backbone.build_fc(0)
  elif isinstance(b, MobileFaceNet):
    backbone = mods['MobileFaceNet'](b, image_size)
  elif isinstance(b, MobileNet):
    backbone = mods['MobileNet'](b)
  else:
    raise ValueError(f'no torch twin for backbone {type(b).__name__}')
  net = mods['Embedder'](backbone, model.embed_dim).eval()

  # flax side: parameterised layers in call order.
  flax_layers = []

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and type(context.module) in (fnn.Conv, fnn.Dense, fnn.BatchNorm, fnn.PReLU):
      flax_layers.append((type(context.module).__name__, context.module.scope.path, context.module))
    return next_fun(*args, **kwargs)

  with fnn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(v, x, method=model.embed), variables,
                   jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
  # torch side: the same, from forward hooks.
  torch_layers = []
  hooks = [m.register_forward_hook(lambda m, i, o: torch_layers.append(m)) for m in net.modules()
           if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, nn.PReLU))]
  with torch.no_grad():
    net(torch.zeros(2, 3, image_size, image_size))
  for h in hooks:
    h.remove()
  if len(flax_layers) != len(torch_layers):
    raise ValueError(f'torch twin has {len(torch_layers)} layers, flax model {len(flax_layers)}')

  def get(tree, path):
    for k in path:
      tree = tree[k]
    return np.asarray(tree)

  kinds = {'Conv': nn.Conv2d, 'Dense': nn.Linear, 'BatchNorm': (nn.BatchNorm2d, nn.BatchNorm1d), 'PReLU': nn.PReLU}
  with torch.no_grad():
    for (kind, path, fmod), tmod in zip(flax_layers, torch_layers):
      if not isinstance(tmod, kinds[kind]):
        raise ValueError(f'{"/".join(path)}: flax {kind} vs torch {type(tmod).__name__}')
      p = variables['params']
      for k in path:  # a BatchNorm without scale and bias has no params entry
        p = p.get(k, {})
      if kind == 'Conv':
        w = torch.from_numpy(np.ascontiguousarray(np.asarray(p['kernel']).transpose(3, 2, 0, 1)))
        assert tmod.weight.shape == w.shape, (path, tmod.weight.shape, w.shape)
        tmod.weight.copy_(w)
        if 'bias' in p:
          tmod.bias.copy_(torch.from_numpy(np.asarray(p['bias'])))
      elif kind == 'Dense':
        w = torch.from_numpy(np.ascontiguousarray(np.asarray(p['kernel']).T))
        assert tmod.weight.shape == w.shape, (path, tmod.weight.shape, w.shape)
        tmod.weight.copy_(w)
        tmod.bias.copy_(torch.from_numpy(np.asarray(p['bias'])))
      elif kind == 'BatchNorm':
        tmod.running_mean.copy_(torch.from_numpy(get(variables['batch_stats'], path + ('mean',))))
        tmod.running_var.copy_(torch.from_numpy(get(variables['batch_stats'], path + ('var',))))
        tmod.eps = fmod.epsilon
        if 'scale' in p:
          tmod.weight.copy_(torch.from_numpy(np.asarray(p['scale'])))
        if 'bias' in p:
          tmod.bias.copy_(torch.from_numpy(np.asarray(p['bias'])))
      else:
        tmod.weight.copy_(torch.from_numpy(np.asarray(p['negative_slope'], np.float32).reshape(1)))
  return net


def export_onnx(net, image_size: int, path: str) -> None:
  import torch
  torch.onnx.export(net, (torch.zeros(1, 3, image_size, image_size),), path, dynamo=False, opset_version=ONNX_OPSET,
                    input_names=['images'], output_names=['embeddings'],
                    dynamic_axes={'images': {0: 'batch'}, 'embeddings': {0: 'batch'}})
