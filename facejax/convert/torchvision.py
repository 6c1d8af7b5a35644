"""torchvision (and timm ResNet) state dicts -> facejax variables.

`.safetensors` is read with safetensors.numpy, `.pth`/`.pt`/`.bin` by facejax.convert.torch_file (no torch). Wrappers
(`{'state_dict': ...}`, `{'model': ...}`) and DataParallel's `module.` prefix are removed.

Tensor layouts: conv `[out, in, kh, kw]` -> `[kh, kw, in, out]`; linear `[out, in]` -> `[in, out]`; VGG fc6
`[4096, C*7*7]` reads a CHW-flattened map, facejax flattens HWC, so its rows are permuted. BN weight/bias
-> scale/bias, running_mean/var -> batch_stats mean/var. The weights expect RGB / 255 normalised by the
ImageNet mean and std (`PREPROCESSING['torchvision']`); torchvision ResNet-50 is v1.5: arch `resnet50`.
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
TORCHVISION_ARCHS = {'vgg16': 'vgg16', 'vgg16_gap': 'vgg16', 'resnet50': 'resnet50', 'resnet18': 'resnet18'}
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


def detect_torchvision_arch(tensors: dict) -> str:
  """Which torchvision model the state dict comes from: 'vgg16', 'vgg16_bn', 'resnet50', ..."""
  if 'features.0.weight' in tensors:
    convs = [k for k in tensors if re.fullmatch(r'features\.\d+\.weight', k) and np.ndim(tensors[k]) == 4]
    name = _VGG_DEPTHS.get(len(convs), f'vgg with {len(convs)} convs')
    return name + ('_bn' if 'features.1.running_mean' in tensors else '')
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
  a, skip, init_head, image_size = [], {}, None, 224
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
  return Plan(arch, 'torchvision', 'torchvision', int(num_classes), image_size, a, skip, init_head)

