"""Serialized embedders: a `jax.export` artifact that runs without the model code.

`export_embedder` traces the full embedding path, uint8 RGB `[b, S, S, 3]` -> preprocessing -> (optimized)
network -> optional flip TTA -> L2-normalised float32 `[b, D]`, with the (BN-folded) weights baked in as
constants and the batch dimension symbolic. `save_exported` writes the `Exported.serialize()` bytes as is
(`jax.export.deserialize(open(path, 'rb').read())` is all a consumer needs) plus a small JSON sidecar
`<path>.json` describing it. `load_exported` needs only jax and numpy: this module imports nothing from
facejax at import time, and `facejax.inference` resolves its names lazily, so a serving process never
imports `facejax.models`.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = 'facejax.embedder/1'


def embedding_function(model, variables, preprocessing, image_size: int, *, flip: str | None = None,
                       optimize: bool | dict = True) -> tuple[Any, dict]:
  """-> (fn(uint8 [b, S, S, 3]) -> float32 [b, D] L2-normalised ([b, 2D] for flip='concat'), the XLA CPU options
  the optimized forward was built for): what both serialized formats (jax.export, ONNX) trace.

  `optimize`: True (default) or a dict of `optimize_for_inference` options (weights are always constants
  here: the artifact must be self-contained); False traces the reference flax forward."""
  from facejax.inference.embed import flip_tta, raw_embed_forward
  if isinstance(optimize, dict) or optimize:  # {} = the default options, not "off"
    from facejax.inference.optimize import inference_forward
    options = dict(optimize) if isinstance(optimize, dict) else {}
    options['weights'] = 'const'
    raw_fn = inference_forward(model, variables, image_size=image_size, **options)
    compiler_options = dict(raw_fn.compiler_options)
  else:
    raw_fn = raw_embed_forward(model, jax.tree_util.tree_map(jnp.asarray, variables))
    compiler_options = {}

  def embed(images):
    return flip_tta(raw_fn, preprocessing.apply(images), flip)

  return embed, compiler_options


def export_embedder(model, variables, preprocessing, image_size: int, *, flip: str | None = None,
                    optimize: bool | dict = True, platforms: Sequence[str] = ('cpu',),
                    metadata: dict | None = None) -> jax.export.Exported:
  """-> `jax.export.Exported` of `embedding_function(...)`, polymorphic in the batch b. `metadata`, when given,
  gets 'cpu_compiler_options' (for `save_exported`'s sidecar; `load_exported` compiles with them) and
  'custom_calls': the targets the artifact calls outside XLA (with conv='onednn': the oneDNN convolution, and
  under bf16 the dense layer), which the loading process must have registered."""
  from facejax.inference.optimize import onednn
  embed, compiler_options = embedding_function(model, variables, preprocessing, image_size, flip=flip,
                                               optimize=optimize)
  onednn_used = isinstance(optimize, dict) and optimize.get('conv') == 'onednn' and not onednn.unavailable()
  (b,) = jax.export.symbolic_shape('b')
  spec = jax.ShapeDtypeStruct((b, image_size, image_size, 3), jnp.uint8)
  checks = [jax.export.DisabledSafetyCheck.custom_call(t) for t in onednn.TARGETS] if onednn_used else []
  exported = jax.export.export(jax.jit(embed), platforms=tuple(platforms), disabled_checks=checks)(spec)
  if metadata is not None:  # the targets' names in the serialized module (its text form prints every weight)
    module = exported.mlir_module_serialized if onednn_used else b''
    metadata.update(cpu_compiler_options=compiler_options,
                    custom_calls=[t for t in onednn.TARGETS if t.encode() in module])
  return exported


def save_exported(exported: jax.export.Exported, path: str, metadata: dict | None = None) -> dict:
  """Write `exported.serialize()` to `path` and a JSON description to `path + '.json'`; returns the latter."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  blob = exported.serialize()
  with open(path, 'wb') as f:
    f.write(blob)
  (aval,) = exported.in_avals
  (out,) = exported.out_avals
  info = {
      'format': FORMAT,
      'cpu_compiler_options': {},
      'input': {'shape': [None, *[int(d) for d in aval.shape[1:]]], 'dtype': str(aval.dtype), 'layout': 'NHWC RGB'},
      'output': {'shape': [None, int(out.shape[-1])], 'dtype': str(out.dtype), 'l2_normalised': True},
      'platforms': list(exported.platforms),
      'bytes': len(blob),
      **(metadata or {}),
  }
  with open(path + '.json', 'w') as f:
    json.dump(info, f, indent=2)
  return info


class ExportedEmbedder:
  """`embedder(images)`: uint8 [B, S, S, 3] RGB -> np.float32 [B, D] L2-normalised. Compiles once per batch
  size. `image_size`, `embed_dim` and `metadata` (the JSON sidecar, when present) describe it.

  `compiler_options`: XLA options for the executables (default: the sidecar's 'cpu_compiler_options', which
  the exporter records for its dtype policy; applied on the CPU backend only)."""

  def __init__(self, exported: jax.export.Exported, metadata: dict | None = None,
               compiler_options: dict | None = None):
    self.exported = exported
    self.metadata = metadata or {}
    (aval,) = exported.in_avals
    self.image_size = int(aval.shape[1])
    self.embed_dim = int(exported.out_avals[0].shape[-1])
    if compiler_options is None:
      compiler_options = self.metadata.get('cpu_compiler_options') if jax.default_backend() == 'cpu' else None
    self.compiler_options = dict(compiler_options or {})
    self._call = jax.jit(exported.call, compiler_options=self.compiler_options or None)

  def __call__(self, images: Any) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
      images = images[None]
    expected = (self.image_size, self.image_size, 3)
    if images.ndim != 4 or images.shape[1:] != expected:
      raise ValueError(f'images: expected [B, {", ".join(map(str, expected))}] uint8, got {images.shape}')
    if images.dtype != np.uint8:
      raise ValueError(f'images: expected uint8 RGB in [0, 255], got dtype {images.dtype}')
    return np.asarray(self._call(images))


def load_exported(path: str, compiler_options: dict | None = None) -> ExportedEmbedder:
  """Read an artifact written by `save_exported` (or any serialized `jax.export` embedder) -> ExportedEmbedder."""
  with open(path, 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  metadata = None
  if os.path.isfile(path + '.json'):
    with open(path + '.json') as f:
      metadata = json.load(f)
  if (metadata or {}).get('custom_calls'):  # only then import facejax: the oneDNN custom call registers itself
    from facejax.inference.optimize import onednn
    if set(onednn.TARGETS) & set(metadata['custom_calls']) and onednn.unavailable():
      raise RuntimeError(f'{path}: exported with conv=onednn, which calls the oneDNN custom call, not available '
                         f'here: {onednn.unavailable()}; build it (make venv) or re-export with --conv=auto')
  return ExportedEmbedder(exported, metadata, compiler_options)
