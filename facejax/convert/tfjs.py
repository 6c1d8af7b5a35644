"""TensorFlow.js graph models (`model.json` + weight shards) -> a pure `jax.numpy` function, without TensorFlow or Node.

  graph = read_tfjs_graph('human-models/models/mobilefacenet.json')   # nodes + weights (numpy)
  fn, params = tfjs_function(graph)        # fn(params, images [B, H, W, C] float32) -> {output name: array}
  jax.jit(fn)(params, chips)['embeddings']                             # [B, 192], L2-normalised

The files (tfjs-converter's `graph-model` format):
- model.json: `modelTopology.node` is TensorFlow's GraphDef as JSON: each node has `name`, `op`, `input` (producer
  names, optionally `:k` for output k, `^name` for control edges) and `attr` (strings base64-encoded, ints as
  decimal strings). `weightsManifest` is a list of groups {paths, weights}; a group's shards concatenated hold its
  weights back to back, each `{name, shape, dtype}` plus an optional `quantization`: float16 (stored as IEEE
  half), or uint8 / uint16 with `scale` and `min` (value = q * scale + min).
- Weights fill the graph's `Const` nodes by name; the graph's inputs are its `Placeholder`s, its outputs the
  signature's (`signature` or `userDefinedMetadata.signature`), else the nodes nothing consumes.

The evaluator walks the node list in dependency order and maps each op to jax.numpy / lax; an op outside `OPS`
raises `TfjsFormatError` naming the op and the node.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os

import numpy as np


class TfjsFormatError(ValueError):
  """A model.json / shard set that is not a graph model this reader can evaluate."""


_DTYPES = {'float32': np.float32, 'int32': np.int32, 'bool': np.bool_, 'float16': np.float16,
           'uint8': np.uint8, 'uint16': np.uint16}


@dataclasses.dataclass
class TfjsGraph:
  path: str
  nodes: list[dict]  # modelTopology.node
  weights: dict[str, np.ndarray]  # dequantised: float32 / int32 / bool
  inputs: list[str]  # Placeholder node names
  outputs: dict[str, str]  # signature name -> tensor ('node' or 'node:k')
  meta: dict  # format, generatedBy, convertedBy, quantization per weight

  def ops(self) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in self.nodes:
      counts[n['op']] = counts.get(n['op'], 0) + 1
    return counts

  def num_params(self) -> int:
    return int(sum(w.size for w in self.weights.values() if w.dtype == np.float32))


def read_weights(manifest: list[dict], base_dir: str, source: str = '') -> tuple[dict, dict]:
  """weightsManifest + shard files in `base_dir` -> ({name: array}, {name: quantization dict})."""
  weights, quant = {}, {}
  for g, group in enumerate(manifest):
    chunks = []
    for p in group['paths']:
      shard = os.path.join(base_dir, p)
      if not os.path.isfile(shard):
        raise TfjsFormatError(f'{source}: weight shard {shard} (group {g}) is missing')
      with open(shard, 'rb') as f:
        chunks.append(f.read())
    data, pos = b''.join(chunks), 0
    for w in group['weights']:
      shape = [int(d) for d in w['shape']]
      q = w.get('quantization')
      stored = q['dtype'] if q else w['dtype']
      if stored not in _DTYPES:
        raise TfjsFormatError(f'{source}: weight {w["name"]!r}: unsupported dtype {stored!r}')
      dt = np.dtype(_DTYPES[stored]).newbyteorder('<')
      count = int(np.prod(shape, dtype=np.int64))
      nbytes = count * dt.itemsize
      if pos + nbytes > len(data):
        raise TfjsFormatError(f'{source}: weight {w["name"]!r} {shape} {stored} needs bytes {pos}..{pos + nbytes} '
                              f'of group {g}, whose shards hold {len(data)}; truncated shard?')
      raw = np.frombuffer(data, dt, count, pos).reshape(shape)
      pos += nbytes
      if q and stored in ('uint8', 'uint16'):
        arr = raw.astype(np.float32) * np.float32(q['scale']) + np.float32(q['min'])
        if w['dtype'] == 'int32':
          arr = np.round(arr).astype(np.int32)
      elif q:  # float16
        arr = raw.astype(np.float32)
      else:
        arr = raw.astype(_DTYPES[w['dtype']])
      weights[w['name']] = arr
      if q:
        quant[w['name']] = dict(q)
    if pos != len(data):
      raise TfjsFormatError(f'{source}: group {g}: weights use {pos} bytes, shards hold {len(data)}')
  return weights, quant


def read_tfjs_graph(path: str) -> TfjsGraph:
  """model.json path -> TfjsGraph (weights read from the shards beside it)."""
  with open(path) as f:
    model = json.load(f)
  if model.get('format', 'graph-model') != 'graph-model' or 'node' not in model.get('modelTopology', {}):
    raise TfjsFormatError(f'{path}: expected a tfjs graph model (format "graph-model", modelTopology.node), got '
                          f'format {model.get("format")!r} (layers models are not supported)')
  nodes = model['modelTopology']['node']
  weights, quant = read_weights(model.get('weightsManifest', []), os.path.dirname(os.path.abspath(path)), path)
  names = {n['name'] for n in nodes}
  for n in nodes:
    if n['op'] == 'Const' and n['name'] not in weights:
      raise TfjsFormatError(f'{path}: Const node {n["name"]!r} has no weight in weightsManifest')
  signature = model.get('signature') or model.get('userDefinedMetadata', {}).get('signature') or {}
  outputs = {k: v.get('name', k) for k, v in signature.get('outputs', {}).items()}
  if not outputs:
    consumed = {_split(i)[0] for n in nodes for i in n.get('input', [])}
    outputs = {n['name']: n['name'] for n in nodes if n['name'] not in consumed and n['op'] != 'Const'}
  for k, t in outputs.items():
    if _split(t)[0] not in names:
      raise TfjsFormatError(f'{path}: signature output {k!r} names tensor {t!r}, which no node produces')
  inputs = [n['name'] for n in nodes if n['op'] == 'Placeholder']
  meta = {k: model[k] for k in ('format', 'generatedBy', 'convertedBy') if k in model}
  meta['quantization'] = quant
  return TfjsGraph(os.path.abspath(path), nodes, weights, inputs, outputs, meta)


def _split(tensor: str) -> tuple[str, int]:
  """'name:k' -> (name, k); 'name' -> (name, 0)."""
  name, _, k = tensor.rpartition(':')
  if name and k.isdigit():
    return name, int(k)
  return tensor, 0


# ---------------------------------------------------------------------------------------------------------
# Attributes.


def _attr(node: dict, key: str, default=None):
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
  fmt = _attr(node, 'data_format', 'NHWC')
  if fmt != 'NHWC':
    raise TfjsFormatError(f'node {node["name"]!r} ({node["op"]}): data_format {fmt!r}; only NHWC is supported')


def _padding(node: dict):
  pad = _attr(node, 'padding', 'VALID')
  if pad == 'EXPLICIT':
    e = _attr(node, 'explicit_paddings', [])
    return [(e[2], e[3]), (e[4], e[5])]
  if pad not in ('SAME', 'VALID'):
    raise TfjsFormatError(f'node {node["name"]!r} ({node["op"]}): padding {pad!r}')
  return pad


# ---------------------------------------------------------------------------------------------------------
# Ops: each takes (node, list of input values) and returns one value.


def _conv(node, x, w, depthwise: bool):
  from jax import lax
  _nhwc(node)
  strides, dil = _attr(node, 'strides', [1, 1, 1, 1]), _attr(node, 'dilations', [1, 1, 1, 1])
  groups = 1
  if depthwise:  # [kh, kw, C, M] -> [kh, kw, 1, C * M], one group per input channel
    kh, kw, c, m = w.shape
    w, groups = w.reshape(kh, kw, 1, c * m), c
  return lax.conv_general_dilated(x, w, tuple(strides[1:3]), _padding(node), rhs_dilation=tuple(dil[1:3]),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups,
                                  precision=lax.Precision.HIGHEST)


def _matmul(node, a, b):
  import jax.numpy as jnp
  from jax import lax
  if _attr(node, 'transpose_a', False):
    a = jnp.swapaxes(a, -1, -2)
  if _attr(node, 'transpose_b', False):
    b = jnp.swapaxes(b, -1, -2)
  return jnp.matmul(a, b, precision=lax.Precision.HIGHEST)


def _activation(name: str, node, x, alpha=None):
  import jax
  import jax.numpy as jnp
  if name == 'Relu':
    return jnp.maximum(x, 0)
  if name == 'Relu6':
    return jnp.clip(x, 0, 6)
  if name == 'Prelu':
    return jnp.where(x >= 0, x, alpha * x)
  if name == 'LeakyRelu':
    a = _attr(node, 'leakyrelu_alpha', _attr(node, 'alpha', 0.2))
    return jnp.where(x >= 0, x, a * x)
  if name == 'Elu':
    return jax.nn.elu(x)
  if name == 'Sigmoid':
    return jax.nn.sigmoid(x)
  if name == 'Tanh':
    return jnp.tanh(x)
  raise TfjsFormatError(f'node {node["name"]!r} ({node["op"]}): unsupported fused op {name!r}')


def _fused(core):
  """_FusedConv2D / FusedDepthwiseConv2dNative / _FusedMatMul: core op, then fused_ops in order with the extra
  inputs (bias for BiasAdd, alpha for Prelu) taken in turn."""
  def op(node, args):
    y = core(node, args[0], args[1])
    extra = list(args[2:])
    for f in _attr(node, 'fused_ops', []):
      if f == 'BiasAdd':
        y = y + extra.pop(0)
      elif f == 'FusedBatchNorm':
        raise TfjsFormatError(f'node {node["name"]!r} ({node["op"]}): fused FusedBatchNorm is not supported')
      else:
        y = _activation(f, node, y, extra.pop(0) if f == 'Prelu' else None)
    return y
  return op


def _static(node, v, what: str) -> np.ndarray:
  if not isinstance(v, np.ndarray):
    raise TfjsFormatError(f'node {node["name"]!r} ({node["op"]}): {what} must be a constant')
  return v


def _reduce(fn):
  def op(node, args):
    axes = _static(node, args[1], 'reduction axes')
    return fn(args[0], axis=tuple(int(a) for a in np.atleast_1d(axes)), keepdims=bool(_attr(node, 'keep_dims')))
  return op


def _pool(kind):
  def op(node, args):
    from jax import lax
    _nhwc(node)
    ks, st = tuple(_attr(node, 'ksize')), tuple(_attr(node, 'strides'))
    pad = _padding(node)
    x = args[0]
    if kind == 'max':
      return lax.reduce_window(x, -np.inf, lax.max, ks, st, pad)
    total = lax.reduce_window(x, 0.0, lax.add, ks, st, pad)
    count = lax.reduce_window(np.ones((1,) + x.shape[1:], x.dtype), 0.0, lax.add, ks, st, pad)
    return total / count  # TF's AvgPool excludes SAME padding from the count
  return op


def _batch_norm(node, args):
  import jax.numpy as jnp
  x, scale, offset, mean, var = args[:5]
  _nhwc(node)
  eps = _attr(node, 'epsilon', 1e-3)
  return (x - mean) * (scale / jnp.sqrt(var + eps)) + offset


def _pad(node, args):
  import jax.numpy as jnp
  pads = _static(node, args[1], 'paddings').astype(int)
  value = float(args[2]) if len(args) > 2 else 0.0
  return jnp.pad(args[0], [tuple(p) for p in pads], constant_values=value)


def _reshape(node, args):
  shape = [int(s) for s in _static(node, args[1], 'shape')]
  return args[0].reshape(shape)


def _squeeze(node, args):
  import jax.numpy as jnp
  dims = _attr(node, 'squeeze_dims', []) or None
  return jnp.squeeze(args[0], axis=tuple(dims) if dims else None)


def _concat(node, args):
  import jax.numpy as jnp
  return jnp.concatenate(args[:-1], axis=int(_static(node, args[-1], 'axis')))


def _ops() -> dict:
  import jax
  import jax.numpy as jnp

  def unary(f):
    return lambda node, args: f(args[0])

  def binary(f):
    return lambda node, args: f(args[0], args[1])

  return {
      'Identity': unary(lambda x: x), 'StopGradient': unary(lambda x: x),
      'Conv2D': lambda n, a: _conv(n, a[0], a[1], False),
      'DepthwiseConv2dNative': lambda n, a: _conv(n, a[0], a[1], True),
      '_FusedConv2D': _fused(lambda n, x, w: _conv(n, x, w, False)),
      'FusedDepthwiseConv2dNative': _fused(lambda n, x, w: _conv(n, x, w, True)),
      'MatMul': lambda n, a: _matmul(n, a[0], a[1]), '_FusedMatMul': _fused(_matmul),
      'BiasAdd': binary(jnp.add), 'Add': binary(jnp.add), 'AddV2': binary(jnp.add), 'Sub': binary(jnp.subtract),
      'Mul': binary(jnp.multiply), 'RealDiv': binary(jnp.divide), 'Div': binary(jnp.divide),
      'Maximum': binary(jnp.maximum), 'Minimum': binary(jnp.minimum),
      'SquaredDifference': binary(lambda x, y: jnp.square(x - y)),
      'Abs': unary(jnp.abs), 'Neg': unary(jnp.negative), 'Square': unary(jnp.square), 'Sqrt': unary(jnp.sqrt),
      'Rsqrt': unary(jax.lax.rsqrt), 'Exp': unary(jnp.exp), 'Sigmoid': unary(jax.nn.sigmoid),
      'Tanh': unary(jnp.tanh), 'Relu': unary(lambda x: jnp.maximum(x, 0)), 'Relu6': unary(lambda x: jnp.clip(x, 0, 6)),
      'Elu': unary(jax.nn.elu), 'Softmax': unary(lambda x: jax.nn.softmax(x, axis=-1)),
      'Prelu': lambda n, a: _activation('Prelu', n, a[0], a[1]),
      'LeakyRelu': lambda n, a: _activation('LeakyRelu', n, a[0]),
      'FusedBatchNorm': _batch_norm, 'FusedBatchNormV2': _batch_norm, 'FusedBatchNormV3': _batch_norm,
      'Sum': _reduce(jnp.sum), 'Mean': _reduce(jnp.mean), 'Max': _reduce(jnp.max), 'Min': _reduce(jnp.min),
      'MaxPool': _pool('max'), 'AvgPool': _pool('avg'),
      'Pad': _pad, 'PadV2': _pad, 'Reshape': _reshape, 'Squeeze': _squeeze, 'ConcatV2': _concat,
  }


OPS = ('Placeholder', 'Const', 'Identity', 'StopGradient', 'Conv2D', 'DepthwiseConv2dNative', '_FusedConv2D',
       'FusedDepthwiseConv2dNative', 'MatMul', '_FusedMatMul', 'BiasAdd', 'Add', 'AddV2', 'Sub', 'Mul', 'RealDiv',
       'Div', 'Maximum', 'Minimum', 'SquaredDifference', 'Abs', 'Neg', 'Square', 'Sqrt', 'Rsqrt', 'Exp', 'Sigmoid',
       'Tanh', 'Relu', 'Relu6', 'Elu', 'Softmax', 'Prelu', 'LeakyRelu', 'FusedBatchNorm', 'FusedBatchNormV2',
       'FusedBatchNormV3', 'Sum', 'Mean', 'Max', 'Min', 'MaxPool', 'AvgPool', 'Pad', 'PadV2', 'Reshape', 'Squeeze',
       'ConcatV2')


def evaluation_order(graph: TfjsGraph, outputs: list[str]) -> list[dict]:
  """The nodes the `outputs` depend on, producers first; checks every op is supported."""
  by_name = {n['name']: n for n in graph.nodes}
  order, state = [], {}
  for out in outputs:
    stack = [(_split(out)[0], False)]
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
        raise TfjsFormatError(f'{graph.path}: the graph has a cycle through node {name!r}')
      if name not in by_name:
        raise TfjsFormatError(f'{graph.path}: a node consumes {name!r}, which no node produces')
      node = by_name[name]
      if node['op'] not in OPS:
        raise TfjsFormatError(f'{graph.path}: node {name!r}: op {node["op"]!r} is not supported by '
                              f'facejax.convert.tfjs (supported: {", ".join(OPS)})')
      state[name] = 1
      stack.append((name, True))
      for i in reversed(node.get('input', [])):
        if not i.startswith('^'):
          dep = _split(i)[0]
          if state.get(dep) != 2:
            stack.append((dep, False))
  return order


def tfjs_function(graph: TfjsGraph, outputs: dict[str, str] | None = None):
  """-> (fn, params): fn(params, *inputs) -> {output name: array}, pure jax.numpy (jit / vmap / grad all apply).
  `params` holds the float weights (jax arrays); integer constants (shapes, paddings, axes) stay numpy, static.
  Inputs follow `graph.inputs` (Placeholders, in node order)."""
  import jax.numpy as jnp
  outputs = dict(outputs or graph.outputs)
  order = evaluation_order(graph, list(outputs.values()))
  ops = _ops()
  static = {k: v for k, v in graph.weights.items() if v.dtype != np.float32}
  params = {n['name']: jnp.asarray(graph.weights[n['name']]) for n in order
            if n['op'] == 'Const' and n['name'] not in static}
  placeholders = [n for n in graph.inputs if any(o['name'] == n for o in order)]

  def fn(params, *inputs):
    if len(inputs) != len(placeholders):
      raise TypeError(f'{graph.path}: expected {len(placeholders)} inputs ({placeholders}), got {len(inputs)}')
    values = dict(zip(placeholders, (jnp.asarray(x, jnp.float32) for x in inputs)))
    for node in order:
      name, op = node['name'], node['op']
      if op == 'Placeholder':
        continue
      if op == 'Const':
        values[name] = static[name] if name in static else params[name]
        continue
      args = [values[_split(i)[0]] for i in node.get('input', []) if not i.startswith('^')]
      for i in node.get('input', []):
        if not i.startswith('^') and _split(i)[1] != 0:
          raise TfjsFormatError(f'{graph.path}: node {name!r} reads output {i!r}; only output 0 is supported')
      try:
        values[name] = ops[op](node, args)
      except TfjsFormatError:
        raise
      except Exception as e:  # a shape mismatch etc.: say where
        raise TfjsFormatError(f'{graph.path}: node {name!r} ({op}) failed: {e}') from e
    return {k: values[_split(t)[0]] for k, t in outputs.items()}

  return fn, params
