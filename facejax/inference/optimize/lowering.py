"""Conv lowering. `conv='im2col'`: k>1 convs as one matmul over the k*k shifted strided slices of the padded input
concatenated on channels; 1x1 convs as a plain matmul (strided slice first); depthwise convs as k*k shifted
multiply-adds (a global depthwise conv as one reduction). `conv='winograd'`: 3x3 stride-1 convs as Winograd F(2x2,
3x3) (16 multiplies per 2x2 tile instead of 36: input transform, one batched matmul, output transform), the rest as
im2col. `conv='xla'`: `lax.conv_general_dilated` with the folded weights. `conv='auto'` (default) picks per layer
from the output map size: native conv above 14x14, Winograd for 3x3/s1 at 14x14 and below, im2col matmuls otherwise
(with `dtype='int8'`: int8 im2col up to 112x112, native float conv above; with `dtype='bfloat16'`: im2col while the
im2col matrix per image is at most 16 MB, see `auto_lowering`); off the CPU, native convs everywhere.
`conv='onednn'`: plain and depthwise 2-D float32 (or, under the bf16 policy, bfloat16) convs through oneDNN's CPU
kernels as a custom call (`onednn`); under the bf16 policy the large dense layers too (bf16 kernels, float32 out);
under the int8 policy with calibration, ungrouped convs as int8 x int8 (static activation scales, float32 out).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax
from flax.linen.linear import canonicalize_padding

from facejax.inference.optimize import onednn
from facejax.inference.optimize.quantize import _int8_matmul, _quantize_activations
from facejax.inference.optimize.trace import TracedLayer

CONV_IMPLS = ('auto', 'im2col', 'winograd', 'xla', 'onednn')
AUTO_INT8_IM2COL_MAX_PIXELS = 12544  # dtype='int8', conv='auto': larger maps (VGG's 224x224) run float32 native convs
AUTO_IM2COL_MAX_PIXELS = 196  # conv='auto': k>1 convs with at most this many output pixels per image -> im2col
AUTO_BF16_IM2COL_MAX_BYTES = 16 << 20  # conv='auto', bfloat16: im2col while its matrix per image is at most this
# conv='onednn', bfloat16: dense layers with at least this many weights go to oneDNN's bf16 matmul (memory-bound at
# batch 1, so half the bytes pay for the call's ~10-20 us; smaller ones stay XLA float32 dots)
ONEDNN_DENSE_MIN_WEIGHTS = 1 << 20


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


def _winograd_ok(entry: TracedLayer) -> bool:
  return entry.kind == 'conv' and tuple(entry.module.kernel_size) == (3, 3) and _strides(entry.module) == (1, 1)


def auto_lowering(entry: TracedLayer, dtype: str = 'float32', im2col_max_pixels: int = AUTO_IM2COL_MAX_PIXELS,
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
  avx512_bf16 run bf16 x bf16 -> f32 dots faster than f32 ones, and faster than bf16 -> bf16)."""
  return jnp.float32 if dtype == jnp.bfloat16 else None


def _matmul(x, w):
  """[..., K] @ [K, F] -> [..., F], accumulated (and returned) in `_acc` of the operands' dtype."""
  return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=_acc(w.dtype))


def _im2col(x, kh, kw, sh, sw, pads):
  """[B, H, W, C] -> [B, Ho, Wo, kh*kw*C] in (i, j, c) order, which is an HWIO kernel reshaped to 2-D."""
  if kh == kw == 1 and all(p == (0, 0) for p in pads):
    return x[:, ::sh, ::sw, :] if (sh, sw) != (1, 1) else x
  return jnp.concatenate(_shifted_slices(x, kh, kw, sh, sw, pads), axis=-1)


def _im2col_as(x, dtype, kh, kw, sh, sw, pads):
  """`_im2col` of `x` cast to `dtype`. bfloat16 columns are gathered as their uint16 bit patterns: XLA CPU
  upcasts bf16 pads, slices and concatenations to float32 (convert, move, convert back), which doubled the
  bytes moved and cost more than the matmuls."""
  x = x.astype(dtype)
  if dtype != jnp.bfloat16:
    return _im2col(x, kh, kw, sh, sw, pads)
  bits = _im2col(lax.bitcast_convert_type(x, jnp.uint16), kh, kw, sh, sw, pads)
  return lax.bitcast_convert_type(bits, jnp.bfloat16)


def conv_forward(entry: TracedLayer, p: dict, x):
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
  if lowering == 'onednn':
    if kernel.dtype == jnp.int8:  # the calibrated static scale: oneDNN takes one per tensor
      x = _quantize_activations(x, p['act_scale'])[0]
    return onednn.conv(x, kernel, bias, (sh, sw), pads, dtype=kernel.dtype)
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
  matrix-vector product of batch 1 streams the kernel once); with `p['lowering'] == 'onednn'`, [K, F] in the
  kernel's dtype (bfloat16: half the bytes) through `onednn.dense`, float32 out."""
  kernel, bias = p['kernel'], p['bias']
  if p.get('lowering') == 'onednn':
    y = onednn.dense(x.reshape(-1, x.shape[-1]), kernel, bias, dtype=kernel.dtype)
    return y.reshape(*x.shape[:-1], kernel.shape[1])
  return lax.dot_general(x.astype(kernel.dtype), kernel, (((x.ndim - 1,), (1,)), ((), ()))) + bias
