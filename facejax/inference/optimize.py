"""Inference-only rewrites of a trained FaceNet: the same variables, a faster forward.

The rewrite is generic over the model code: one abstract trace of the embedding forward (`jax.eval_shape` under
`flax.linen.intercept_methods`) records every `nn.Conv`/`nn.Dense`/`nn.BatchNorm` call and which BatchNorm reads
exactly the output of which Conv/Dense. From that plan:

- **BN folding.** A BatchNorm applied to a conv/dense output becomes part of that layer:
  `K' = K * g / sqrt(v + eps)`, `b' = (b - m) * g / sqrt(v + eps) + beta` (computed in float64). A BatchNorm that
  follows anything else becomes one multiply-add. (Assumes the conv output feeds only that BN, as in every
  registry model; the tests compare each registry model against the reference forward.)
- **Conv lowering.** `conv='im2col'`: k>1 convs as one matmul over the k*k shifted strided slices of the padded
  input concatenated on channels; 1x1 convs as a plain matmul (strided slice first); depthwise convs as k*k
  shifted multiply-adds (a global depthwise conv as one reduction). `conv='winograd'`: 3x3 stride-1 convs as
  Winograd F(2x2, 3x3) (16 multiplies per 2x2 tile instead of 36: input transform, one batched matmul, output
  transform), the rest as im2col. `conv='xla'`: `lax.conv_general_dilated` with the folded weights.
  `conv='auto'` (default) picks per layer from the output map size: native conv above 14x14, Winograd for
  3x3/s1 at 14x14 and below, im2col matmuls otherwise (with `dtype='int8'`: int8 im2col up to 112x112, native
  float conv above; with `dtype='bfloat16'`: im2col while the im2col matrix per image is at most 16 MB, see
  `auto_lowering`); off the CPU, native convs everywhere.
- **Dtype policy.** `dtype='float32'` (reference accuracy); `'bfloat16'`: the conv matmuls take bf16 weights and
  bf16 im2col columns and accumulate in float32 (`preferred_element_type`): AMX / avx512_bf16 run them 3-5x
  faster than float32 dots; activations, bias, ReLU and residual adds stay float32, and so do native convs
  (XLA CPU upcasts bf16 convs anyway); `'int8'` (per-output-channel symmetric int8 weights, activations
  quantised per example at run time, int8 x int8 -> int32 matmuls, for matmul-lowered convs with a reduction
  of >= 16). Dense layers stay float32 under every policy, stored transposed [F, K] (see `dense_forward`).
- **XLA options.** `fn.compiler_options` (jit with them) pick how XLA hands dots to YNNPACK per dtype and
  network shape (`default_compiler_options`).
- **Weights as constants or arguments.** `weights='const'` closes the folded tree into the jitted function so
  XLA sees compile-time constants; `weights='args'` passes it as an argument (`fn.forward(fn.params, x)`).

Everything else (ReLU/PReLU, residual adds, pooling, the L2 norm) is the model's own code, traced as usual;
XLA fuses the bias, activation and residual add into the loop after each matmul (or YNNPACK into the matmul).
Measured effect of each lever: facejax/inference/__init__.py.

Tolerances the tests hold these rewrites to (random weights, random BN statistics, max abs difference of the
L2-normalised embedding relative to 1): float32 1e-4 (seen ~1e-6); bfloat16 and int8 cosine similarity to
the reference >= 0.98 per embedding (typ. >= 0.995).
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from flax.linen.linear import canonicalize_padding

from facejax.models.heads import l2_normalize

CONV_IMPLS = ('auto', 'im2col', 'winograd', 'xla')
AUTO_INT8_IM2COL_MAX_PIXELS = 12544  # dtype='int8', conv='auto': larger maps (VGG's 224x224) run float32 native convs
AUTO_IM2COL_MAX_PIXELS = 196  # conv='auto': k>1 convs with at most this many output pixels per image -> im2col
AUTO_BF16_IM2COL_MAX_BYTES = 16 << 20  # conv='auto', bfloat16: im2col while its matrix per image is at most this
# XLA CPU compile options per dtype policy (passed per executable, so nothing leaks into the rest of the
# process). YNNPACK runs XLA CPU's dots by default in jax 0.10. float32: adding ELTWISE lets it take the bias,
# ReLU and residual add that follow each matmul into the same fusion. bfloat16: INDIVIDUAL_DOT (one dot per
# YNNPACK call): with ELTWISE the bf16 converts land in YNNPACK's slow path (ResNet-50 45 vs 27 ms). int8: the
# default (ELTWISE pulls the quantise ops into the slow path, 10x; INDIVIDUAL_DOT: ResNet-50 38 vs 25 ms).
# `default_compiler_options` switches to INDIVIDUAL_DOT for VGG-like nets whatever the dtype.
# Measurements behind each choice: launch/compare_cpu.py and the inference notes in facejax/inference/__init__.py.
YNN_DOT_ELTWISE = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE'}
YNN_INDIVIDUAL_DOT = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}
DEFAULT_COMPILER_OPTIONS = {'float32': YNN_DOT_ELTWISE, 'bfloat16': YNN_INDIVIDUAL_DOT, 'int8': {}}
DTYPES = ('float32', 'bfloat16', 'int8')
WEIGHTS = ('const', 'args')


# ----------------------------------------------------------------------------------------------------------
# Plan: which modules run, with which configuration, and which BN folds into which layer.


@dataclasses.dataclass
class LayerPlan:
  path: str
  kind: str  # 'conv' | 'dense' | 'bn'
  module: nn.Module  # an unbound clone carrying the configuration
  fold_into: str | None = None  # for 'bn': the conv/dense path it folds into
  folded_bn: str | None = None  # for 'conv'/'dense': the BN folded into it
  in_shape: tuple = ()
  out_shape: tuple = ()


_KINDS = {nn.Conv: 'conv', nn.Dense: 'dense', nn.BatchNorm: 'bn'}


def _path(module: nn.Module) -> str:
  return '/'.join(module.scope.path)


def _raw_embed(m, x):
  return m.embedding(m.backbone(x, train=False), train=False)


def trace_plan(model, variables, image_size: int, method: Callable = _raw_embed) -> dict[str, LayerPlan]:
  """Abstract trace of `method` -> {path: LayerPlan} in call order."""
  plan: dict[str, LayerPlan] = {}
  producers: dict[int, tuple[str, Any]] = {}  # id(output tracer) -> (conv/dense path, tracer kept alive)

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != '__call__' or not isinstance(module, (nn.Conv, nn.Dense, nn.BatchNorm)):
      return next_fun(*args, **kwargs)
    path = _path(module)
    kind = _KINDS.get(type(module))
    if kind is None:  # subclasses: do not guess their semantics
      return next_fun(*args, **kwargs)
    if path in plan:
      raise ValueError(f'{path}: module called twice; the inference rewrite expects each layer to run once')
    x = args[0]
    entry = LayerPlan(path, kind, module.clone(parent=None), in_shape=tuple(x.shape))
    plan[path] = entry
    out = next_fun(*args, **kwargs)
    entry.out_shape = tuple(out.shape)
    if kind == 'bn':
      producer = producers.pop(id(x), None)
      if producer is not None and module.axis in (-1, x.ndim - 1):
        entry.fold_into = producer[0]
        plan[producer[0]].folded_bn = path
    else:
      producers[id(out)] = (path, out)
    return out

  def run(variables, x):
    with nn.intercept_methods(interceptor):
      return model.apply(variables, x, method=method)

  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  jax.eval_shape(run, variables, x)
  return plan


def layer_flops(plan: dict[str, LayerPlan]) -> int:
  """2 x multiply-accumulates of every conv and dense layer in the plan (at the traced batch size): the model's
  FLOPs independent of how they are lowered (XLA's cost analysis counts im2col copies and BN arithmetic too)."""
  total = 0
  for entry in plan.values():
    if entry.kind == 'conv':
      c = entry.module
      total += int(np.prod(entry.out_shape)) * int(np.prod(c.kernel_size)) * (entry.in_shape[-1] //
                                                                             c.feature_group_count)
    elif entry.kind == 'dense':
      total += int(np.prod(entry.out_shape)) * entry.in_shape[-1]
  return 2 * total


def _get(tree, path: str):
  for k in path.split('/'):
    tree = tree[k]
  return tree


def _bn_affine(entry: LayerPlan, variables) -> tuple[np.ndarray, np.ndarray]:
  """BatchNorm (running statistics) as y = x * scale + shift, float64."""
  bn = entry.module
  stats = _get(variables['batch_stats'], entry.path)
  params = _get(variables['params'], entry.path) if (bn.use_scale or bn.use_bias) else {}
  mean = np.asarray(stats['mean'], np.float64)
  var = np.asarray(stats['var'], np.float64)
  gamma = np.asarray(params['scale'], np.float64) if bn.use_scale else 1.0
  beta = np.asarray(params['bias'], np.float64) if bn.use_bias else 0.0
  scale = gamma / np.sqrt(var + bn.epsilon)
  return scale * np.ones_like(mean), beta - mean * scale


def fold_batch_norm(model, variables, image_size: int, plan: dict[str, LayerPlan] | None = None) -> dict:
  """-> {'layers': {path: {'kernel', 'bias'}} (BN folded, float32), 'affine': {path: {'scale', 'shift'}}
  for BNs with nothing to fold into, 'rest': variables minus every conv/dense/bn leaf (e.g. PReLU slopes)}."""
  plan = plan if plan is not None else trace_plan(model, variables, image_size)
  layers, affine = {}, {}
  for path, entry in plan.items():
    if entry.kind == 'bn':
      if entry.fold_into is None:
        scale, shift = _bn_affine(entry, variables)
        affine[path] = {'scale': scale.astype(np.float32), 'shift': shift.astype(np.float32)}
      continue
    p = _get(variables['params'], path)
    kernel = np.asarray(p['kernel'], np.float64)
    bias = np.asarray(p['bias'], np.float64) if 'bias' in p else np.zeros(kernel.shape[-1])
    if entry.folded_bn is not None:
      scale, shift = _bn_affine(plan[entry.folded_bn], variables)
      kernel = kernel * scale  # output features are the last kernel axis for Conv (HWIO) and Dense (IO)
      bias = bias * scale + shift
    layers[path] = {'kernel': kernel.astype(np.float32), 'bias': bias.astype(np.float32)}
  rest = _prune(variables, {p for p in plan})
  return {'layers': layers, 'affine': affine, 'rest': rest}


def _prune(variables, paths: set[str]) -> dict:
  """Copy of `variables` without the subtrees at `paths` (in any collection)."""

  def walk(tree, prefix):
    out = {}
    for k, v in tree.items():
      p = f'{prefix}/{k}' if prefix else k
      if p in paths:
        continue
      out[k] = walk(v, p) if isinstance(v, dict) or hasattr(v, 'items') else v
    return out

  return {c: walk(dict(t), '') for c, t in dict(variables).items()}


# ----------------------------------------------------------------------------------------------------------
# Layer implementations.


def _conv_pads(conv: nn.Conv, x_shape) -> list[tuple[int, int]] | None:
  """Explicit (lo, hi) pads per spatial dim, or None when the padding mode is not a plain zero pad."""
  k = tuple(conv.kernel_size)
  strides = conv.strides if conv.strides is not None else 1
  strides = (strides,) * len(k) if isinstance(strides, int) else tuple(strides)
  padding = canonicalize_padding(conv.padding, len(k))
  if isinstance(padding, str):
    if padding not in ('SAME', 'VALID'):
      return None
    return list(lax.padtype_to_pads(x_shape[1:-1], k, strides, padding))
  return [tuple(p) for p in padding]


def conv_lowering(conv: nn.Conv, in_shape: tuple) -> str:
  """How a non-'xla' lowering can run this conv: 'matmul' (any plain 2-D conv), 'depthwise' (one filter per input channel)
  or 'xla' (dilations, masks, circular/causal padding, non-2-D: lax.conv with the folded weights)."""
  ones = lambda d: d is None or all(v == 1 for v in np.atleast_1d(d))
  if not (len(in_shape) == 4 and len(conv.kernel_size) == 2 and ones(conv.kernel_dilation) and
          ones(conv.input_dilation) and conv.mask is None and _conv_pads(conv, in_shape) is not None):
    return 'xla'
  if conv.feature_group_count == 1:
    return 'matmul'
  if conv.feature_group_count == in_shape[-1] == conv.features:
    return 'depthwise'
  return 'xla'


def _winograd_ok(entry: LayerPlan) -> bool:
  return entry.kind == 'conv' and tuple(entry.module.kernel_size) == (3, 3) and _strides(entry.module) == (1, 1)


def auto_lowering(entry: LayerPlan, dtype: str = 'float32', im2col_max_pixels: int = AUTO_IM2COL_MAX_PIXELS,
                  bf16_im2col_max_bytes: int = AUTO_BF16_IM2COL_MAX_BYTES) -> str:
  """conv='auto' for a plain conv: 1x1 -> 'matmul'. float32: maps of at most `im2col_max_pixels` output pixels
  per image (14x14 and smaller) -> 'winograd' for 3x3 stride 1, else 'matmul' (im2col); larger maps -> 'xla'
  (XLA's native convolution wins there: im2col copies k*k times the input, measured 2-6x slower at 56x56 and
  above, and Winograd's transforms are memory-bound at large maps). bfloat16: 'matmul' while the per-image
  im2col matrix is at most `bf16_im2col_max_bytes` (on AMX, bf16 x bf16 -> f32 dots beat XLA's float32 convs
  from 56x56x256 down), else 'xla' in float32 (VGG's 112x112x128 and 224x224 maps: the copy is memory-bound);
  also 'xla' for inputs of fewer than 8 channels (RGB stems: k*k slices of 3 channels copy slowly). The
  measurements behind these rules: docs/cpu_inference.md."""
  if np.prod(entry.module.kernel_size) == 1:
    return 'matmul'
  pixels = int(np.prod(entry.out_shape[1:-1]))
  if dtype == 'bfloat16':
    cols = pixels * int(np.prod(entry.module.kernel_size)) * entry.in_shape[-1] * 2
    return 'matmul' if cols <= bf16_im2col_max_bytes and entry.in_shape[-1] >= 8 else 'xla'
  if pixels > im2col_max_pixels:
    return 'xla'
  return 'winograd' if _winograd_ok(entry) else 'matmul'


# Winograd F(2x2, 3x3) (Lavin & Gray 2016): each 2x2 output tile from a 4x4 input tile with 16 multiplies per
# (input, output) channel pair instead of 36: V = B^T d B, U = G g G^T, Y = A^T (U . V) A.
_WINO_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
_WINO_G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float64)
_WINO_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)


def winograd_kernel(kernel: np.ndarray) -> np.ndarray:
  """HWIO [3, 3, C, F] -> the 16 transformed kernels [16, C, F] (float64 math, float32 out)."""
  u = np.einsum('ai,ijcf,bj->abcf', _WINO_G, np.asarray(kernel, np.float64), _WINO_G)
  return u.reshape(16, *kernel.shape[2:]).astype(np.float32)


def _signed_sum(coeffs, terms):
  out = None
  for c, t in zip(coeffs, terms):
    if c:
      t = t if c == 1 else (-t if c == -1 else c * t)
      out = t if out is None else out + t
  return out


def winograd_conv(x, u, pads):
  """3x3 stride-1 conv of NHWC `x` (zero `pads`) with transformed kernels `u` [16, C, F] -> [B, Ho, Wo, F]:
  two XLA loop fusions (input and output transforms) around one batched [16] matmul."""
  x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  b, hp, wp, c = x.shape
  ho, wo = hp - 2, wp - 2
  th, tw = -(-ho // 2), -(-wo // 2)
  x = jnp.pad(x, ((0, 0), (0, 2 * th + 2 - hp), (0, 2 * tw + 2 - wp), (0, 0)))
  d = [[x[:, i:i + 2 * th:2, j:j + 2 * tw:2, :] for j in range(4)] for i in range(4)]
  rows = [[_signed_sum(_WINO_BT[a], [d[i][j] for i in range(4)]) for j in range(4)] for a in range(4)]
  v = jnp.stack([_signed_sum(_WINO_BT[e], rows[a]) for a in range(4) for e in range(4)]).reshape(16, -1, c)
  m = lax.dot_general(v.astype(u.dtype), u, (((2,), (1,)), ((0,), (0,))), preferred_element_type=_acc(u.dtype))
  f = u.shape[-1]
  m = m.reshape(4, 4, b, th, tw, f)
  r = [[_signed_sum(_WINO_AT[a], [m[i, j] for i in range(4)]) for j in range(4)] for a in range(2)]
  y = jnp.stack([jnp.stack([_signed_sum(_WINO_AT[e], r[a]) for e in range(2)], axis=3) for a in range(2)], axis=2)
  return y.reshape(b, 2 * th, 2 * tw, f)[:, :ho, :wo]


def _strides(conv: nn.Conv) -> tuple[int, int]:
  s = conv.strides if conv.strides is not None else 1
  return (s, s) if isinstance(s, int) else tuple(s)


def _shifted_slices(x, kh, kw, sh, sw, pads):
  """Zero-pad [B, H, W, C] and return the kh*kw strided windows [B, Ho, Wo, C], row-major over (i, j)."""
  if any(p != (0, 0) for p in pads):
    x = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  ho = (x.shape[1] - kh) // sh + 1
  wo = (x.shape[2] - kw) // sw + 1
  return [
      lax.slice(x, (0, i, j, 0), (x.shape[0], i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, x.shape[3]),
                (1, sh, sw, 1)) for i in range(kh) for j in range(kw)
  ]


def _acc(dtype):
  """Accumulation dtype of a dot/conv with `dtype` operands: float32 for bfloat16 (CPUs with AMX or
  avx512_bf16 run bf16 x bf16 -> f32 dots 3-5x faster than f32 ones, and 5x faster than bf16 -> bf16)."""
  return jnp.float32 if dtype == jnp.bfloat16 else None


def _matmul(x, w):
  """[..., K] @ [K, F] -> [..., F], accumulated (and returned) in `_acc` of the operands' dtype."""
  return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=_acc(w.dtype))


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


def _im2col(x, kh, kw, sh, sw, pads):
  """[B, H, W, C] -> [B, Ho, Wo, kh*kw*C] in (i, j, c) order, which is an HWIO kernel reshaped to 2-D."""
  if kh == kw == 1 and all(p == (0, 0) for p in pads):
    return x[:, ::sh, ::sw, :] if (sh, sw) != (1, 1) else x
  return jnp.concatenate(_shifted_slices(x, kh, kw, sh, sw, pads), axis=-1)


def _im2col_as(x, dtype, kh, kw, sh, sw, pads):
  """`_im2col` of `x` cast to `dtype`. bfloat16 columns are gathered as their uint16 bit patterns: XLA CPU
  upcasts bf16 pads, slices and concatenations to float32 (convert, move, convert back), which doubled the
  bytes moved and cost more than the matmuls (ResNet-50 b1: 20 ms of copies around 16 ms of AMX dots)."""
  x = x.astype(dtype)
  if dtype != jnp.bfloat16:
    return _im2col(x, kh, kw, sh, sw, pads)
  bits = _im2col(lax.bitcast_convert_type(x, jnp.uint16), kh, kw, sh, sw, pads)
  return lax.bitcast_convert_type(bits, jnp.bfloat16)


def conv_forward(entry: LayerPlan, p: dict, x):
  """Folded conv on NHWC `x`. `p['kernel']`: [kh*kw*Cin, F] for 'matmul' lowering (or (int8, scale[F])),
  [kh, kw, Cin/g, F] otherwise; `p['bias']`: [F]."""
  conv, kernel, bias = entry.module, p['kernel'], p['bias']
  lowering = p.get('lowering', 'xla')
  if lowering == 'xla':
    return _xla_conv(conv, x.astype(kernel.dtype), kernel) + bias
  kh, kw = conv.kernel_size
  pads = _conv_pads(conv, x.shape)
  if lowering == 'winograd':
    return winograd_conv(x, kernel, pads) + bias  # transforms in x's dtype, the dot in bf16 if the kernel is
  sh, sw = _strides(conv)
  if lowering == 'depthwise':  # k*k shifted multiply-adds
    x = x.astype(kernel.dtype)
    slices = _shifted_slices(x, kh, kw, sh, sw, pads)
    if slices[0].shape[1:3] == (1, 1) and kh * kw > 9:  # global depthwise conv (GDConv): one reduction
      xp = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0))) if any(p != (0, 0) for p in pads) else x
      y = jnp.einsum('bhwc,hwc->bc', xp[:, :kh, :kw, :], kernel[:, :, 0, :])[:, None, None, :]
    else:
      y = functools.reduce(lambda a, b: a + b, [t * kernel[i // kw, i % kw, 0, :] for i, t in enumerate(slices)])
    return y + bias
  if isinstance(kernel, tuple):  # int8: quantise before im2col, so the slices move 4x fewer bytes
    xq, xscale = _quantize_activations(x, p.get('act_scale'))
    return _int8_matmul((_im2col(xq, kh, kw, sh, sw, pads), xscale), *kernel) + bias
  return _matmul(_im2col_as(x, kernel.dtype, kh, kw, sh, sw, pads), kernel) + bias


def _xla_conv(conv: nn.Conv, x, kernel):
  pads = _conv_pads(conv, x.shape) if x.ndim == 4 else None
  if pads is None or conv_lowering(conv, x.shape) == 'xla':  # anything exotic: the module's own code with the folded weights
    return conv.clone(use_bias=False, dtype=kernel.dtype, param_dtype=kernel.dtype).apply(
        {'params': {'kernel': kernel}}, x)
  return lax.conv_general_dilated(x, kernel, _strides(conv), pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                  feature_group_count=conv.feature_group_count)


def dense_forward(p: dict, x):
  """`p['kernel']`: float32 [F, K] (transposed: each output is a dot product over a contiguous row, so the
  matrix-vector product of batch 1 streams the kernel once; VGG-16 fc6 12 vs 35 ms in [K, F] layout)."""
  kernel, bias = p['kernel'], p['bias']
  return lax.dot_general(x.astype(kernel.dtype), kernel, (((x.ndim - 1,), (1,)), ((), ()))) + bias


# ----------------------------------------------------------------------------------------------------------
# Dtype policies over the folded tree.


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


def default_compiler_options(plan: dict[str, LayerPlan], lowerings: dict[str, str], dtype: str) -> dict:
  """DEFAULT_COMPILER_OPTIONS[dtype], except YNNPACK gets individual dots only when most conv FLOPs run as
  native convolutions or the dense kernels outweigh the conv kernels (VGG-16's fc6/fc7). Otherwise XLA hands
  whole chains of convs, pools and the fc matrix-vector products to YNNPACK as one fusion, which recomputes
  work: VGG-16 b8 per batch float32 5.3 -> 1.9 s, bf16 2.3 -> 0.75 s, int8 2.1 -> 0.61 s. Where im2col
  matmuls dominate (ResNet-50) the per-dtype default is as good or better."""
  if jax.default_backend() != 'cpu':
    return {}
  options = dict(DEFAULT_COMPILER_OPTIONS[dtype])
  convs = [(p, e) for p, e in plan.items() if e.kind == 'conv']
  native = sum(layer_flops({p: e}) for p, e in convs if lowerings.get(p) == 'xla')
  total = sum(layer_flops({p: e}) for p, e in convs)
  conv_weights = sum(int(np.prod(e.module.kernel_size)) * e.in_shape[-1] * e.out_shape[-1] for _, e in convs)
  dense_weights = sum(e.in_shape[-1] * e.out_shape[-1] for e in plan.values() if e.kind == 'dense')
  if (total and native / total > 0.5) or dense_weights > conv_weights:
    options.update(YNN_INDIVIDUAL_DOT)
  return options


def prepare_layers(folded: dict, plan: dict[str, LayerPlan], conv: str, dtype: str,
                   im2col_max_pixels: int = AUTO_IM2COL_MAX_PIXELS,
                   int8_im2col_max_pixels: int = AUTO_INT8_IM2COL_MAX_PIXELS, act_ranges: dict | None = None) -> dict:
  """Folded float32 tree -> what the forward consumes: per layer its lowering, matmul kernels already 2-D
  (reshaped here in numpy, not by XLA's constant folder), cast or quantised per the dtype policy; int8 layers
  get a static activation scale when `act_ranges` (`activation_ranges`) is given."""
  layers = {}
  for path, p in folded['layers'].items():
    entry = plan[path]
    kernel, bias = np.asarray(p['kernel'], np.float32), np.asarray(p['bias'], np.float32)
    lowering = 'matmul' if entry.kind == 'dense' else (
        conv_lowering(entry.module, entry.in_shape) if conv != 'xla' else 'xla')
    if conv == 'auto' and lowering == 'matmul' and entry.kind == 'conv':
      # Off the CPU (cuDNN, TPU convolutions) the native convolution is the fast path.
      if jax.default_backend() != 'cpu':
        lowering = 'xla'
      elif dtype == 'int8':  # int8 im2col copies 4x fewer bytes: worth it up to 112x112 maps
        lowering = 'xla' if np.prod(entry.out_shape[1:-1]) > int8_im2col_max_pixels else 'matmul'
      else:
        lowering = auto_lowering(entry, dtype, im2col_max_pixels)
    if conv == 'winograd' and lowering == 'matmul' and _winograd_ok(entry):
      lowering = 'winograd'
    if lowering == 'matmul':
      kernel = kernel.reshape(-1, kernel.shape[-1])
    if lowering == 'winograd':
      kernel = winograd_kernel(kernel)
    out = {'lowering': lowering}
    if entry.kind == 'dense':
      # Dense layers stay float32 under every policy: at batch 1 they are matrix-vector products, memory-bound,
      # that XLA CPU upcasts from bf16/int8, converting the whole kernel on every call (fc6: 113 vs 18 ms).
      out.update(kernel=np.ascontiguousarray(kernel.T), bias=bias)
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


# ----------------------------------------------------------------------------------------------------------
# The inference function.


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
  (`activation_ranges`) instead of a per-example max-abs pass at run time (ResNet-50 b1 19 vs 25 ms).

  -> InferenceFn: `fn(x)` float [B, S, S, 3] model input (after `Preprocessing.apply`) -> [B, D] float32
  L2-normalised. Compile it with its XLA options: `jax.jit(fn, compiler_options=fn.compiler_options)`
  (`benchmark` and `make_embed_fn` do); `compiler_options=None` takes DEFAULT_COMPILER_OPTIONS[dtype].
  """
  if conv not in CONV_IMPLS:
    raise ValueError(f'conv={conv!r}: expected one of {CONV_IMPLS}')
  if dtype not in DTYPES:
    raise ValueError(f'dtype={dtype!r}: expected one of {DTYPES}')
  if weights not in WEIGHTS:
    raise ValueError(f'weights={weights!r}: expected one of {WEIGHTS}')
  if dtype == 'bfloat16' and jax.default_backend() == 'cpu':
    from facejax.inference import hardware
    flags = hardware.cpu_info().get('cpu_flags')
    if flags is not None and not {'avx512_bf16', 'amx_bf16'} & set(flags):
      warnings.warn("dtype='bfloat16': this CPU has neither avx512_bf16 nor amx_bf16, so the bf16 matmuls run "
                    'without hardware support and may be slower than float32', stacklevel=2)
  if calibration is not None and dtype != 'int8':
    raise ValueError(f"calibration: static activation scales are for dtype='int8', got dtype={dtype!r}")
  variables = jax.tree_util.tree_map(np.asarray, dict(variables))
  plan = trace_plan(model, variables, image_size, method)
  ranges = None if calibration is None else activation_ranges(model, variables, calibration, method)
  folded = prepare_layers(fold_batch_norm(model, variables, image_size, plan), plan, conv, dtype, im2col_max_pixels,
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
      entry = plan.get(path)
      if entry is None:
        return next_fun(*args, **kwargs)
      h = args[0]
      if entry.kind == 'bn':
        if entry.fold_into is not None:
          return h
        a = params['affine'][path]
        return h * a['scale'].astype(h.dtype) + a['shift'].astype(h.dtype)
      if entry.kind == 'dense':
        return dense_forward(params['layers'][path], h)
      return conv_forward(entry, dict(params['layers'][path], lowering=lowerings[path]), h)

    with nn.intercept_methods(interceptor):
      return model.apply(params['rest'], x.astype(jnp.float32), method=method)

  def forward(params, x):
    return l2_normalize(raw_forward(params, x))

  options = dict(conv=conv, dtype=dtype, weights=weights, calibrated=calibration is not None)
  if compiler_options is None:
    compiler_options = default_compiler_options(plan, lowerings, dtype)
  return InferenceFn(forward, folded, raw_forward, options, compiler_options)
