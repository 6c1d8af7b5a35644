"""keras.applications VGG16 / ResNet50 weights in HDF5 -> facejax variables, read with h5py (no TensorFlow).

Layouts understood (`read_keras_h5` flattens all of them to `{'<layer>/<weight>': array}`, e.g.
`'conv1_bn/moving_mean'`):
- Keras 3 `model.save_weights('x.weights.h5')`: `layers/<auto name>/vars/<i>` with the layer name in the
  `vars` group's `name` attribute (older Keras 3 files lack it: layers are then named by Keras' layer order).
- Keras 3 `model.save('x.h5')` and tf.keras / Keras 2 `model.save` / `save_weights('x.h5')` (the layout of
  the keras.applications downloads): `[model_weights/]<layer>` groups whose `weight_names` attribute lists
  `<layer>/kernel[:0]` datasets, in Keras' variable order.
- `.keras` archives: the `model.weights.h5` inside.

Keras weights are channels-last already: conv kernels `[kh, kw, in, out]`, dense `[in, out]` and the VGG
flatten is NHWC, so every tensor maps 1:1. The weights expect 'caffe' preprocessing (BGR minus ImageNet
means, `PREPROCESSING['keras']`), and Keras' ResNet50 is the v1 layout: arch `resnet50_keras`.
"""
from __future__ import annotations

import io
import re
import zipfile

import h5py
import numpy as np

from facejax.convert.plan import Assignment, Plan, vgg_image_size
from facejax.models.registry import build_backbone

# Variable names in Keras' order for a layer with this many variables (conv/dense with bias, batch norm).
_POSITIONAL = {1: ('kernel',), 2: ('kernel', 'bias'), 4: ('gamma', 'beta', 'moving_mean', 'moving_variance')}
_KNOWN = {'kernel', 'bias', 'gamma', 'beta', 'moving_mean', 'moving_variance', 'depthwise_kernel'}
# facejax arch -> (keras.applications model it loads from, facejax arch actually built).
KERAS_ARCHS = {'vgg16': ('vgg16', 'vgg16'), 'vgg16_gap': ('vgg16', 'vgg16_gap'),
               'resnet50_keras': ('resnet50', 'resnet50_keras'), 'resnet50': ('resnet50', 'resnet50_keras')}
_RESNET_DEPTHS = {(3, 4, 6, 3): 'resnet50', (3, 4, 23, 3): 'resnet101', (3, 8, 36, 3): 'resnet152'}


def _layer_weights(layer: str, arrays: list[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Names a layer's arrays 'layer/kernel', ...: by their own names when Keras-standard, else by position."""
  names = [re.sub(r':\d+$', '', n).rsplit('/', 1)[-1] for n, _ in arrays]
  if len(set(names)) != len(names) or not set(names) <= _KNOWN:
    names = list(_POSITIONAL.get(len(arrays), [str(i) for i in range(len(arrays))]))
    if len(arrays) == 2 and np.ndim(arrays[0][1]) == 1:  # a 2-variable layer that is not (kernel, bias)
      names = ['0', '1']
  return {f'{layer}/{n}': np.asarray(a) for n, (_, a) in zip(names, arrays)}


def _read_keras3(layers: h5py.Group, out: dict) -> None:
  """Keras 3 weights layout: groups `<auto name>/vars/<i>`, possibly nested (a model used as a layer)."""
  for key in layers:
    group = layers[key]
    if not isinstance(group, h5py.Group):
      continue
    if 'vars' in group and len(group['vars']):
      v = group['vars']
      name = v.attrs.get('name', key)
      name = name.decode() if isinstance(name, bytes) else str(name)
      arrays = [(str(i), v[str(i)][()]) for i in range(len(v))]
      for k, a in _layer_weights(name, arrays).items():
        if k in out:
          raise ValueError(f'two layers named {name!r} in the file (nested models?)')
        out[k] = a
    if 'layers' in group:
      _read_keras3(group['layers'], out)


def _read_legacy(root: h5py.Group, out: dict) -> None:
  """tf.keras / Keras 2 / Keras 3 legacy layout: one group per layer, `weight_names` in variable order."""
  names = root.attrs.get('layer_names')
  layers = [n.decode() if isinstance(n, bytes) else str(n) for n in names] if names is not None else list(root)
  for layer in layers:
    group = root[layer]
    if not isinstance(group, h5py.Group):
      continue
    weight_names = group.attrs.get('weight_names')
    if weight_names is not None:
      paths = [n.decode() if isinstance(n, bytes) else str(n) for n in weight_names]
    else:  # hand-written files: every dataset under the group, in file order
      paths = []
      group.visititems(lambda p, obj: paths.append(p) if isinstance(obj, h5py.Dataset) else None)
    # Normally every weight belongs to `layer` ('conv1_bn/gamma'); a nested model saved as one layer lists
    # its sub-layers' weights ('resnet50/conv1_bn/gamma:0'), so group by the weight's own parent.
    owners: dict[str, list] = {}
    for p in paths:
      if p not in group:
        raise ValueError(f'layer {layer!r} lists weight {p!r} but the file has no such dataset')
      parts = p.split('/')
      owners.setdefault(parts[-2] if len(parts) > 1 else layer, []).append((p, group[p][()]))
    for owner, arrays in owners.items():
      out.update(_layer_weights(owner, arrays))


def read_keras_h5(path: str) -> tuple[dict[str, np.ndarray], str]:
  """Any Keras HDF5 weights file (or `.keras` archive) -> ({'layer/weight': array}, layout name)."""
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as z:
      if 'model.weights.h5' not in z.namelist():
        raise ValueError(f'{path}: a zip archive without model.weights.h5 (not a .keras file)')
      source = io.BytesIO(z.read('model.weights.h5'))
  else:
    source = path
  try:
    f = h5py.File(source, 'r')
  except OSError as e:
    raise ValueError(f'{path}: not an HDF5 file ({e})') from e
  out: dict[str, np.ndarray] = {}
  with f:
    if 'layers' in f and isinstance(f['layers'], h5py.Group) and 'layer_names' not in f.attrs:
      layout = 'keras3_weights'
      _read_keras3(f['layers'], out)
    elif 'model_weights' in f:
      layout = 'legacy_model_h5'
      _read_legacy(f['model_weights'], out)
    else:
      layout = 'legacy_weights_h5'
      _read_legacy(f, out)
  if not out:
    raise ValueError(f'{path}: no weights found in any Keras HDF5 layout')
  return out, layout


def _layers(tensors: dict) -> set[str]:
  return {k.rsplit('/', 1)[0] for k in tensors}


def keras_resnet_layer_order(stage_sizes) -> list[str]:
  """Conv layer names of keras.applications ResNet v1 in Keras 3's functional layer order (the shortcut
  conv of a block comes after its 2nd conv); batch norms follow the same order with `_bn`."""
  names = ['conv1_conv']
  for s, n in enumerate(stage_sizes, start=2):
    for b in range(1, n + 1):
      order = (1, 2, 0, 3) if b == 1 else (1, 2, 3)
      names += [f'conv{s}_block{b}_{i}_conv' for i in order]
  return names


def name_auto_layers(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Older Keras 3 `.weights.h5` files lack layer names (`conv2d_7/...`); recover them from Keras' order."""
  auto = re.compile(r'^(conv2d|batch_normalization|dense)(?:_(\d+))?$')
  layers = _layers(tensors)
  if not layers or not all(auto.match(n) for n in layers):
    return tensors
  families: dict[str, list[str]] = {}
  for n in layers:
    m = auto.match(n)
    families.setdefault(m.group(1), []).append(n)
  for v in families.values():
    v.sort(key=lambda n: int(auto.match(n).group(2) or 0))
  convs, bns, dense = (families.get(k, []) for k in ('conv2d', 'batch_normalization', 'dense'))
  if len(convs) == 13 and not bns and len(dense) in (0, 3):
    names = {c: f'block{s}_conv{i}' for c, (s, i) in
             zip(convs, [(s, i) for s, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)])}
    names.update(zip(dense, ('fc1', 'fc2', 'predictions')))
  elif len(convs) == len(bns) == 53 and len(dense) in (0, 1):
    order = keras_resnet_layer_order((3, 4, 6, 3))
    names = dict(zip(convs, order))
    names.update(zip(bns, [o.replace('_conv', '_bn') for o in order]))
    names.update(zip(dense, ('predictions',)))
  else:
    raise ValueError(f'unnamed Keras 3 layers ({len(convs)} conv2d, {len(bns)} batch_normalization, '
                     f'{len(dense)} dense) match neither VGG16 nor ResNet50; re-save with Keras >= 3.6')
  return {f'{names[k.rsplit("/", 1)[0]]}/{k.rsplit("/", 1)[1]}': v for k, v in tensors.items()}


def detect_keras_arch(tensors: dict) -> str:
  """Which keras.applications model the weights come from: 'vgg16', 'vgg19', 'resnet50', ..."""
  layers = _layers(tensors)
  if 'block1_conv1' in layers:
    n = sum(bool(re.fullmatch(r'block\d_conv\d', x)) for x in layers)
    return {13: 'vgg16', 16: 'vgg19'}.get(n, f'vgg with {n} convs')
  if any(x.endswith('_preact_bn') for x in layers):
    return 'resnet_v2'
  if 'conv2_block1_1_conv' in layers:
    blocks = tuple(len({m.group(1) for x in layers if (m := re.match(rf'conv{s}_block(\d+)_', x))})
                   for s in range(2, 6))
    return _RESNET_DEPTHS.get(blocks, f'resnet with blocks {blocks}')
  return 'an unknown model (first layers: ' + ', '.join(sorted(layers)[:5]) + ')'


def keras_plan(arch: str, tensors: dict[str, np.ndarray], where: str) -> tuple[Plan, dict]:
  """-> (plan for building `arch` from these Keras tensors, tensors with recovered layer names)."""
  if arch not in KERAS_ARCHS:
    raise ValueError(f'{where}: arch {arch!r} cannot be loaded from Keras weights; expected one of '
                     f'{sorted(KERAS_ARCHS)}')
  tensors = name_auto_layers(tensors)
  expected, built = KERAS_ARCHS[arch]
  found = detect_keras_arch(tensors)
  if found != expected:
    raise ValueError(f'{where}: holds Keras {found} weights, not {expected} (asked for arch {arch!r})')
  notes = [] if built == arch else [f'arch {arch!r} from Keras is {built!r} (keras.applications ResNet50 is '
                                    'v1: stride in the first 1x1 conv, conv biases, BN eps 1.001e-5)']
  head = 'predictions/kernel' in tensors
  num_classes = tensors['predictions/kernel'].shape[-1] if head else 1000
  backbone = build_backbone(built)
  a, skip, init_head, image_size = [], {}, None, 224

  def dense(src, dst):
    a.extend([Assignment(f'{src}/kernel', f'{dst}/kernel'), Assignment(f'{src}/bias', f'{dst}/bias')])

  def bn(src, dst):
    a.extend([Assignment(f'{src}/gamma', f'params/{dst}/scale'), Assignment(f'{src}/beta', f'params/{dst}/bias'),
              Assignment(f'{src}/moving_mean', f'batch_stats/{dst}/mean'),
              Assignment(f'{src}/moving_variance', f'batch_stats/{dst}/var')])

  if built.startswith('vgg'):
    for s, n in enumerate(backbone.stage_sizes, start=1):
      for i in range(1, n + 1):
        dense(f'block{s}_conv{i}', f'params/backbone/conv{s}_{i}')
    if backbone.fc_dims:
      if 'fc1/kernel' not in tensors:
        raise ValueError(f'{where}: missing tensors for {built}: fc1/kernel, fc2/kernel (weights saved with '
                         "include_top=False?); use arch 'vgg16_gap' for the convolutional part")
      image_size = vgg_image_size(tensors['fc1/kernel'].shape[0], backbone, where, 'fc1/kernel')
      dense('fc1', 'params/backbone/fc6')
      dense('fc2', 'params/backbone/fc7')
      if head:
        dense('predictions', 'params/classifier')
      else:
        init_head = 'the source has no classifier (saved with include_top=False)'
    else:
      why = f'{built} pools globally instead of fc6/fc7'
      skip = {k: why for k in tensors if k.startswith(('fc1/', 'fc2/'))}
      skip.update({k: 'the source classifier expects fc7 features' for k in tensors
                   if k.startswith('predictions/')})
      init_head = f'{built} features are {backbone.widths[-1]}-d; the source head expects fc7 (4096-d)'
  else:
    dense('conv1_conv', 'params/backbone/conv1')
    bn('conv1_bn', 'backbone/bn1')
    for s, n in enumerate(backbone.stage_sizes, start=2):
      for b in range(1, n + 1):
        src, dst = f'conv{s}_block{b}', f'backbone/layer{s - 1}_{b - 1}'
        for i in (1, 2, 3):
          dense(f'{src}_{i}_conv', f'params/{dst}/conv{i}')
          bn(f'{src}_{i}_bn', f'{dst}/bn{i}')
        if b == 1:
          dense(f'{src}_0_conv', f'params/{dst}/downsample_conv')
          bn(f'{src}_0_bn', f'{dst}/downsample_bn')
    if head:
      dense('predictions', 'params/classifier')
    else:
      init_head = 'the source has no classifier (saved with include_top=False)'
  return Plan(built, 'keras_h5', 'keras', int(num_classes), image_size, a, skip, init_head, notes), tensors

