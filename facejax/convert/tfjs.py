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

Repair (`unfuse_prelu_activations`, on by default): in some published files tfjs-converter fused a conv's
activation into the conv although the pre-activation also fed a PReLU written out in primitive ops
(`relu(x) + alpha * (x - |x|)` with alpha halved: MobileFaceNet_TF's PReLU); the converter left `Abs` and `Sub`
reading the fused, already-activated output, where `x - |x|` is identically 0, so every such PReLU became a ReLU.
TensorFlow.js runs the file as shipped (the equivalence tests compare with `repair=False`); the reader restores the
graph the converter started from: the conv without its activation, the activation as its own node for the
consumers that read it.

This module reads the files; the graph runs as `facejax.models.tfjs_graph.TfjsGraphNet` (the one evaluator: it
walks the nodes in dependency order and maps each op to flax layers / jax.numpy / lax; an op outside `OPS` raises
`TfjsFormatError` naming the op and the node).
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os

import numpy as np

from facejax.models.tfjs_graph import (OPS, TfjsFormatError, TfjsGraphNet, graph_structure,  # noqa: F401 (API)
                                       graph_variables, split_tensor, structure_json)


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


_FUSED_OPS = ('_FusedConv2D', 'FusedDepthwiseConv2dNative', '_FusedMatMul')
_PLAIN_ACTIVATIONS = ('Relu', 'Relu6')  # activations without an extra input (a fused Prelu carries its alpha)


def unfuse_prelu_activations(nodes: list[dict]) -> tuple[list[dict], list[str]]:
  """-> (nodes, repaired): each fused conv / MatMul F whose fused_ops end in a plain activation (Relu, Relu6) and
  which feeds both `A = Abs(F)` and `Sub(F, A)` (a PReLU's `x - |x|`, identically 0 on an activated x) becomes F
  without that activation, plus a node `F/unfused_<act>` that the other consumers of F read. F keeps its name, so
  its weights (and a converted run's param keys) stay where they were. `repaired`: the names of the F changed.
  The node dicts of `nodes` are edited in place (F's fused_ops, its consumers' inputs)."""
  consumers: dict[str, list[dict]] = {}
  for n in nodes:
    for i in n.get('input', []):
      consumers.setdefault(split_tensor(i.lstrip('^'))[0], []).append(n)
  out, repaired = [], []
  for n in nodes:
    fused = _fused_ops(n) if n['op'] in _FUSED_OPS else []
    if not fused or fused[-1] not in _PLAIN_ACTIVATIONS:
      out.append(n)
      continue
    users = consumers.get(n['name'], [])
    abs_of = {u['name'] for u in users if u['op'] == 'Abs' and _reads(u, n['name'], 0)}
    subs = {u['name']: split_tensor(u['input'][1])[0] for u in users
            if u['op'] == 'Sub' and _reads(u, n['name'], 0) and len(u['input']) > 1
            and split_tensor(u['input'][1])[0] in abs_of}
    if not subs:
      out.append(n)
      continue
    pre = set(subs) | set(subs.values())  # the Sub and Abs nodes: they read the pre-activation
    act = f'{n["name"]}/unfused_{fused[-1].lower()}'
    n['attr']['fused_ops']['list']['s'] = n['attr']['fused_ops']['list']['s'][:-1]
    out += [n, {'name': act, 'op': fused[-1], 'input': [n['name']], 'attr': {}}]
    repaired.append(n['name'])
    for u in users:
      if u['name'] not in pre:
        u['input'] = [act if not i.startswith('^') and split_tensor(i)[0] == n['name'] else i for i in u['input']]
  return out, repaired


def _fused_ops(node: dict) -> list[str]:
  return [base64.b64decode(s).decode() for s in node.get('attr', {}).get('fused_ops', {}).get('list', {}).get('s', [])]


def _reads(node: dict, name: str, position: int) -> bool:
  inputs = node.get('input', [])
  return len(inputs) > position and split_tensor(inputs[position])[0] == name


def read_tfjs_graph(path: str, repair: bool = True) -> TfjsGraph:
  """model.json path -> TfjsGraph (weights read from the shards beside it). repair: undo tfjs-converter's
  activation fusion where a PReLU reads the pre-activation (`unfuse_prelu_activations`; the names changed go to
  meta['repaired']); repair=False keeps the graph exactly as TensorFlow.js runs it."""
  with open(path) as f:
    model = json.load(f)
  if model.get('format', 'graph-model') != 'graph-model' or 'node' not in model.get('modelTopology', {}):
    raise TfjsFormatError(f'{path}: expected a tfjs graph model (format "graph-model", modelTopology.node), got '
                          f'format {model.get("format")!r} (layers models are not supported)')
  nodes = model['modelTopology']['node']
  repaired = []
  if repair:
    nodes, repaired = unfuse_prelu_activations(nodes)
  weights, quant = read_weights(model.get('weightsManifest', []), os.path.dirname(os.path.abspath(path)), path)
  names = {n['name'] for n in nodes}
  for n in nodes:
    if n['op'] == 'Const' and n['name'] not in weights:
      raise TfjsFormatError(f'{path}: Const node {n["name"]!r} has no weight in weightsManifest')
  signature = model.get('signature') or model.get('userDefinedMetadata', {}).get('signature') or {}
  outputs = {k: v.get('name', k) for k, v in signature.get('outputs', {}).items()}
  if not outputs:
    consumed = {split_tensor(i)[0] for n in nodes for i in n.get('input', [])}
    outputs = {n['name']: n['name'] for n in nodes if n['name'] not in consumed and n['op'] != 'Const'}
  for k, t in outputs.items():
    if split_tensor(t)[0] not in names:
      raise TfjsFormatError(f'{path}: signature output {k!r} names tensor {t!r}, which no node produces')
  inputs = [n['name'] for n in nodes if n['op'] == 'Placeholder']
  meta = {k: model[k] for k in ('format', 'generatedBy', 'convertedBy') if k in model}
  meta['quantization'] = quant
  meta['repaired'] = repaired
  return TfjsGraph(os.path.abspath(path), nodes, weights, inputs, outputs, meta)


def tfjs_function(graph: TfjsGraph, outputs: dict[str, str] | None = None):
  """-> (fn, params): fn(params, images [B, H, W, C]) -> {output name: array}, pure jax (jit / vmap / grad all
  apply): the graph as `facejax.models.tfjs_graph.TfjsGraphNet` with its weights as params (integer constants:
  shapes, paddings, axes, stay static)."""
  outputs = dict(outputs or graph.outputs)
  structure = graph_structure(graph.nodes, graph.weights, graph.inputs, outputs, next(iter(outputs)), graph.path)
  net = TfjsGraphNet(structure_json(structure))
  params = graph_variables(structure, graph.weights)['params']

  def fn(params, *inputs):
    if len(inputs) != 1:
      raise TypeError(f'{graph.path}: expected 1 input ({structure["inputs"][0]}), got {len(inputs)}')
    try:
      return net.apply({'params': params}, inputs[0], all_outputs=True)
    except TfjsFormatError as e:
      raise TfjsFormatError(f'{graph.path}: {e}') from e

  return fn, params
