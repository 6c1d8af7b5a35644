"""FLOP counting, every count facejax reports.

`layer_flops(traced)`: 2 x the multiply-accumulates of the conv and dense layers `trace_layers` found
(`optimize.trace.trace_layers`), the model's cost whatever its lowering (model cards, benchmark records).
`compiled_flops(compiled)`: what XLA's cost analysis of a lowered or compiled executable says.
`jaxpr_flops` counts conv/matmul FLOPs from a function's jaxpr instead, the same on every backend (on GPU XLA's
count misses the cuDNN/cuBLAS custom calls).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Sequence

import jax
import numpy as np

if TYPE_CHECKING:
  from facejax.inference.optimize.trace import TracedLayer


def layer_flops(traced: dict[str, TracedLayer]) -> int:
  """2 x multiply-accumulates of every conv and dense layer traced (at the traced batch size): the model's
  FLOPs independent of how they are lowered (XLA's cost analysis counts im2col copies and BN arithmetic too)."""
  total = 0
  for entry in traced.values():
    if entry.kind == 'conv':
      c = entry.module
      total += int(np.prod(entry.out_shape)) * int(np.prod(c.kernel_size)) * (entry.in_shape[-1] //
                                                                             c.feature_group_count)
    elif entry.kind == 'dense':
      total += int(np.prod(entry.out_shape)) * entry.in_shape[-1]
  return 2 * total


def compiled_flops(compiled) -> float | None:
  """FLOPs per call from `compiled.cost_analysis()` (a dict, or a list of one dict on older jax); None when
  the backend reports none, or when the executable calls oneDNN (convolutions, dense layers), whose work XLA
  cannot see."""
  from facejax.inference.optimize.onednn import TARGETS
  text = compiled.as_text()
  if any(t in text for t in TARGETS):
    return None
  try:
    cost = compiled.cost_analysis()
  except Exception:  # some backends do not implement it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or 'flops' not in cost or cost['flops'] < 0:  # GPU custom calls (cuBLAS/cuDNN) report -1
    return None
  return float(cost['flops'])


def _valid_positions(n_in: int, n_kernel: int, n_out: int, stride: int, pad_lo: int, lhs_dilation: int,
                     rhs_dilation: int) -> int:
  """(output index o, kernel index k) pairs along one spatial dim whose input index (o * stride - pad_lo +
  k * rhs_dilation) / lhs_dilation is a real element: inside the input, not padding nor an lhs-dilation hole."""
  def count(o, k):
    t = o * stride - pad_lo + k * rhs_dilation
    return int(np.count_nonzero((t >= 0) & (t < n_in * lhs_dilation) & (t % lhs_dilation == 0)))

  # Loop over the shorter axis, vectorise the longer: weight gradients have kernels as large as the image.
  o, k = np.arange(n_out), np.arange(n_kernel)
  return sum(count(o, j) for j in k) if n_kernel <= n_out else sum(count(j, k) for j in o)


def conv_flops(lhs_shape: Sequence[int], rhs_shape: Sequence[int], out_shape: Sequence[int], params: dict) -> int:
  """FLOPs of one conv_general_dilated (its jaxpr params), as XLA's HloCostAnalysis::GetConvolutionFlops counts
  them: 2 x in_features / feature_group_count x out_features x batch / batch_group_count x the product over
  spatial dims of `_valid_positions` (taps on padding are not counted)."""
  dn = params['dimension_numbers']
  lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
  positions = 1
  for i, (stride, (pad_lo, _), lhs_dilation, rhs_dilation) in enumerate(zip(
      params['window_strides'], params['padding'], params['lhs_dilation'], params['rhs_dilation'])):
    positions *= _valid_positions(lhs_shape[lhs_spec[2 + i]], rhs_shape[rhs_spec[2 + i]],
                                  out_shape[out_spec[2 + i]], stride, pad_lo, lhs_dilation, rhs_dilation)
  batch, in_features, out_features = lhs_shape[lhs_spec[0]], lhs_shape[lhs_spec[1]], out_shape[out_spec[1]]
  return (2 * (in_features // params['feature_group_count']) * out_features
          * (batch // params['batch_group_count']) * positions)


def dot_flops(lhs_shape: Sequence[int], out_shape: Sequence[int], params: dict) -> int:
  """FLOPs of one dot_general: 2 x output elements x contracted size (batch and free dims are in the output)."""
  (lhs_contracting, _), _ = params['dimension_numbers']
  return 2 * math.prod(out_shape) * math.prod(lhs_shape[d] for d in lhs_contracting)


def _subjaxprs(value) -> list:
  """The Jaxprs in one equation parameter: a Jaxpr, a ClosedJaxpr, or tuples/lists of them (cond's branches).
  Duck-typed, so it does not depend on where a jax version keeps these classes."""
  if hasattr(value, 'eqns'):
    return [value]
  if hasattr(getattr(value, 'jaxpr', None), 'eqns'):
    return [value.jaxpr]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _subjaxprs(v)]
  return []


def _jaxpr_flops(jaxpr, live_out: Sequence[bool] | None = None) -> int:
  """Conv/dot FLOPs of the equations of `jaxpr` that its (live) outputs depend on, sub-jaxprs included."""
  live_out = [True] * len(jaxpr.outvars) if live_out is None else live_out
  live = {id(v) for v, keep in zip(jaxpr.outvars, live_out) if keep}
  total = 0
  # Backwards, skipping equations nothing live reads: jit drops them before XLA sees the program (the primal
  # output of jax.vjp that nobody uses, say), so counting them would disagree with XLA.
  for eqn in reversed(jaxpr.eqns):
    outs = [id(v) in live for v in eqn.outvars]
    if not any(outs) and not eqn.effects:
      continue
    live.update(id(v) for v in eqn.invars)
    total += _eqn_flops(eqn, outs)
  return total


def _eqn_flops(eqn, live_out: list[bool]) -> int:
  """Conv/dot FLOPs of one equation, of the sub-jaxprs it calls included; `live_out`: which outputs are read."""
  name = eqn.primitive.name
  shape = lambda v: tuple(v.aval.shape)
  if name == 'conv_general_dilated':
    return conv_flops(shape(eqn.invars[0]), shape(eqn.invars[1]), shape(eqn.outvars[0]), eqn.params)
  if name == 'dot_general':
    return dot_flops(shape(eqn.invars[0]), shape(eqn.outvars[0]), eqn.params)
  subs = [j for v in eqn.params.values() for j in _subjaxprs(v)]
  if not subs:
    return 0
  if name in ('scan', 'while'):  # carries feed back into the body: every output of the body is live
    body = sum(_jaxpr_flops(j) for j in subs)
    return body * eqn.params['length'] if name == 'scan' else body
  # pjit, closed_call, remat, custom_jvp/vjp_call, shard_map, xla_pmap, cond branches: outputs map one to one.
  counts = [_jaxpr_flops(j, live_out if len(j.outvars) == len(live_out) else None) for j in subs]
  return max(counts) if name == 'cond' else sum(counts)


def jaxpr_flops(fn: Callable, *args, axis_env: Sequence[tuple[str, int]] = (), **kwargs) -> float:
  """FLOPs of conv_general_dilated and dot_general in fn's jaxpr (forward and, if fn differentiates, backward):
  2 x multiply-adds, counted as XLA's HloCostAnalysis counts them, platform independent; elementwise ops are not
  counted.

  `args`: arrays or jax.ShapeDtypeStructs (or pytrees of them); nothing is compiled or run. `axis_env`:
  [(axis_name, size)] so a pmapped step that calls `lax.psum(..., axis_name)` traces unmapped (per device).
  Sub-jaxprs are walked: jit, remat (recomputation counted again: hardware FLOPs), custom_jvp/vjp, cond (the
  most expensive branch), scan (body x length), while (body once: the trip count is not static; XLA counts it
  once too), shard_map and pmap bodies (once: per device). Equations whose outputs are unused are skipped, as
  jit drops them.
  """
  closed = jax.make_jaxpr(fn, axis_env=list(axis_env))(*args, **kwargs)
  return float(_jaxpr_flops(closed.jaxpr))
