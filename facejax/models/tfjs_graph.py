"""A TensorFlow.js graph model as a Flax module: the graph's nodes are static structure, its weights are params.

  structure = graph_structure(nodes, weights, inputs, outputs)   # JSON-able; facejax.convert.tfjs reads the files
  model = build_tfjs_model(structure)                  # GraphFaceNet(TfjsGraphNet(...)): a FaceNet with no head
  variables = graph_variables(structure, weights)      # {'params': {'backbone': ...}} from the graph's constants
  model.apply(variables, chips, method='embed')        # [B, H, W, C] float -> [B, D] L2-normalised

`structure` (what a converted run's model.json keeps under kwargs, so `facejax.runs.load_run` rebuilds the model
without the source files): 'inputs' (the one Placeholder), 'outputs' ({signature name: tensor}), 'embedding' (the
output the embedding is), 'nodes' (the non-constant nodes the outputs need, producers first: name, op, input,
attr as in the GraphDef JSON), 'constants' (integer / bool constants such as shapes and axes, with their values)
and 'weights' ({float constant: shape}).

Each conv (Conv2D, DepthwiseConv2dNative and their fused forms) and each MatMul by a float constant runs as an
`nn.Conv` / `nn.Dense` (a fused BiasAdd as its bias), so facejax's inference rewrites (`optimize_for_inference`:
conv lowering, casts) and FLOP counts see the graph's layers as they see any registry model's; every other op maps
to jax.numpy / lax. An op outside `OPS` raises `TfjsFormatError` naming the op and the node. Depthwise convs
(channel multiplier 1, no dilation) run as `facejax.models.mobilenet.depthwise_taps`, k*k shifted multiply-adds:
XLA's CPU backend runs its grouped convolution one to two orders of magnitude slower (MobileFaceNet's 17 depthwise
convs made it slower than dlib's net at a tenth of the FLOPs; docs/installable_models.md).
"""
from __future__ import annotations

import base64
import functools
import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from facejax.models.common import Dtype
from facejax.models.heads import FaceNet
from facejax.models.mobilenet import depthwise_taps

NAME = 'tfjs_graph'  # model.json "name" of a converted graph model
_HIGHEST = lax.Precision.HIGHEST


class TfjsFormatError(ValueError):
  """A model.json / shard set that is not a graph model this reader can evaluate."""


def checkpoint_key(name: str) -> str:
  """Node name -> a flat param key (flax paths and orbax join nested keys with '/' and '.', which names hold)."""
  return name.replace('/', '__').replace('.', '_dot_')


def split_tensor(tensor: str) -> tuple[str, int]:
  """'name:k' -> (name, k); 'name' -> (name, 0)."""
  name, _, k = tensor.rpartition(':')
  if name and k.isdigit():
    return name, int(k)
  return tensor, 0


# ---------------------------------------------------------------------------------------------------------
# Attributes.


def attr(node: dict, key: str, default=None):
  a = node.get('attr', {}).get(key)
  if a is None:
    return default
  if 's' in a:
    return base64.b64decode(a['s']).decode()
  if 'i' in a:
    return int(a['i'])
  if 'f' in a:
    return float(a['f'])
  if 'b' in a:
    return bool(a['b'])
  if 'list' in a:
    lst = a['list']
    if 's' in lst:
      return [base64.b64decode(s).decode() for s in lst['s']]
    if 'i' in lst:
      return [int(i) for i in lst['i']]
    if 'f' in lst:
      return [float(f) for f in lst['f']]
    return []
  if 'type' in a:
    return a['type']
  return default


def _nhwc(node: dict):
  fmt = attr(node, 'data_format', 'NHWC')
  if fmt != 'NHWC':
    raise TfjsFormatError(f'node {node["name"]!r} ({node["op"]}): data_format {fmt!r}; only NHWC is supported')


def _padding(node: dict):
  pad = attr(node, 'padding', 'VALID')
  if pad == 'EXPLICIT':
    e = attr(node, 'explicit_paddings', [])
    return [(e[2], e[3]), (e[4], e[5])]
  if pad not in ('SAME', 'VALID'):
    raise TfjsFormatError(f'node {node["name"]!r} ({node["op"]}): padding {pad!r}')
  return pad


# ---------------------------------------------------------------------------------------------------------
# Ops: each takes (node, list of input values) and returns one value.

CONV_OPS = {'Conv2D': False, '_FusedConv2D': False, 'DepthwiseConv2dNative': True, 'FusedDepthwiseConv2dNative': True}
MATMUL_OPS = ('MatMul', '_FusedMatMul')


def _conv(node, x, w, depthwise: bool):
  _nhwc(node)
  strides, dil = attr(node, 'strides', [1, 1, 1, 1]), attr(node, 'dilations', [1, 1, 1, 1])
  groups = 1
  if depthwise:  # [kh, kw, C, M] -> [kh, kw, 1, C * M], one group per input channel
    kh, kw, c, m = w.shape
    w, groups = w.reshape(kh, kw, 1, c * m), c
  return _conv_impl(depthwise and w.shape[-1] == groups, dil)(
      x, w, tuple(strides[1:3]), _padding(node), rhs_dilation=tuple(dil[1:3]),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups, precision=_HIGHEST)


def _conv_impl(depthwise: bool, dilations):
  """depthwise_taps for a depthwise conv with channel multiplier 1 and no dilation, else lax's convolution."""
  if depthwise and all(d == 1 for d in dilations):
    return depthwise_taps
  return lax.conv_general_dilated


def _matmul(node, a, b):
  if attr(node, 'transpose_a', False):
    a = jnp.swapaxes(a, -1, -2)
  if attr(node, 'transpose_b', False):
    b = jnp.swapaxes(b, -1, -2)
  return jnp.matmul(a, b, precision=_HIGHEST)


def _scalar(v, like):
  """A constant in the activations' dtype: a bare Python number would export to ONNX as a double (jax2onnx traces
  with x64 on) beside float tensors."""
  return jnp.asarray(v, like.dtype)


def _activation(name: str, node, x, alpha=None):
  if name == 'Relu':
    return jnp.maximum(x, _scalar(0, x))
  if name == 'Relu6':
    return jnp.clip(x, _scalar(0, x), _scalar(6, x))
  if name == 'Prelu':
    return jnp.where(x >= 0, x, alpha * x)
  if name == 'LeakyRelu':
    a = attr(node, 'leakyrelu_alpha', attr(node, 'alpha', 0.2))
    return jnp.where(x >= 0, x, _scalar(a, x) * x)
  if name == 'Elu':
    return jax.nn.elu(x)
  if name == 'Sigmoid':
    return jax.nn.sigmoid(x)
  if name == 'Tanh':
    return jnp.tanh(x)
  raise TfjsFormatError(f'node {node["name"]!r} ({node["op"]}): unsupported fused op {name!r}')


def fused_epilogue(node, y, extra: list, skip_bias: bool = False):
  """_FusedConv2D / FusedDepthwiseConv2dNative / _FusedMatMul after the core op: fused_ops in order with the
  extra inputs (bias for BiasAdd, alpha for Prelu) taken in turn; skip_bias: the layer already added the bias."""
  extra = list(extra)
  for k, f in enumerate(attr(node, 'fused_ops', [])):
    if f == 'BiasAdd':
      b = extra.pop(0)
      if not (skip_bias and k == 0):
        y = y + b
    elif f == 'FusedBatchNorm':
      raise TfjsFormatError(f'node {node["name"]!r} ({node["op"]}): fused FusedBatchNorm is not supported')
    else:
      y = _activation(f, node, y, extra.pop(0) if f == 'Prelu' else None)
  return y


def _fused(core):
  return lambda node, args: fused_epilogue(node, core(node, args[0], args[1]), args[2:])


def _static(node, v, what: str) -> np.ndarray:
  if not isinstance(v, np.ndarray):
    raise TfjsFormatError(f'node {node["name"]!r} ({node["op"]}): {what} must be a constant')
  return v


def _reduce(fn):
  def op(node, args):
    axes = _static(node, args[1], 'reduction axes')
    return fn(args[0], axis=tuple(int(a) for a in np.atleast_1d(axes)), keepdims=bool(attr(node, 'keep_dims')))
  return op


def _pool(kind):
  def op(node, args):
    _nhwc(node)
    ks, st = tuple(attr(node, 'ksize')), tuple(attr(node, 'strides'))
    pad = _padding(node)
    x = args[0]
    if kind == 'max':
      return lax.reduce_window(x, _scalar(-np.inf, x), lax.max, ks, st, pad)
    total = lax.reduce_window(x, _scalar(0, x), lax.add, ks, st, pad)
    count = lax.reduce_window(np.ones((1,) + x.shape[1:], x.dtype), _scalar(0, x), lax.add, ks, st, pad)
    return total / count  # TF's AvgPool excludes SAME padding from the count
  return op


def _batch_norm(node, args):
  x, scale, offset, mean, var = args[:5]
  _nhwc(node)
  eps = attr(node, 'epsilon', 1e-3)
  return (x - mean) * (scale / jnp.sqrt(var + _scalar(eps, var))) + offset


def _pad(node, args):
  pads = _static(node, args[1], 'paddings').astype(int)
  value = float(args[2]) if len(args) > 2 else 0.0
  return jnp.pad(args[0], [tuple(p) for p in pads], constant_values=_scalar(value, args[0]))


def _reshape(node, args):
  shape = [int(s) for s in _static(node, args[1], 'shape')]
  return args[0].reshape(shape)


def _squeeze(node, args):
  dims = attr(node, 'squeeze_dims', []) or None
  return jnp.squeeze(args[0], axis=tuple(dims) if dims else None)


def _concat(node, args):
  return jnp.concatenate(args[:-1], axis=int(_static(node, args[-1], 'axis')))


def _unary(f):
  return lambda node, args: f(args[0])


def _binary(f):
  return lambda node, args: f(args[0], args[1])


OP_FUNCTIONS = {
    'Identity': _unary(lambda x: x), 'StopGradient': _unary(lambda x: x),
    'Conv2D': lambda n, a: _conv(n, a[0], a[1], False),
    'DepthwiseConv2dNative': lambda n, a: _conv(n, a[0], a[1], True),
    '_FusedConv2D': _fused(lambda n, x, w: _conv(n, x, w, False)),
    'FusedDepthwiseConv2dNative': _fused(lambda n, x, w: _conv(n, x, w, True)),
    'MatMul': lambda n, a: _matmul(n, a[0], a[1]), '_FusedMatMul': _fused(_matmul),
    'BiasAdd': _binary(jnp.add), 'Add': _binary(jnp.add), 'AddV2': _binary(jnp.add), 'Sub': _binary(jnp.subtract),
    'Mul': _binary(jnp.multiply), 'RealDiv': _binary(jnp.divide), 'Div': _binary(jnp.divide),
    'Maximum': _binary(jnp.maximum), 'Minimum': _binary(jnp.minimum),
    'SquaredDifference': _binary(lambda x, y: jnp.square(x - y)),
    'Abs': _unary(jnp.abs), 'Neg': _unary(jnp.negative), 'Square': _unary(jnp.square), 'Sqrt': _unary(jnp.sqrt),
    'Rsqrt': _unary(lax.rsqrt), 'Exp': _unary(jnp.exp), 'Sigmoid': _unary(jax.nn.sigmoid),
    'Tanh': _unary(jnp.tanh), 'Relu': lambda n, a: _activation('Relu', n, a[0]),
    'Relu6': lambda n, a: _activation('Relu6', n, a[0]), 'Elu': _unary(jax.nn.elu),
    'Softmax': _unary(lambda x: jax.nn.softmax(x, axis=-1)),
    'Prelu': lambda n, a: _activation('Prelu', n, a[0], a[1]),
    'LeakyRelu': lambda n, a: _activation('LeakyRelu', n, a[0]),
    'FusedBatchNorm': _batch_norm, 'FusedBatchNormV2': _batch_norm, 'FusedBatchNormV3': _batch_norm,
    'Sum': _reduce(jnp.sum), 'Mean': _reduce(jnp.mean), 'Max': _reduce(jnp.max), 'Min': _reduce(jnp.min),
    'MaxPool': _pool('max'), 'AvgPool': _pool('avg'),
    'Pad': _pad, 'PadV2': _pad, 'Reshape': _reshape, 'Squeeze': _squeeze, 'ConcatV2': _concat,
}
OPS = ('Placeholder', 'Const') + tuple(OP_FUNCTIONS)


# ---------------------------------------------------------------------------------------------------------
# The structure: what of a graph the module keeps.


def evaluation_order(nodes: list[dict], outputs: list[str], source: str = 'graph') -> list[dict]:
  """The nodes the `outputs` depend on, producers first; checks every op is supported."""
  by_name = {n['name']: n for n in nodes}
  order, state = [], {}
  for out in outputs:
    stack = [(split_tensor(out)[0], False)]
    while stack:
      name, done = stack.pop()
      if done:
        if state[name] != 2:
          state[name] = 2
          order.append(by_name[name])
        continue
      if state.get(name) == 2:
        continue
      if state.get(name) == 1:
        raise TfjsFormatError(f'{source}: the graph has a cycle through node {name!r}')
      if name not in by_name:
        raise TfjsFormatError(f'{source}: a node consumes {name!r}, which no node produces')
      node = by_name[name]
      if node['op'] not in OPS:
        raise TfjsFormatError(f'{source}: node {name!r}: op {node["op"]!r} is not supported by '
                              f'facejax.models.tfjs_graph (supported: {", ".join(OPS)})')
      state[name] = 1
      stack.append((name, True))
      for i in reversed(node.get('input', [])):
        if not i.startswith('^'):
          dep = split_tensor(i)[0]
          if state.get(dep) != 2:
            stack.append((dep, False))
  return order


def graph_structure(nodes: list[dict], weights: dict[str, np.ndarray], inputs: list[str], outputs: dict[str, str],
                    embedding: str | None = None, source: str = 'graph') -> dict:
  """GraphDef nodes + constants ({Const name: array}, dequantised) -> the JSON-able structure (module docstring).
  `embedding`: the output name the embedding is (default: the only output)."""
  order = evaluation_order(nodes, list(outputs.values()), source)
  placeholders = [n['name'] for n in order if n['op'] == 'Placeholder']
  if len(placeholders) != 1:
    raise TfjsFormatError(f'{source}: expected one input (Placeholder) for the outputs {sorted(outputs)}, got '
                          f'{placeholders or "none"}')
  embedding = embedding or (next(iter(outputs)) if len(outputs) == 1 else None)
  if embedding not in outputs:
    raise TfjsFormatError(f'{source}: embedding output {embedding!r}: expected one of the graph\'s outputs '
                          f'{sorted(outputs)}')
  constants, floats, kept = {}, {}, []
  for n in order:
    if n['op'] == 'Placeholder':
      continue
    if n['op'] == 'Const':
      w = np.asarray(weights[n['name']])
      if w.dtype == np.float32:
        floats[n['name']] = list(w.shape)
      else:
        constants[n['name']] = {'dtype': str(w.dtype), 'shape': list(w.shape), 'value': w.ravel().tolist()}
      continue
    for i in n.get('input', []):
      if not i.startswith('^') and split_tensor(i)[1] != 0:
        raise TfjsFormatError(f'{source}: node {n["name"]!r} reads output {i!r}; only output 0 is supported')
    kept.append({k: n[k] for k in ('name', 'op', 'input', 'attr') if k in n})
  for n in kept:  # control edges carry no data
    n['input'] = [i for i in n.get('input', []) if not i.startswith('^')]
  structure = {'inputs': placeholders, 'outputs': dict(outputs), 'embedding': embedding, 'nodes': kept,
               'constants': constants, 'weights': floats}
  keys = [checkpoint_key(k) for k in _plan(structure_json(structure))['param_keys']]
  if len(set(keys)) != len(keys):
    raise TfjsFormatError(f'{source}: node names collide as param keys')
  return structure


def structure_json(structure: dict | str) -> str:
  """The canonical string form a TfjsGraphNet holds (hashable, as flax module fields should be)."""
  return structure if isinstance(structure, str) else json.dumps(structure, sort_keys=True, separators=(',', ':'))


@functools.lru_cache(maxsize=16)
def _plan(structure: str) -> dict:
  """Parsed structure + which nodes run as nn.Conv / nn.Dense layers: {'layers': {node: {'kind', 'kernel', 'bias'}},
  'param_keys': [node or constant names holding params], 'absorbed': {constant names inside a layer}}."""
  s = json.loads(structure)
  uses: dict[str, int] = {}
  for n in s['nodes']:
    for i in n['input']:
      uses[split_tensor(i)[0]] = uses.get(split_tensor(i)[0], 0) + 1
  layers, absorbed = {}, set()
  once = lambda name: name in s['weights'] and uses.get(name) == 1
  for n in s['nodes']:
    inputs, op = n['input'], n['op']
    if op in CONV_OPS:
      kind = 'conv'
    elif op in MATMUL_OPS and not attr(n, 'transpose_a', False):
      kind = 'dense'
    else:
      continue
    if len(inputs) < 2 or not once(split_tensor(inputs[1])[0]):
      continue  # a weight shared or computed: the plain op
    fused = attr(n, 'fused_ops', []) if op.startswith(('_Fused', 'Fused')) else []
    bias = split_tensor(inputs[2])[0] if fused[:1] == ['BiasAdd'] and len(inputs) > 2 else None
    bias = bias if bias and once(bias) else None
    if bias is None and fused[:1] == ['BiasAdd']:
      continue
    layers[n['name']] = {'kind': kind, 'kernel': split_tensor(inputs[1])[0], 'bias': bias,
                         'depthwise': CONV_OPS.get(op, False)}
    absorbed.update(k for k in (layers[n['name']]['kernel'], bias) if k)
  param_keys = list(layers) + [k for k in s['weights'] if k not in absorbed]
  return {'structure': s, 'layers': layers, 'absorbed': absorbed, 'param_keys': param_keys}


def graph_variables(structure: dict | str, weights: dict[str, np.ndarray]) -> dict:
  """The graph's float constants -> TfjsGraphNet variables {'params': {key: array | {'kernel', 'bias'}}}; conv
  kernels as nn.Conv holds them (depthwise [kh, kw, C, M] -> [kh, kw, 1, C * M]), MatMul kernels as nn.Dense
  (transpose_b applied)."""
  plan = _plan(structure_json(structure))
  nodes = {n['name']: n for n in plan['structure']['nodes']}
  params = {}
  for name, layer in plan['layers'].items():
    k = np.asarray(weights[layer['kernel']], np.float32)
    if layer['depthwise']:
      k = k.reshape(k.shape[0], k.shape[1], 1, -1)
    if layer['kind'] == 'dense' and attr(nodes[name], 'transpose_b', False):
      k = k.T
    params[checkpoint_key(name)] = {'kernel': k, **({'bias': np.asarray(weights[layer['bias']], np.float32)}
                                                    if layer['bias'] else {})}
  for name in plan['param_keys']:
    if name not in plan['layers']:
      params[checkpoint_key(name)] = np.asarray(weights[name], np.float32)
  return {'params': params}


class TfjsGraphNet(nn.Module):
  """`[B, H, W, C]` float (the graph's input, after `Preprocessing.apply`) -> the graph's embedding output (or, with
  all_outputs=True, {signature name: array} of every output)."""
  structure: str  # structure_json(graph_structure(...))
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False, all_outputs: bool = False):
    del train  # a converted graph has no training mode
    plan = _plan(self.structure)
    s = plan['structure']
    values: dict[str, Any] = {s['inputs'][0]: jnp.asarray(x, jnp.float32)}
    for name, c in s['constants'].items():
      values[name] = np.asarray(c['value'], c['dtype']).reshape(c['shape'])
    for name, shape in s['weights'].items():
      if name not in plan['absorbed']:
        values[name] = self.param(checkpoint_key(name), nn.initializers.zeros, tuple(shape), jnp.float32)
    for node in s['nodes']:
      name, op = node['name'], node['op']
      try:
        # A layer's kernel and bias are its own params: None in their places.
        args = [values.get(split_tensor(i)[0]) if split_tensor(i)[0] in plan['absorbed'] else
                values[split_tensor(i)[0]] for i in node['input']]
        layer = plan['layers'].get(name)
        values[name] = OP_FUNCTIONS[op](node, args) if layer is None else self._layer(node, layer, args)
      except TfjsFormatError:
        raise
      except Exception as e:  # a shape mismatch etc.: say where
        raise TfjsFormatError(f'node {name!r} ({op}) failed: {e}') from e
    if all_outputs:
      return {k: values[split_tensor(t)[0]] for k, t in s['outputs'].items()}
    return values[split_tensor(s['outputs'][s['embedding']])[0]]

  def _layer(self, node, layer, args):
    kernel_shape = self._kernel_shape(layer)
    name, use_bias = checkpoint_key(node['name']), layer['bias'] is not None
    if layer['kind'] == 'dense':
      features = kernel_shape[0] if attr(node, 'transpose_b', False) else kernel_shape[-1]
      y = nn.Dense(features, use_bias=use_bias, dtype=self.dtype, precision=_HIGHEST, name=name)(args[0])
    else:
      _nhwc(node)
      strides, dil = attr(node, 'strides', [1, 1, 1, 1]), attr(node, 'dilations', [1, 1, 1, 1])
      groups = args[0].shape[-1] if layer['depthwise'] else 1
      y = nn.Conv(kernel_shape[-1], tuple(kernel_shape[:2]), tuple(strides[1:3]), _padding(node),
                  kernel_dilation=tuple(dil[1:3]), feature_group_count=groups, use_bias=use_bias, dtype=self.dtype,
                  precision=_HIGHEST, name=name,
                  conv_general_dilated=_conv_impl(groups > 1 and kernel_shape[-1] == groups, dil))(args[0])
    return fused_epilogue(node, y.astype(jnp.float32), args[2:], skip_bias=use_bias)

  def _kernel_shape(self, layer) -> list[int]:
    shape = list(_plan(self.structure)['structure']['weights'][layer['kernel']])
    if layer['depthwise']:
      return shape[:2] + [1, shape[2] * shape[3]]
    return shape


class IdentityHead(nn.Module):
  """The embedding head of a converted graph: its output is the embedding already."""

  def __call__(self, x, train: bool = False):
    return x


class GraphFaceNet(FaceNet):
  """FaceNet's interface (`forward`, `embed`, `backbone`, `embedding`) over a converted graph: the backbone is the
  whole graph and the head is the identity, so every facejax tool takes it as it takes a trained run."""

  def setup(self):
    if self.num_classes:
      raise ValueError(f'a converted graph model has no identity classifier: expected num_classes=0, got '
                       f'{self.num_classes}')
    self.embedding = IdentityHead()

  def __call__(self, x, train: bool = False):
    return self.embed(x, train)


def build_tfjs_model(structure: dict | str, num_classes: int = 0, embed_dim: int = 0, dtype: Any = jnp.float32,
                     **ignored) -> GraphFaceNet:
  """model.json kwargs -> GraphFaceNet (`facejax.models.build_model('tfjs_graph', ...)`); embed_dim is the graph's
  and only recorded, dropout / classifier do not apply."""
  del embed_dim, ignored
  return GraphFaceNet(TfjsGraphNet(structure_json(structure), dtype=dtype), num_classes=num_classes)
