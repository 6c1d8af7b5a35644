"""oneDNN convolutions and dense layers as XLA CPU custom calls (`jax.ffi`), with a pure-XLA fallback.

`conv(x, kernel, bias, strides, pads, relu, residual, dtype)` runs an NHWC x HWIO 2-D convolution (plain, grouped
or depthwise) plus bias (then + residual, then ReLU, as oneDNN post-ops) through oneDNN (`onednn_conv.cc`) when the
library is built and the backend is the CPU, and through `lax.conv_general_dilated` otherwise; tests hold the two
to 1e-5 in float32. With `dtype=bfloat16` the input, kernel, residual and output are bf16 (products accumulated in
float32, the result rounded once), which oneDNN runs on bf16 dot instructions (avx512_bf16, AMX:
`hardware.has_bf16_dots`). The optimized forward's rewrite (`rewrite`) moves the model's own residual adds and
ReLUs into these calls. `dense(x, kernel, bias, dtype)` is a dense layer [M, K] x [K, N] with a float32 output: in
bf16 it streams half the kernel bytes that XLA's float32 matrix-vector product reads at batch 1. oneDNN picks its
kernels for the CPU it runs on (AVX2, AVX-512, AMX) and keeps each kernel in its own blocked layout, reordered once
per kernel buffer.

The project's install builds it (`make venv`: the `[onednn]` extra's headers and library, then g++):

  python -c 'from facejax.inference.optimize import onednn; onednn.build()'

`launch.export --conv=onednn` writes a `.jaxexport` that calls it, so the loading process needs it built too
(`load_exported` checks); ONNX exports keep plain Conv ops.
Measured effect: docs/cpu_inference.md (`launch.compare_cpu --variants=jax_opt,jax_onednn,ort_facejax`).
"""
from __future__ import annotations

import ctypes
import functools
import os
import subprocess
import sysconfig
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

SOURCE = Path(__file__).with_name('onednn_conv.cc')
LIBRARY = Path(os.environ.get('FACEJAX_ONEDNN_LIB', SOURCE.with_name('onednn_conv.so')))
TARGET = 'facejax_onednn_conv'
DENSE_TARGET = 'facejax_onednn_dense'
TARGETS = (TARGET, DENSE_TARGET)


def _prefix() -> Path:
  """Where pip put the `onednn` wheels' data files (lib/libdnnl.so, include/oneapi/...): this environment."""
  return Path(sysconfig.get_paths()['data'])


def build(out: Path = LIBRARY) -> Path:
  """Compile the custom call against the installed oneDNN and jaxlib's FFI headers."""
  prefix = _prefix()
  header = prefix / 'include' / 'oneapi' / 'dnnl' / 'dnnl.hpp'
  if not header.exists():
    raise FileNotFoundError(f"{header} not found: install oneDNN first: pip install -e '.[onednn]'")
  # DT_RPATH (not RUNPATH) so libdnnl's own dependencies (TBB, SYCL) are found in the same lib/ folder.
  subprocess.run(['g++', '-O2', '-std=c++17', '-shared', '-fPIC', '-w', f'-I{prefix / "include"}',
                  f'-I{jax.ffi.include_dir()}', str(SOURCE), '-o', str(out), f'-L{prefix / "lib"}', '-ldnnl',
                  '-Wl,--disable-new-dtags', f'-Wl,-rpath,{prefix / "lib"}'], check=True)
  return out


@functools.cache
def unavailable() -> str | None:
  """None when the custom call is built, loaded and registered; else why not (then `conv` runs XLA's)."""
  if jax.default_backend() != 'cpu':
    return f'the backend is {jax.default_backend()}, not the CPU'
  if not LIBRARY.exists():
    return f"{LIBRARY} is not built (make venv, or: pip install -e '.[onednn]' then onednn.build())"
  # The PyPI oneDNN runs its CPU engine on SYCL, which finds the CPU through the OpenCL runtime pip put beside
  # it (intel-opencl-rt); that runtime's .icd file names its build machine's path, so name the library here.
  icd = _prefix() / 'lib' / 'libintelocl.so'
  if icd.exists():
    os.environ.setdefault('OCL_ICD_FILENAMES', str(icd))
  # oneDNN's workers on half the cores, XLA's pool on the rest: on 2 vCPUs one worker ran every net faster at
  # batch 1 than two, which fought XLA's threads (docs/cpu_inference.md). Set it yourself to override.
  os.environ.setdefault('DPCPP_CPU_NUM_CUS', str(max(1, len(os.sched_getaffinity(0)) // 2)))
  try:
    lib = ctypes.cdll.LoadLibrary(str(LIBRARY))
  except OSError as e:
    return f'{LIBRARY} does not load: {e}'
  try:
    handlers = {TARGET: lib.FacejaxOnednnConv, DENSE_TARGET: lib.FacejaxOnednnDense}
  except AttributeError as e:
    return f'{LIBRARY} is out of date ({e}): rebuild it (make venv, or onednn.build())'
  for target, handler in handlers.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform='cpu')
  return None


def int8_unavailable() -> str | None:
  """None when int8 convolutions run in oneDNN here, exactly; else why not (then `conv` runs XLA's exact int32
  conv, and `optimize_for_inference` keeps oneDNN's convs in float32): the custom call is not built, or the CPU
  has no int8 dot instructions (`hardware.has_int8_dots`), where oneDNN's int8 sums saturate."""
  from facejax.inference import hardware
  if unavailable():
    return unavailable()
  if not hardware.has_int8_dots(hardware.cpu_info().get('cpu_flags')):
    return ('this CPU has no int8 dot instructions (avx512_vnni, avx_vnni or amx_int8), so oneDNN\'s int8 kernels '
            'saturate pairwise sums to int16')
  return None


def _xla_conv(x, kernel, bias, *rest, strides, pads, relu: bool, residual: bool):
  int8 = kernel.dtype == jnp.int8
  y = lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                               feature_group_count=x.shape[-1] // kernel.shape[2],
                               preferred_element_type=jnp.int32 if int8 else jnp.float32)
  y = y.astype(jnp.float32) * bias[1] + bias[0] if int8 else y + bias
  y = y + rest[0].astype(jnp.float32) if residual else y
  if len(rest) > residual:  # PReLU (flax's nn.PReLU: one slope)
    y = jnp.where(y >= 0, y, rest[-1] * y)
  return (jax.nn.relu(y) if relu else y).astype(jnp.float32 if int8 else x.dtype)


def _check_dtype(dtype, fn: str):
  dtype = jnp.dtype(dtype)
  if dtype not in (jnp.float32, jnp.bfloat16):
    raise ValueError(f'onednn.{fn}: dtype={dtype}, expected float32 or bfloat16')
  return dtype


def conv(x, kernel, bias, strides: tuple[int, int], pads, relu: bool = False, residual=None, dtype=jnp.float32,
         prelu=None):
  """`x` [B, H, W, C] * `kernel` [kh, kw, C / groups, F] (groups > 1: grouped; C of them: depthwise) + float32
  `bias` [F] (+ `residual` [B, OH, OW, F], then ReLU if `relu`, or PReLU with the scalar slope `prelu`: oneDNN
  post-ops) with zero `pads` ((top, bottom), (left, right)) -> [B, OH, OW, F] in `dtype` (float32 or bfloat16:
  x, kernel and residual are cast to it): oneDNN, or XLA when `unavailable()`. An int8 `kernel` (not grouped) takes
  an int8 `x` and a float32 `bias` [2, F]: the bias and each channel's dequantization scale (x's scale times the
  kernel's), and returns float32 (`dtype` is then ignored; the residual is float32): the exact int32 sums, from
  oneDNN where `int8_unavailable()` is None, else from XLA."""
  int8 = jnp.dtype(kernel.dtype) == jnp.int8
  dtype = jnp.dtype(jnp.float32) if int8 else _check_dtype(dtype, 'conv')
  if relu and prelu is not None:
    raise ValueError('onednn.conv: relu=True and a prelu slope: one activation at most')
  if int8 and (jnp.dtype(x.dtype) != jnp.int8 or jnp.shape(bias) != (2, kernel.shape[-1])
               or kernel.shape[2] != x.shape[-1]):
    raise ValueError(f'onednn.conv: an int8 kernel {kernel.shape} takes an int8 x (got {x.dtype}), a bias [2, '
                     f'{kernel.shape[-1]}] (got {jnp.shape(bias)}) and no groups')
  args = [jnp.asarray(x), jnp.asarray(kernel)] if int8 else [jnp.asarray(a, dtype) for a in (x, kernel)]
  args += [] if residual is None else [jnp.asarray(residual, dtype)]
  args.insert(2, jnp.asarray(bias, jnp.float32))
  if prelu is not None:
    args.append(jnp.reshape(jnp.asarray(prelu, jnp.float32), ()))
  xla = functools.partial(_xla_conv, strides=strides, pads=pads, relu=relu, residual=residual is not None)
  if int8_unavailable() if int8 else unavailable():
    return xla(*args)
  # oneDNN writes what XLA's conv would return
  out = jax.eval_shape(functools.partial(_xla_conv, strides=strides, pads=pads, relu=False, residual=False), *args[:3])
  if residual is not None and args[3].shape != out.shape:
    raise ValueError(f'onednn.conv: residual of shape {args[3].shape}, expected the output shape {out.shape}')
  (pt, pb), (pl, pr) = pads
  i64 = np.int64
  return jax.ffi.ffi_call(TARGET, out, vmap_method='sequential')(
      *args, stride_h=i64(strides[0]), stride_w=i64(strides[1]), pad_top=i64(pt), pad_bottom=i64(pb),
      pad_left=i64(pl), pad_right=i64(pr), relu=i64(2 if prelu is not None else relu))


def dense(x, kernel, bias, dtype=jnp.float32):
  """`x` [M, K] @ `kernel` [K, N] + float32 `bias` [N] -> float32 [M, N], x and kernel cast to `dtype` (float32 or
  bfloat16; products accumulated in float32): oneDNN's matmul, or XLA's dot when `unavailable()`."""
  dtype = _check_dtype(dtype, 'dense')
  x, kernel, bias = jnp.asarray(x, dtype), jnp.asarray(kernel, dtype), jnp.asarray(bias, jnp.float32)
  if x.ndim != 2 or kernel.ndim != 2 or x.shape[1] != kernel.shape[0] or bias.shape != kernel.shape[1:]:
    raise ValueError(f'onednn.dense: x {x.shape}, kernel {kernel.shape}, bias {bias.shape}: expected [M, K], '
                     '[K, N], [N]')
  if unavailable():
    return lax.dot_general(x, kernel, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32) + bias
  out = jax.ShapeDtypeStruct((x.shape[0], kernel.shape[1]), jnp.float32)
  return jax.ffi.ffi_call(DENSE_TARGET, out, vmap_method='sequential')(x, kernel, bias)


def call_options(attributes) -> dict:
  """A traced call's attributes (the `ffi_call` equation's `attributes` param) -> `conv`'s strides, pads, relu
  (and 'prelu': whether its last operand is a PReLU slope)."""
  a = {k: int(v) for k, v in dict(attributes).items()}
  return {'strides': (a['stride_h'], a['stride_w']),
          'pads': ((a['pad_top'], a['pad_bottom']), (a['pad_left'], a['pad_right'])), 'relu': a['relu'] == 1,
          'prelu': a['relu'] == 2}
