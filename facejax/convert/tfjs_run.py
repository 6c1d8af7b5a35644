"""A converted TensorFlow.js graph model on disk: `launch.convert --from=tfjs --src=M.json --out=DIR`.

  convert_tfjs('human-models/models/mobilefacenet.json', 'runs/tfjs/mobilefacenet')
  fn, params, meta = load_tfjs_run('runs/tfjs/mobilefacenet')   # fn(params, chips) -> {output name: array}

  DIR/graph/<name>.json            the source model.json, unchanged (the graph the function is built from)
  DIR/checkpoints/0/state          orbax: {'params': {'graph': {key: float32 array}}}, dequantised weights
  DIR/tfjs.json                    written last: source path, sha256 of model.json and shards, ops, inputs, outputs
                                   (signature name -> tensor), input shape, params, the checkpoint key of each weight
  DIR/config.json                  {'task': 'convert', 'source': 'tfjs', ...}

There is no model.json yet: `facejax.runs.build_from_info` builds models from `facejax.models.MODELS`, which has
no graph-model entry, so launch.evaluate / embed do not take DIR until one is registered.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from facejax.convert.tfjs import TfjsFormatError, read_tfjs_graph, tfjs_function

META = 'tfjs.json'


def checkpoint_key(name: str) -> str:
  """Const node name -> a flat checkpoint key (orbax joins nested keys with '.', and names hold '/')."""
  return name.replace('/', '__').replace('.', '_dot_')


def _input_shape(graph) -> list[int] | None:
  for n in graph.nodes:
    if n['op'] == 'Placeholder':
      dims = n.get('attr', {}).get('shape', {}).get('shape', {}).get('dim')
      return [int(d.get('size', -1)) for d in dims] if dims else None
  return None


def convert_tfjs(src: str, out: str, overwrite: bool = False) -> dict:
  """`src` model.json (+ shards beside it) -> directory `out` (module docstring). Returns the tfjs.json dict."""
  import orbax.checkpoint as ocp
  from facejax.runs import checkpoint_dir
  if not src:
    raise ValueError('--src: the model.json of a TensorFlow.js graph model is required (its shards sit beside it)')
  out = os.path.abspath(out)
  if os.path.exists(os.path.join(out, META)) and not overwrite:
    raise FileExistsError(f'{out}: already holds a converted tfjs model ({META}); pass overwrite=True (--overwrite)')
  graph = read_tfjs_graph(src)
  fn, params = tfjs_function(graph)  # fails here, naming op and node, on an unsupported graph
  keys = {name: checkpoint_key(name) for name in params}
  if len(set(keys.values())) != len(keys):
    raise TfjsFormatError(f'{src}: weight names collide as checkpoint keys')
  with open(src) as f:
    model = json.load(f)
  os.makedirs(os.path.join(out, 'graph'), exist_ok=True)
  if os.path.exists(os.path.join(out, META)):
    os.remove(os.path.join(out, META))
  digests = {}
  sources = [src] + [os.path.join(os.path.dirname(os.path.abspath(src)), p)
                     for g in model['weightsManifest'] for p in g['paths']]
  for path in sources:
    with open(path, 'rb') as f:
      data = f.read()
    digests[os.path.basename(path)] = hashlib.sha256(data).hexdigest()
    with open(os.path.join(out, 'graph', os.path.basename(path)), 'wb') as f:
      f.write(data)
  state = {'params': {'graph': {keys[k]: np.asarray(v, np.float32) for k, v in params.items()}}}
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(checkpoint_dir(out), '0', 'state'), state, force=overwrite)
  checkpointer.wait_until_finished()
  checkpointer.close()
  meta = {'source': 'tfjs', 'src': os.path.abspath(src), 'graph': os.path.join('graph', os.path.basename(src)),
          'sha256': digests, **graph.meta, 'ops': graph.ops(), 'inputs': graph.inputs, 'outputs': graph.outputs,
          'input_shape': _input_shape(graph), 'params': int(sum(v.size for v in state['params']['graph'].values())),
          'checkpoint_keys': keys}
  with open(os.path.join(out, 'config.json'), 'w') as f:
    json.dump({'task': 'convert', 'source': 'tfjs', 'src': meta['src'], 'sha256': digests}, f, indent=2)
  with open(os.path.join(out, META), 'w') as f:
    json.dump(meta, f, indent=1)
  return meta


def load_tfjs_run(path: str):
  """DIR written by `convert_tfjs` -> (fn, params, meta): fn(params, *inputs) -> {output name: array}, params the
  checkpoint's weights (the graph's float constants) by Const node name."""
  import jax.numpy as jnp
  from facejax.runs import restore_variables
  meta_path = os.path.join(path, META)
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f'{meta_path}: not a converted tfjs model (launch.convert --from=tfjs writes it)')
  with open(meta_path) as f:
    meta = json.load(f)
  graph_json = os.path.join(path, meta['graph'])
  # Structure only: the float weights come from the checkpoint, integer constants (shapes, axes) from the shards.
  graph = read_tfjs_graph(graph_json)
  stored = restore_variables(path)['params']['graph']
  params = {}
  for name, key in meta['checkpoint_keys'].items():
    if key not in stored:
      raise FileNotFoundError(f'{path}: checkpoint lacks weight {name!r} (key {key!r})')
    params[name] = jnp.asarray(stored[key])
  fn, _ = tfjs_function(graph, meta['outputs'])
  return fn, params, meta
