"""Pretrained-weight import, proven against the source frameworks.

Keras (jax backend) VGG16/ResNet50 and torch modules with torchvision's exact state-dict names are built
with seeded random weights, saved, converted, and run on the same input: logits must agree to 1e-4 of their
scale with the same top-1. Small inputs (32x32) everywhere except VGG-16 with fc6/fc7: torchvision's needs 224
(its adaptive pool is the identity only there), run once; Keras' fc1 follows the input size, so 64x64 by
default and 224 with FACEJAX_SLOW_TESTS=1.
"""
import os
import subprocess
import sys

os.environ['KERAS_BACKEND'] = 'jax'  # before keras is imported anywhere

import jax
import numpy as np
import pytest

from facejax.convert import (convert_pretrained, convert_to_checkpoint, load_pretrained,
                             read_keras_h5, transfer_backbone)
from facejax.convert.plan import flatten
from facejax.models import PREPROCESSING, build_classifier, build_model, count_params
from facejax.runs import load_converted

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
RTOL = 1e-4
pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')  # keras' numpy-2 __array__ notice


def assert_same_logits(name, out, ref):
  out, ref = np.asarray(out), np.asarray(ref)
  assert out.shape == ref.shape, f'{name}: logits {out.shape} vs reference {ref.shape}'
  scale, diff = float(np.abs(ref).max()), float(np.abs(out - ref).max())
  print(f'\n{name}: max abs diff {diff:.3g} (logit scale {scale:.3g}, relative {diff / scale:.2g})')
  assert diff <= RTOL * scale, f'{name}: max abs diff {diff} > {RTOL} * scale {scale}'
  np.testing.assert_array_equal(out.argmax(-1), ref.argmax(-1))


def images(size, batch=2, seed=0):
  """[B, S, S, 3] RGB in [0, 255]."""
  return np.random.default_rng(seed).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)


def backbone_features(model, variables, x):
  return model.apply(variables, x, method=lambda m, x: m.backbone(x, train=False))


# ----------------------------------------------------------------------------------------------- Keras

def randomize_keras(model, seed=0):
  """He-scaled kernels, non-trivial biases and BN statistics, so every tensor's mapping matters."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if not layer.weights:
      continue
    new = []
    for v in layer.weights:
      shape, name = tuple(v.shape), v.name
      if name == 'kernel':
        w = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2 / np.prod(shape[:-1])))
      elif name in ('bias', 'beta', 'moving_mean'):
        w = rng.normal(0, 0.2, shape)
      elif name == 'gamma':
        w = rng.uniform(0.5, 1.5, shape)
      elif name == 'moving_variance':
        w = rng.uniform(0.5, 2.0, shape)
      else:
        raise AssertionError(f'unexpected Keras variable {v.path}')
      new.append(np.asarray(w, np.float32))
    layer.set_weights(new)


@pytest.fixture(scope='module')
def keras():
  return pytest.importorskip('keras')


@pytest.fixture(scope='module')
def keras_resnet50(keras, tmp_path_factory):
  d = tmp_path_factory.mktemp('keras_resnet50')
  m = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classifier_activation=None)
  randomize_keras(m)
  paths = {'weights_h5': str(d / 'resnet50.weights.h5'), 'legacy_h5': str(d / 'resnet50.h5')}
  m.save_weights(paths['weights_h5'])
  m.save(paths['legacy_h5'])
  x = np.asarray(PREPROCESSING['keras'].apply(images(32)))
  return paths, x, np.asarray(m.predict(x, verbose=0)), m.count_params()


@pytest.mark.parametrize('layout', ['weights_h5', 'legacy_h5'])
def test_keras_resnet50_matches(keras_resnet50, layout):
  paths, x, ref, _ = keras_resnet50
  c = convert_pretrained('resnet50', paths[layout])
  assert c.metadata['arch'] == 'resnet50_keras' and c.metadata['preprocessing'] == 'keras'
  assert len(c.report.loaded) == 320 and not c.report.skipped and not c.report.initialised
  assert_same_logits(f'keras ResNet50 ({layout})', c.model.apply(c.variables, x, train=False), ref)


def test_keras_resnet50_param_count(keras_resnet50):
  paths, _, _, keras_count = keras_resnet50
  c = convert_pretrained('resnet50_keras', paths['weights_h5'])
  assert count_params(c.variables['params']) + count_params(c.variables['batch_stats']) == keras_count == 25_636_712


def test_keras3_weights_without_layer_names(keras_resnet50, tmp_path):
  """Keras 3 releases before layer-name attributes: layers are matched by Keras' layer order."""
  import h5py
  import shutil
  paths, x, ref, _ = keras_resnet50
  path = str(tmp_path / 'unnamed.weights.h5')
  shutil.copy(paths['weights_h5'], path)
  with h5py.File(path, 'r+') as f:
    for g in f['layers'].values():
      if 'vars' in g and 'name' in g['vars'].attrs:
        del g['vars'].attrs['name']
  model, variables = load_pretrained('resnet50_keras', path)
  assert_same_logits('keras ResNet50 (unnamed Keras 3 layers)', model.apply(variables, x, train=False), ref)


def keras_vgg16_fc_case(keras, tmp_path, size):
  m = keras.applications.VGG16(weights=None, input_shape=(size, size, 3), classifier_activation=None)
  randomize_keras(m, seed=1)
  path = str(tmp_path / 'vgg16.weights.h5')
  m.save_weights(path)
  x = np.asarray(PREPROCESSING['keras'].apply(images(size, batch=1)))
  ref, count = np.asarray(m.predict(x, verbose=0)), m.count_params()
  del m
  c = convert_pretrained('vgg16', path)
  assert c.metadata['image_size'] == size and len(c.report.loaded) == 32
  assert count_params(c.variables['params']) == count
  assert_same_logits(f'keras VGG16 fc ({size})', c.model.apply(c.variables, x, train=False), ref)
  return count


def test_keras_vgg16_fc_matches(keras, tmp_path):
  """Keras builds fc1 for any input size: 64x64 gives a 2x2x512 flatten (fc1 [2048, 4096]), cheap."""
  keras_vgg16_fc_case(keras, tmp_path, 64)


@pytest.mark.skipif(not os.environ.get('FACEJAX_SLOW_TESTS'), reason='~20-50 s on 2 cores; FACEJAX_SLOW_TESTS=1')
def test_keras_vgg16_fc_224_matches(keras, tmp_path):
  assert keras_vgg16_fc_case(keras, tmp_path, 224) == 138_357_544


@pytest.fixture(scope='module')
def keras_vgg16_notop(keras, tmp_path_factory):
  m = keras.applications.VGG16(weights=None, include_top=False, pooling='avg', input_shape=(32, 32, 3))
  randomize_keras(m, seed=2)
  path = str(tmp_path_factory.mktemp('keras_vgg16') / 'vgg16_notop.h5')
  m.save(path)
  x = np.asarray(PREPROCESSING['keras'].apply(images(32)))
  return path, x, np.asarray(m.predict(x, verbose=0))


def test_keras_vgg16_gap_matches(keras_vgg16_notop):
  path, x, ref = keras_vgg16_notop
  c = convert_pretrained('vgg16_gap', path)
  assert [d for d, _, _ in c.report.initialised] == ['params/classifier/bias', 'params/classifier/kernel']
  assert_same_logits('keras VGG16 convs, global pool (legacy .h5)', backbone_features(c.model, c.variables, x), ref)


def test_tf_keras_legacy_layout(keras_vgg16_notop, tmp_path):
  """tf.keras `save_weights('x.h5')`: top-level layer groups, `weight_names` like 'block1_conv1/kernel:0'."""
  import h5py
  path, _, _ = keras_vgg16_notop
  tensors, layout = read_keras_h5(path)
  assert layout == 'legacy_model_h5'
  legacy = str(tmp_path / 'tf_keras.h5')
  layers = sorted({k.split('/')[0] for k in tensors})
  with h5py.File(legacy, 'w') as f:
    f.attrs['layer_names'] = np.array([n.encode() for n in ['input_1'] + layers])
    f.create_group('input_1').attrs['weight_names'] = np.array([], dtype='S1')
    for layer in layers:
      g = f.create_group(layer)
      names = [f'{layer}/{w}:0' for w in ('kernel', 'bias')]
      g.attrs['weight_names'] = np.array([n.encode() for n in names])
      for n in names:
        g.create_dataset(n, data=tensors[n[:-2]])
  got, layout = read_keras_h5(legacy)
  assert layout == 'legacy_weights_h5' and got.keys() == tensors.keys()
  for k in tensors:
    np.testing.assert_array_equal(got[k], tensors[k])


def test_keras_errors(keras_vgg16_notop, keras_resnet50):
  vgg_path = keras_vgg16_notop[0]
  with pytest.raises(ValueError, match=r'holds Keras vgg16 weights, not resnet50'):
    convert_pretrained('resnet50', vgg_path)
  with pytest.raises(ValueError, match=r'include_top=False.*vgg16_gap'):
    convert_pretrained('vgg16', vgg_path)
  with pytest.raises(ValueError, match=r"arch 'mobilefacenet' cannot be loaded from Keras"):
    convert_pretrained('mobilefacenet', vgg_path)
  with pytest.raises(ValueError, match=r'holds Keras resnet50 weights, not vgg16'):
    convert_pretrained('vgg16_gap', keras_resnet50[0]['legacy_h5'])


# ----------------------------------------------------------------------------------------------- torch

@pytest.fixture(scope='module')
def torch():
  return pytest.importorskip('torch')


def torch_vgg16(torch, num_classes=1000):
  """torchvision.models.vgg16, same module tree and state-dict names."""
  nn = torch.nn

  class VGG(nn.Module):

    def __init__(self):
      super().__init__()
      layers, c = [], 3
      for v in (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'):
        if v == 'M':
          layers.append(nn.MaxPool2d(2, 2))
        else:
          layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
          c = v
      self.features = nn.Sequential(*layers)
      self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
      self.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
                                      nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
                                      nn.Linear(4096, num_classes))

    def forward(self, x):
      return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

  return VGG()


def torch_resnet(torch, blocks=(3, 4, 6, 3), bottleneck=True, num_classes=1000):
  """torchvision.models.resnet50 (v1.5: stride in the 3x3) / resnet18, same module tree and state-dict names."""
  nn = torch.nn
  expansion = 4 if bottleneck else 1

  class Block(nn.Module):

    def __init__(self, cin, width, stride):
      super().__init__()
      if bottleneck:
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, width * 4, 1, bias=False), nn.BatchNorm2d(width * 4)
      else:
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
      self.relu = nn.ReLU(inplace=True)
      self.downsample = None
      if stride != 1 or cin != width * expansion:
        self.downsample = nn.Sequential(nn.Conv2d(cin, width * expansion, 1, stride, bias=False),
                                        nn.BatchNorm2d(width * expansion))

    def forward(self, x):
      y = self.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      if bottleneck:
        y = self.bn3(self.conv3(self.relu(y)))
      return self.relu(y + (x if self.downsample is None else self.downsample(x)))

  class ResNet(nn.Module):

    def __init__(self):
      super().__init__()
      self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
      self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
      cin = 64
      for i, (n, w) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        layer = []
        for j in range(n):
          layer.append(Block(cin, w, 2 if i > 1 and j == 0 else 1))
          cin = w * expansion
        setattr(self, f'layer{i}', nn.Sequential(*layer))
      self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(512 * expansion, num_classes)

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
      return self.fc(torch.flatten(self.avgpool(x), 1))

  return ResNet()


def randomize_torch(torch, module, seed=0):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
      elif isinstance(m, torch.nn.BatchNorm2d):
        m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
  return module.eval()


def torch_logits(torch, module, x_nhwc):
  with torch.no_grad():
    return module(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def save_state_dict(torch, state_dict, path):
  if path.endswith('.safetensors'):
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v.numpy()) for k, v in state_dict.items()}, path)
  else:
    torch.save(state_dict, path)
  return path


@pytest.fixture(scope='module')
def torch_resnet50(torch, tmp_path_factory):
  d = tmp_path_factory.mktemp('torch_resnet50')
  m = randomize_torch(torch, torch_resnet(torch), seed=3)
  sd = m.state_dict()
  paths = {'pth': save_state_dict(torch, sd, str(d / 'resnet50.pth')),
           'safetensors': save_state_dict(torch, sd, str(d / 'resnet50.safetensors'))}
  x = np.asarray(PREPROCESSING['torchvision'].apply(images(32)))
  return paths, x, torch_logits(torch, m, x), {k: v.numpy() for k, v in sd.items()}


@pytest.mark.parametrize('fmt', ['pth', 'safetensors'])
def test_torchvision_resnet50_matches(torch_resnet50, fmt):
  paths, x, ref, _ = torch_resnet50
  c = convert_pretrained('resnet50', paths[fmt])
  assert c.metadata['arch'] == 'resnet50' and c.metadata['preprocessing'] == 'torchvision'
  assert len(c.report.loaded) == 267 and not c.report.initialised  # 53 convs (no bias), 53 BNs, fc
  assert {why for _, why in c.report.skipped} == {'BatchNorm step counter'}
  assert count_params(c.variables['params']) == 25_557_032
  assert_same_logits(f'torchvision resnet50 (.{fmt})', c.model.apply(c.variables, x, train=False), ref)


def test_torchvision_resnet18_matches(torch, tmp_path):
  """BasicBlock ResNets (the registry's resnet18 student) load from torchvision too."""
  m = randomize_torch(torch, torch_resnet(torch, blocks=(2, 2, 2, 2), bottleneck=False, num_classes=10), seed=5)
  x = np.asarray(PREPROCESSING['torchvision'].apply(images(32)))
  path = save_state_dict(torch, m.state_dict(), str(tmp_path / 'resnet18.pth'))
  model, variables = load_pretrained('resnet18', path)
  assert_same_logits('torchvision resnet18 (.pth, 10 classes)', model.apply(variables, x, train=False),
                     torch_logits(torch, m, x))


def test_torchvision_vgg16_224_matches(torch, tmp_path):
  m = randomize_torch(torch, torch_vgg16(torch), seed=4)
  x = np.asarray(PREPROCESSING['torchvision'].apply(images(224, batch=1)))
  ref = torch_logits(torch, m, x)
  x32 = np.asarray(PREPROCESSING['torchvision'].apply(images(32)))
  with torch.no_grad():
    ref_features = m.features(torch.from_numpy(x32.transpose(0, 3, 1, 2).copy())).mean((2, 3)).numpy()
  path = save_state_dict(torch, m.state_dict(), str(tmp_path / 'vgg16.safetensors'))
  del m
  c = convert_pretrained('vgg16', path)
  assert count_params(c.variables['params']) == 138_357_544 and c.metadata['image_size'] == 224
  assert_same_logits('torchvision vgg16 fc (224, .safetensors)', c.model.apply(c.variables, x, train=False), ref)
  del c
  # The same file as vgg16_gap: convs only, fc6/fc7/head skipped, a new head.
  c = convert_pretrained('vgg16_gap', path)
  skipped = [f'classifier.{i}.{p}' for i in (0, 3, 6) for p in ('bias', 'weight')]
  assert sorted(k for k, _ in c.report.skipped) == skipped
  assert len(c.report.initialised) == 2
  assert_same_logits('torchvision vgg16 convs, global pool (32)', backbone_features(c.model, c.variables, x32),
                     ref_features)


def test_torchvision_wrapped_state_dict(torch, torch_resnet50, tmp_path):
  """{'state_dict': {'module.' + name: tensor}} as DataParallel training scripts save it."""
  _, x, ref, sd = torch_resnet50
  path = str(tmp_path / 'wrapped.pth')
  torch.save({'epoch': 3, 'state_dict': {f'module.{k}': torch.from_numpy(v) for k, v in sd.items()}}, path)
  model, variables = load_pretrained('resnet50', path)
  assert_same_logits('torchvision resnet50 (wrapped .pth)', model.apply(variables, x, train=False), ref)


def _edited(tmp_path, sd, name, **edits):
  from safetensors.numpy import save_file
  sd = dict(sd)
  for k, v in edits.items():
    k = k.replace('__', '.')
    if v is None:
      del sd[k]
    else:
      sd[k] = v
  path = str(tmp_path / f'{name}.safetensors')
  save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, path)
  return path


def test_torchvision_errors(torch_resnet50, tmp_path):
  paths, _, _, sd = torch_resnet50
  with pytest.raises(ValueError, match=r'holds torchvision resnet50 weights, not vgg16'):
    convert_pretrained('vgg16', paths['safetensors'])
  with pytest.raises(ValueError, match=r"v1.5: use arch 'resnet50'"):
    convert_pretrained('resnet50_keras', paths['safetensors'])
  bad = _edited(tmp_path, sd, 'shape', layer2__1__conv2__weight=np.zeros((128, 128, 1, 1), np.float32))
  with pytest.raises(ValueError, match=r'tensor layer2.1.conv2.weight has shape \[128, 128, 1, 1\] \(converted to '
                     r'\[1, 1, 128, 128\]\), but resnet50 expects \[3, 3, 128, 128\] for '
                     r'params/backbone/layer2_1/conv2/kernel'):
    convert_pretrained('resnet50', bad)
  bad = _edited(tmp_path, sd, 'missing', layer3__2__bn2__running_var=None, fc__bias=None)
  with pytest.raises(ValueError, match=r'missing tensors for resnet50: layer3.2.bn2.running_var \(-> '
                     r'batch_stats/backbone/layer3_2/bn2/var \[256\]\), fc.bias'):
    convert_pretrained('resnet50', bad)
  bad = _edited(tmp_path, sd, 'extra', layer4__2__conv4__weight=np.zeros((8, 8, 1, 1), np.float32))
  with pytest.raises(ValueError, match=r'no place for .*layer4.2.conv4.weight \[8, 8, 1, 1\]'):
    convert_pretrained('resnet50', bad)
  with pytest.raises(ValueError, match=r'a torchvision file, but --from=keras_h5'):
    convert_to_checkpoint('keras_h5', 'resnet50', paths['pth'], str(tmp_path / 'out'))


# ------------------------------------------------------------------------------------ checkpoint + transfer

def test_convert_cli_checkpoint_and_transfer(torch_resnet50, tmp_path):
  paths, x, ref, _ = torch_resnet50
  out = str(tmp_path / 'converted')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'launch.convert', '--from=torchvision', '--arch=resnet50',
                         f'--src={paths["pth"]}', f'--out={out}'], cwd=ROOT, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '267 loaded, 53 skipped, 0 newly initialised' in proc.stdout
  assert 'layer4.2.bn3.running_var -> batch_stats/backbone/layer4_2/bn3/var [2048]' in proc.stdout

  # Restorable by orbax alone, no model code.
  import orbax.checkpoint as ocp
  raw = ocp.StandardCheckpointer().restore(os.path.join(out, 'checkpoint'))
  assert set(raw) == {'params', 'batch_stats'} and set(raw['params']) == {'backbone', 'classifier'}

  arch, variables, meta = load_converted(out)
  assert arch == 'resnet50' and meta['preprocessing'] == 'torchvision' and meta['source'] == 'torchvision'
  model = build_classifier(arch, meta['num_classes'])
  assert_same_logits('torchvision resnet50 (launch.convert checkpoint)', model.apply(variables, x, train=False), ref)
  with pytest.raises(FileExistsError, match='already holds converted weights'):
    convert_to_checkpoint('torchvision', 'resnet50', paths['pth'], out)

  face = build_model(arch, num_classes=7, embed_dim=32)
  face_vars = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(
      lambda: face.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))))
  new, report = transfer_backbone(face_vars, variables)
  assert len(report.loaded) == 265 and [s for s, _ in report.skipped] == ['params/classifier/bias',
                                                                          'params/classifier/kernel']
  assert {d.split('/')[1] for d, _, _ in report.initialised} == {'embedding', 'classifier'}
  flat_new = flatten(new)
  for path, v in flatten(variables).items():
    if path.split('/')[1] == 'backbone':
      np.testing.assert_array_equal(flat_new[path], v)
  np.testing.assert_array_equal(flat_new['params/embedding/dense/kernel'], 0)  # heads untouched
  features = face.apply(new, x, method=lambda m, x: m.backbone(x, train=False))
  np.testing.assert_allclose(features, backbone_features(model, variables, x), rtol=1e-6)


def test_transfer_backbone_errors():
  def zeros(name, **kw):
    m = build_model(name, num_classes=3, **kw)
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(
        lambda: m.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))))
  with pytest.raises(ValueError, match=r'pretrained params/backbone/bn1/bias has shape \[32\], '
                     r'the face model expects \[64\]'):
    transfer_backbone(zeros('resnet18'), zeros('resnet18', width=0.5))
  with pytest.raises(ValueError, match=r'lack tensors of the face backbone: params/backbone/fc6/bias \[4096\], '
                     r'params/backbone/fc6/kernel \[512, 4096\]'):
    transfer_backbone(zeros('vgg16'), zeros('vgg16_gap'))
  new, report = transfer_backbone(zeros('vgg16_gap'), zeros('vgg16'))  # fc6/fc7 dropped, reported
  assert {s for s, _ in report.skipped} >= {'params/backbone/fc6/kernel', 'params/backbone/fc7/bias'}
