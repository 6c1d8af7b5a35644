"""Int8 quantisation: per-output-channel symmetric int8 weights, activations quantised per example at run time
(or with a static scale from `activation_ranges`), int8 x int8 -> int32 matmuls.

Dtype policy (applied by `prepare_layers`): `dtype='float32'` (reference accuracy); `'bfloat16'`: the conv
matmuls take bf16 weights and bf16 im2col columns and accumulate in float32 (`preferred_element_type`): AMX /
avx512_bf16 run them faster than float32 dots; activations, bias, ReLU and residual adds stay float32, and
so do native convs (XLA CPU upcasts bf16 convs anyway); `'int8'` (per-output-channel symmetric int8 weights,
activations quantised per example at run time, int8 x int8 -> int32 matmuls, for matmul-lowered convs with a
reduction of >= 16). Dense layers stay float32 under every policy, stored transposed [F, K] (see
`dense_forward`).
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from facejax.inference.optimize.trace import _path, _raw_embed


def _quantize_activations(x, scale=None):
  """float x [B, ...] -> (int8 q, float32 scale) with x ~= q * scale. `scale=None`: one symmetric scale per
  example from its max |x| (never per batch, so an image's embedding does not depend on what it is batched
  with), scale [B, 1, ...]; else the calibrated static scale (a scalar; values beyond its range clip)."""
  if scale is None:
    amax = jnp.max(jnp.abs(x), axis=tuple(range(1, x.ndim)), keepdims=True).astype(jnp.float32)
    scale = jnp.maximum(amax, 1e-12) / 127.0
  q = jnp.clip(jnp.round(x.astype(jnp.float32) / scale), -127, 127).astype(jnp.int8)
  return q, scale


def _int8_matmul(xq_and_scale, wq, wscale):
  xq, xscale = xq_and_scale
  acc = lax.dot_general(xq, wq, (((xq.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
  return acc.astype(jnp.float32) * (xscale * wscale)


def _quantize_weights(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Symmetric per-output-channel int8: kernel ~= q * scale[F]."""
  k = np.asarray(kernel, np.float32)
  amax = np.abs(k.reshape(-1, k.shape[-1])).max(axis=0)
  scale = np.maximum(amax, 1e-12) / 127.0
  q = np.clip(np.round(k / scale), -127, 127).astype(np.int8)
  return q, scale.astype(np.float32)


def activation_ranges(model, variables, images, method: Callable = _raw_embed, batch_size: int = 32) -> dict:
  """Static int8 calibration: {conv path: max |input| over `images`} (float model inputs [N, S, S, 3], after
  preprocessing), from the reference forward. Min-max calibration: inputs beyond the calibrated range clip."""

  def ranges(variables, x):
    out = {}

    def interceptor(next_fun, args, kwargs, context):
      if context.method_name == '__call__' and type(context.module) is nn.Conv:
        out[_path(context.module)] = jnp.max(jnp.abs(args[0]))
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      model.apply(variables, x, method=method)
    return out

  fn = jax.jit(ranges)
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or not len(images):
    raise ValueError(f'calibration images: expected float [N, S, S, 3] with N >= 1, got {images.shape}')
  amax: dict[str, float] = {}
  for start in range(0, len(images), batch_size):
    for path, v in fn(variables, images[start:start + batch_size]).items():
      amax[path] = max(amax.get(path, 0.0), float(v))
  return amax
