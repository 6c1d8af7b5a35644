"""Inference-only rewrites of a trained FaceNet: the same variables, a faster forward.

One abstract trace of the embedding forward gives the traced layers (`trace`); from it BatchNorms fold into the layer
before them (`fold`), convs are re-lowered (`lowering`), weights are cast or quantised per dtype policy
(`quantize`) and XLA options are picked per dtype and network (`options`). This module holds the entry points:
`optimize_for_inference` (and `inference_forward`, its raw output), with `prepare_layers` between the folded
tree and the forward.

- **Weights as constants or arguments.** `weights='const'` closes the folded tree into the jitted function so
  XLA sees compile-time constants; `weights='args'` passes it as an argument (`fn.forward(fn.params, x)`).

Everything else (ReLU/PReLU, residual adds, pooling, the L2 norm) is the model's own code, traced as usual;
XLA fuses the bias, activation and residual add into the loop after each matmul (or YNNPACK into the matmul).
On the CPU the traced jaxpr is then rewritten (`rewrite`): residual adds and ReLUs after a oneDNN conv run as
its post-ops, and max pooling as strided slices.
Measured effect of each lever: docs/cpu_inference.md.

Tolerances the tests hold these rewrites to (random weights, random BN statistics, max abs difference of the
L2-normalised embedding relative to 1): float32 1e-4 (seen ~1e-6); bfloat16 and int8 cosine similarity to
the reference >= 0.98 per embedding (typ. >= 0.995).
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from facejax.inference import hardware
from facejax.inference.optimize import onednn
from facejax.inference.optimize.fold import fold_batch_norm
from facejax.inference.optimize.lowering import (AUTO_IM2COL_MAX_PIXELS, AUTO_INT8_IM2COL_MAX_PIXELS, CONV_IMPLS,
                                                 ONEDNN_DENSE_MIN_WEIGHTS, _winograd_ok, auto_lowering, conv_forward,
                                                 conv_lowering, dense_forward, winograd_kernel)
from facejax.inference.optimize.options import DTYPES, default_compiler_options
from facejax.inference.optimize.quantize import _quantize_weights, activation_ranges
from facejax.inference.optimize.rewrite import rewrite_forward
from facejax.inference.optimize.trace import TracedLayer, _path, _raw_embed, trace_layers
from facejax.models.heads import l2_normalize

__all__ = ['InferenceFn', 'inference_forward', 'onednn_options', 'optimize_for_inference', 'prepare_layers']

WEIGHTS = ('const', 'args')


def prepare_layers(folded: dict, traced: dict[str, TracedLayer], conv: str, dtype: str,
                   im2col_max_pixels: int = AUTO_IM2COL_MAX_PIXELS,
                   int8_im2col_max_pixels: int = AUTO_INT8_IM2COL_MAX_PIXELS, act_ranges: dict | None = None) -> dict:
  """Folded float32 tree -> what the forward consumes: per layer its lowering, matmul kernels already 2-D
  (reshaped here in numpy, not by XLA's constant folder), cast or quantised per the dtype policy; int8 layers
  get a static activation scale when `act_ranges` (`activation_ranges`) is given."""
  # oneDNN's int8 convs only where their int32 sums are exact (VNNI / AMX); elsewhere its convs stay float32
  onednn_int8 = dtype == 'int8' and conv == 'onednn' and hardware.has_int8_dots(hardware.cpu_info().get('cpu_flags'))
  layers = {}
  for path, p in folded['layers'].items():
    entry = traced[path]
    kernel, bias = np.asarray(p['kernel'], np.float32), np.asarray(p['bias'], np.float32)
    lowering = 'matmul' if entry.kind == 'dense' else (
        conv_lowering(entry.module, entry.in_shape) if conv != 'xla' else 'xla')
    if conv == 'onednn' and dtype == 'bfloat16' and entry.kind == 'dense' and kernel.size >= ONEDNN_DENSE_MIN_WEIGHTS:
      lowering = 'onednn'  # oneDNN's bf16 matmul streams the kernel in half the bytes, without XLA's upcast
    if conv == 'auto' and lowering == 'matmul' and entry.kind == 'conv':
      # Off the CPU (cuDNN, TPU convolutions) the native convolution is the fast path.
      if jax.default_backend() != 'cpu':
        lowering = 'xla'
      elif dtype == 'int8':  # int8 im2col copies 4x fewer bytes: worth it up to 112x112 maps
        lowering = 'xla' if np.prod(entry.out_shape[1:-1]) > int8_im2col_max_pixels else 'matmul'
      else:
        lowering = auto_lowering(entry, dtype, im2col_max_pixels)
    if conv == 'onednn' and lowering in ('matmul', 'depthwise') and entry.kind == 'conv':
      lowering = 'onednn'
    if conv == 'winograd' and lowering == 'matmul' and _winograd_ok(entry):
      lowering = 'winograd'
    if lowering == 'matmul':
      kernel = kernel.reshape(-1, kernel.shape[-1])
    if lowering == 'winograd':
      kernel = winograd_kernel(kernel)
    out = {'lowering': lowering}
    if entry.kind == 'dense' and lowering == 'onednn':
      out.update(kernel=kernel.astype(jnp.bfloat16), bias=bias)
    elif entry.kind == 'dense':
      # Dense layers in XLA stay float32 under every policy: at batch 1 they are matrix-vector products,
      # memory-bound, that XLA CPU upcasts from bf16/int8, converting the whole kernel on every call.
      out.update(kernel=np.ascontiguousarray(kernel.T), bias=bias)
    elif (onednn_int8 and lowering == 'onednn' and entry.module.feature_group_count == 1
          and np.prod(kernel.shape[:3]) >= 16 and act_ranges is not None):
      # oneDNN int8 (VNNI): the bias carries each channel's dequantization scale, x's static scale folded in
      q, wscale = _quantize_weights(kernel)
      act_scale = np.float32(max(act_ranges[path], 1e-12) / 127.0)
      out.update(kernel=q, bias=np.stack([bias, act_scale * wscale]).astype(np.float32), act_scale=act_scale)
    elif dtype == 'int8' and lowering == 'matmul' and kernel.shape[0] >= 16:
      # int8 only where a matmul does the work and the reduction is long enough to average rounding errors.
      out.update(kernel=_quantize_weights(kernel), bias=bias)
      if act_ranges is not None:
        out['act_scale'] = np.float32(max(act_ranges[path], 1e-12) / 127.0)
    elif dtype == 'bfloat16' and lowering != 'xla':  # XLA CPU runs bf16 convolutions in float32 anyway
      out.update(kernel=kernel.astype(jnp.bfloat16), bias=bias)
    else:
      out.update(kernel=kernel, bias=bias)
    layers[path] = out
  return {**folded, 'layers': layers}


@dataclasses.dataclass(eq=False)  # hashable by identity: jax.jit caches on the callable
class InferenceFn:
  """`fn(x)`: float model input [B, S, S, 3] -> [B, D] L2-normalised embeddings, weights closed over (constants
  under jit). `fn.forward(fn.params, x)`: the same with the folded weights as an argument. `fn.raw(x)`: the
  un-normalised embedding (what flip TTA sums)."""
  forward: Callable
  params: Any
  raw_forward: Callable
  options: dict
  compiler_options: dict = dataclasses.field(default_factory=dict)  # for jax.jit(..., compiler_options=...)

  def __call__(self, x):
    return self.forward(self.params, x)

  def raw(self, x):
    return self.raw_forward(self.params, x)

  @property
  def __name__(self):  # jax.jit and friends name the computation after the function
    return 'optimized_embed'


def onednn_options() -> dict | bool:
  """The fast float32 forward where it is built: {'conv': 'onednn'} (BatchNorms folded, oneDNN's convolutions;
  equal to the flax forward within 1e-5) when oneDNN's custom call is loaded, else False (the flax forward).
  What the teacher cache, the evaluator (config.optimize) and the leakage judge embed with."""
  return False if onednn.unavailable() else {'conv': 'onednn'}


def inference_forward(model, variables, *, image_size: int, **options) -> InferenceFn:
  """The rewritten forward as an `InferenceFn`; calling it returns the RAW (un-normalised) output of
  `method` (default: the FaceNet embedding head output [B, D]). `options`: those of `optimize_for_inference`."""
  fn = optimize_for_inference(model, variables, image_size=image_size, **options)
  return InferenceFn(fn.raw_forward, fn.params, fn.raw_forward, fn.options, fn.compiler_options)


def optimize_for_inference(model, variables, *, image_size: int, conv: str = 'auto', dtype: str = 'float32',
                           weights: str = 'const', method: Callable = _raw_embed,
                           compiler_options: dict | None = None,
                           im2col_max_pixels: int = AUTO_IM2COL_MAX_PIXELS,
                           int8_im2col_max_pixels: int = AUTO_INT8_IM2COL_MAX_PIXELS,
                           calibration: np.ndarray | None = None) -> InferenceFn:
  """BN-folded, re-lowered embedding forward of a FaceNet (see the module docstring for the options).

  `calibration` (dtype='int8' only): float model inputs [N, S, S, 3] (after preprocessing, e.g. a few hundred
  training faces): each int8 layer quantises its input with one static scale from their max |input|
  (`activation_ranges`) instead of a per-example max-abs pass at run time.

  -> InferenceFn: `fn(x)` float [B, S, S, 3] model input (after `Preprocessing.apply`) -> [B, D] float32
  L2-normalised. Compile it with its XLA options: `jax.jit(fn, compiler_options=fn.compiler_options)`
  (`benchmark` and `make_embed_fn` do); `compiler_options=None` takes DEFAULT_COMPILER_OPTIONS[dtype].
  """
  if conv not in CONV_IMPLS:
    raise ValueError(f'conv={conv!r}: expected one of {CONV_IMPLS}')
  if dtype not in DTYPES:
    raise ValueError(f'dtype={dtype!r}: expected one of {DTYPES}')
  if conv == 'onednn' and dtype == 'int8' and calibration is None:
    raise ValueError("conv='onednn' with dtype='int8' needs static activation scales (oneDNN takes one scale per "
                     "tensor, not per example): pass calibration faces (launch.export --calibration=N)")
  if conv == 'onednn' and onednn.unavailable():
    warnings.warn(f"conv='onednn': {onednn.unavailable()}; XLA runs those convolutions instead", stacklevel=2)
  if weights not in WEIGHTS:
    raise ValueError(f'weights={weights!r}: expected one of {WEIGHTS}')
  if conv == 'onednn' and dtype == 'int8' and not hardware.has_int8_dots(hardware.cpu_info().get('cpu_flags')):
    warnings.warn("conv='onednn' with dtype='int8': this CPU has no int8 dot instructions (avx512_vnni, avx_vnni or "
                  "amx_int8), where oneDNN's int8 sums saturate; its convolutions run in oneDNN float32 instead",
                  stacklevel=2)
  if dtype == 'bfloat16' and jax.default_backend() == 'cpu':
    if not hardware.has_bf16_dots(hardware.cpu_info().get('cpu_flags')):
      if conv == 'onednn' and not onednn.unavailable():
        raise ValueError("conv='onednn' with dtype='bfloat16': this CPU has neither avx512_bf16 nor amx_bf16, so "
                         "oneDNN has no bf16 convolution for it; use dtype='float32' or conv='auto'")
      warnings.warn("dtype='bfloat16': this CPU has neither avx512_bf16 nor amx_bf16, so the bf16 matmuls run "
                    'without hardware support and may be slower than float32', stacklevel=2)
  if calibration is not None and dtype != 'int8':
    raise ValueError(f"calibration: static activation scales are for dtype='int8', got dtype={dtype!r}")
  variables = jax.tree_util.tree_map(np.asarray, dict(variables))
  traced = trace_layers(model, variables, image_size, method)
  ranges = None if calibration is None else activation_ranges(model, variables, calibration, method)
  folded = prepare_layers(fold_batch_norm(model, variables, image_size, traced), traced, conv, dtype, im2col_max_pixels,
                          int8_im2col_max_pixels, ranges)
  lowerings = {path: p.pop('lowering') for path, p in folded['layers'].items()}  # static, not a pytree leaf
  if weights == 'const':
    folded = jax.tree_util.tree_map(jnp.asarray, folded)

  def raw_forward(params, x):
    def interceptor(next_fun, args, kwargs, context):
      module = context.module
      if context.method_name != '__call__' or type(module) not in (nn.Conv, nn.Dense, nn.BatchNorm):
        return next_fun(*args, **kwargs)
      path = _path(module)
      entry = traced.get(path)
      if entry is None:
        return next_fun(*args, **kwargs)
      h = args[0]
      if entry.kind == 'bn':
        if entry.fold_into is not None:
          return h
        a = params['affine'][path]
        return h * a['scale'].astype(h.dtype) + a['shift'].astype(h.dtype)
      if entry.kind == 'dense':
        return dense_forward(dict(params['layers'][path], lowering=lowerings[path]), h)
      return conv_forward(entry, dict(params['layers'][path], lowering=lowerings[path]), h)

    with nn.intercept_methods(interceptor):
      out = model.apply(params['rest'], x.astype(jnp.float32), method=method)
    # float32 out, whatever the layers computed in (oneDNN bf16 convs hand bf16 activations on)
    return jax.tree_util.tree_map(lambda a: a.astype(jnp.float32) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                                  out)

  if jax.default_backend() == 'cpu':  # oneDNN epilogues, max pooling as slices (measured on the CPU only)
    raw_forward = rewrite_forward(raw_forward)

  def forward(params, x):
    return l2_normalize(raw_forward(params, x))

  options = dict(conv=conv, dtype=dtype, weights=weights, calibrated=calibration is not None)
  if compiler_options is None:
    compiler_options = default_compiler_options(traced, lowerings, dtype)
  return InferenceFn(forward, folded, raw_forward, options, compiler_options)
