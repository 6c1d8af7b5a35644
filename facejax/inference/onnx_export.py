"""A run's embedder as an ONNX model (jax2onnx), for ONNX Runtime, OpenVINO or mobile runtimes.

The graph is the same function `launch.export`'s jax.export artifact holds (`export.embedding_function`):
uint8 RGB `[b, S, S, 3]` (NHWC, dynamic b) -> preprocessing -> network (optionally BN-folded) -> optional flip
TTA -> float32 `[b, D]` L2-normalised, weights baked in. `<path>.json` describes it like the jax.export sidecar.
Needs the `[bench]` extra (jax2onnx, onnx; onnxruntime to check or run it).
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = 'facejax.embedder.onnx/1'
INPUT, OUTPUT = 'images', 'embedding'


def _require(module: str):
  import importlib
  try:
    return importlib.import_module(module)
  except ImportError:
    raise ModuleNotFoundError(f"ONNX export needs {module}: pip install 'facejax[bench]'") from None


def export_onnx(embed_fn, image_size: int, path: str, metadata: dict | None = None, opset: int = 21,
                dtype: str = 'uint8') -> dict:
  """Traces `embed_fn` (`dtype` [b, S, S, 3] -> float32 [b, D]) to ONNX at `path` (dynamic b) -> the sidecar
  dict, also written to `path + '.json'`."""
  to_onnx = _require('jax2onnx').to_onnx
  proto = to_onnx(embed_fn, [jax.ShapeDtypeStruct(('b', image_size, image_size, 3), jnp.dtype(dtype))],
                  model_name='facejax_embedder', opset=opset, input_names=[INPUT], output_names=[OUTPUT])
  # jax2onnx annotates some intermediate shapes in NHWC order on NCHW tensors; ONNX Runtime then warns and
  # infers them itself. The annotations are optional: drop them.
  del proto.graph.value_info[:]
  _require('onnx').checker.check_model(proto)
  blob = proto.SerializeToString()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(blob)
  out = proto.graph.output[0].type.tensor_type.shape.dim
  info = {'format': FORMAT, 'opset': opset, 'bytes': len(blob),
          'input': {'name': INPUT, 'shape': [None, image_size, image_size, 3], 'dtype': dtype,
                    'layout': 'NHWC RGB'},
          'output': {'name': OUTPUT, 'shape': [None, int(out[-1].dim_value)], 'dtype': 'float32',
                     'l2_normalised': True},
          **(metadata or {})}
  with open(path + '.json', 'w') as f:
    json.dump(info, f, indent=2)
  return info


def onnx_session(path: str, threads: int = 0):
  """An ONNX Runtime CPU session for a model `export_onnx` wrote; `threads` 0: ORT's default."""
  ort = _require('onnxruntime')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such ONNX model (write one with python -m launch.export --format=onnx)')
  options = ort.SessionOptions()
  options.intra_op_num_threads = threads
  options.log_severity_level = 3  # errors only
  return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


class OnnxEmbedder:
  """An exported ONNX model as facejax's CLIs use any model (`embedder.load_embedder(path.onnx)`): `embedder(
  images)` uint8 [B, S, S, 3] RGB -> np.float32 [B, D] L2-normalised, run by ONNX Runtime."""

  def __init__(self, path: str):
    self.session = onnx_session(path)
    shape = self.session.get_inputs()[0].shape
    self.image_size = int(shape[1])
    self.embed_dim = int(self.session.get_outputs()[0].shape[-1])

  def __call__(self, images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
      images = images[None]
    if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3) or images.dtype != np.uint8:
      raise ValueError(f'images: expected uint8 [B, {self.image_size}, {self.image_size}, 3], got '
                       f'{images.dtype} {images.shape}')
    return self.session.run([OUTPUT], {INPUT: images})[0]
