"""XLA options. `fn.compiler_options` (jit with them) pick how XLA hands dots to YNNPACK per dtype and network
shape (`default_compiler_options`).
"""
from __future__ import annotations

import jax
import numpy as np

from facejax.inference.flops import layer_flops
from facejax.inference.optimize.trace import TracedLayer

# XLA CPU compile options per dtype policy (passed per executable, so nothing leaks into the rest of the
# process). YNNPACK runs XLA CPU's dots by default in jax 0.10. float32: adding ELTWISE lets it take the bias,
# ReLU and residual add that follow each matmul into the same fusion. bfloat16: INDIVIDUAL_DOT (one dot per
# YNNPACK call): with ELTWISE the bf16 converts land in YNNPACK's slow path. int8: the default (ELTWISE pulls
# the quantise ops into the slow path, and INDIVIDUAL_DOT is slower too).
# `default_compiler_options` switches to INDIVIDUAL_DOT for VGG-like nets whatever the dtype, and to XLA's own
# handling ({}) for float32 nets with depthwise convs (MobileNets, the converted TensorFlow.js face models), whose
# chains of depthwise taps and elementwise ops ELTWISE fusion slows down.
# Measurements behind each choice: docs/cpu_inference.md (python -m launch.compare_cpu).
YNN_DOT_ELTWISE = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE'}
YNN_INDIVIDUAL_DOT = {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}
DEFAULT_COMPILER_OPTIONS = {'float32': YNN_DOT_ELTWISE, 'bfloat16': YNN_INDIVIDUAL_DOT, 'int8': {}}
DTYPES = ('float32', 'bfloat16', 'int8')


def default_compiler_options(traced: dict[str, TracedLayer], lowerings: dict[str, str], dtype: str) -> dict:
  """DEFAULT_COMPILER_OPTIONS[dtype], except YNNPACK gets individual dots only when most conv FLOPs run as
  native convolutions or the dense kernels outweigh the conv kernels (VGG-16's fc6/fc7). Otherwise XLA hands
  whole chains of convs, pools and the fc matrix-vector products to YNNPACK as one fusion, which recomputes
  work. Where im2col matmuls dominate (ResNet-50) the per-dtype default is as good or better. float32 with any
  depthwise (grouped) conv: no YNNPACK fusion option at all."""
  if jax.default_backend() != 'cpu':
    return {}
  options = dict(DEFAULT_COMPILER_OPTIONS[dtype])
  convs = [(p, e) for p, e in traced.items() if e.kind == 'conv']
  if dtype == 'float32' and any(getattr(e.module, 'feature_group_count', 1) > 1 for _, e in convs):
    return {}
  native = sum(layer_flops({p: e}) for p, e in convs if lowerings.get(p) == 'xla')
  total = sum(layer_flops({p: e}) for p, e in convs)
  conv_weights = sum(int(np.prod(e.module.kernel_size)) * e.in_shape[-1] * e.out_shape[-1] for _, e in convs)
  dense_weights = sum(e.in_shape[-1] * e.out_shape[-1] for e in traced.values() if e.kind == 'dense')
  if (total and native / total > 0.5) or dense_weights > conv_weights:
    options.update(YNN_INDIVIDUAL_DOT)
  return options
