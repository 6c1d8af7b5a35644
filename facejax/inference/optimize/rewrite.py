"""A rewrite of the traced forward's jaxpr, for what the model code writes as separate ops:

- **Epilogue fusion.** A oneDNN convolution (`onednn.conv`) whose output only feeds a residual add and/or a ReLU,
  or a PReLU with one slope (flax's `nn.PReLU`), takes them in as oneDNN post-ops: `relu(conv(x) + b + r)` is
  one call, not a call plus an XLA loop (which, on XLA CPU, also materialises a zero tensor for `max(y, 0)`).
- **Max pooling as strided slices.** `reduce_window_max` (flax's `max_pool`) becomes the elementwise max of
  its window's strided slices, which XLA CPU fuses into one vectorised loop instead of its scalar reduce-window
  loop (where YNNPACK takes the max instead, as in all-oneDNN graphs, it is no faster: docs/cpu_inference.md).

Both give the same numbers (max is exact; the post-ops add in the same order; a PReLU's slope multiplies before the
result is rounded to the conv's dtype instead of after). Only the top-level jaxpr is rewritten; anything inside a
nested jit or custom rule runs as traced.
"""
from __future__ import annotations

import collections
import functools
import itertools

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core

from facejax.inference.optimize import onednn


def rewrite_forward(fn):
  """`fn(*args)` traced once per call signature and re-evaluated with the rewrites above."""
  @functools.wraps(fn)
  def rewritten(*args):
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    outs = _evaluate(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(args))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)
  return rewritten


def _is_var(v) -> bool:
  return not isinstance(v, core.Literal)


def _call_body(eqn):
  """(the one equation of a call's jaxpr, {that jaxpr's inputs: the call's operands}) when that equation alone
  computes the call's outputs (jax.nn.relu is a custom_jvp around a jit, jnp.where a jit); else None."""
  inner = eqn.params.get('call_jaxpr', eqn.params.get('jaxpr'))
  inner = getattr(inner, 'jaxpr', inner)
  if isinstance(inner, core.Jaxpr) and len(inner.eqns) == 1 and inner.outvars == inner.eqns[0].outvars:
    return inner.eqns[0], dict(zip(inner.invars, eqn.invars))
  return None


def _relu_input(eqn):
  """The input of a ReLU equation, else None: max(y, 0), or a one-input call whose body is such an equation on
  that input."""
  if eqn.primitive.name == 'max':
    a, b = eqn.invars
    for y, zero in ((a, b), (b, a)):
      if _is_zero(zero) and _is_var(y):
        return y
    return None
  body = _call_body(eqn)
  if body is None or len(eqn.invars) != 1:
    return None
  inner, outer = body
  return outer.get(_relu_input(inner))  # None unless the ReLU is on the call's input


def _select_operands(eqn):
  """(predicate, case 0, case 1) of a select_n equation, or of a call whose body is one select_n on the call's
  inputs; else None."""
  if eqn.primitive.name == 'select_n':
    return tuple(eqn.invars) if len(eqn.invars) == 3 else None
  body = _call_body(eqn)
  operands = None if body is None else _select_operands(body[0])
  if operands is None or not all(_is_var(v) and v in body[1] for v in operands):
    return None
  return tuple(body[1][v] for v in operands)


def _is_zero(v) -> bool:
  return not _is_var(v) and jnp.ndim(v.val) == 0 and v.val == 0


def _is_onednn_conv(eqn) -> bool:
  return (eqn.primitive.name == 'ffi_call' and eqn.params['target_name'] == onednn.TARGET
          and len(eqn.invars) == 3 and not onednn.call_options(eqn.params['attributes'])['relu'])


def _plan(jaxpr):
  """-> ({eqn index: (conv eqn, residual var or None, relu, PReLU slope var or None)} emitted there, eqn indices
  to skip)."""
  uses = collections.Counter(v for e in jaxpr.eqns for v in e.invars if _is_var(v))
  uses.update(v for v in jaxpr.outvars if _is_var(v))
  producer = {v: i for i, e in enumerate(jaxpr.eqns) for v in e.outvars}
  emit, skip = {}, set()  # skip holds every conv already fused (and the adds moved into a later ReLU)

  def single_use_conv(v, n=1):  # the index of the oneDNN conv that produces v, when v has n uses
    i = producer.get(v)
    if i is not None and uses[v] == n and i not in skip and _is_onednn_conv(jaxpr.eqns[i]):
      return i
    return None

  for i, eqn in enumerate(jaxpr.eqns):
    select = _select_operands(eqn)
    if select is not None:  # PReLU as flax writes it: where(y >= 0, y, slope * y), one scalar slope
      pred, negative, y = select
      ge, mul = (jaxpr.eqns[producer[v]] if _is_var(v) and v in producer else None for v in (pred, negative))
      c = single_use_conv(y, 3)  # y >= 0, slope * y and the select
      if (c is not None and ge is not None and ge.primitive.name == 'ge' and ge.invars[0] is y
          and _is_zero(ge.invars[1]) and mul is not None and mul.primitive.name == 'mul' and y in mul.invars
          and uses[pred] == uses[negative] == 1):
        slope = mul.invars[1] if mul.invars[0] is y else mul.invars[0]
        if slope is not y and jnp.ndim(slope.aval if _is_var(slope) else slope.val) == 0:
          emit[i] = (c, None, False, slope)
          skip.update((c, producer[pred], producer[negative]))
          continue
    if eqn.primitive.name == 'add' and all(_is_var(v) for v in eqn.invars):
      for u, r in (eqn.invars, eqn.invars[::-1]):
        c = single_use_conv(u)
        if c is not None and (r.aval.shape, r.aval.dtype) == (u.aval.shape, u.aval.dtype):
          emit[i] = (c, r, False, None)
          skip.add(c)
          break
    y = _relu_input(eqn)
    if y is None or uses[y] != 1 or y not in producer:
      continue
    j = producer[y]
    if j in emit and not emit[j][2] and emit[j][3] is None:  # conv + residual add, then this ReLU
      c, r, _, _ = emit.pop(j)
      emit[i] = (c, r, True, None)
      skip.add(j)
    elif (c := single_use_conv(y)) is not None:
      emit[i] = (c, None, True, None)
      skip.add(c)
  return {i: (jaxpr.eqns[c], *rest) for i, (c, *rest) in emit.items()}, skip


def _max_pool(x, window_dimensions, window_strides, padding, base_dilation, window_dilation):
  if any(lo or hi for lo, hi in padding):
    x = lax.pad(x, jnp.array(-jnp.inf, x.dtype), [(lo, hi, 0) for lo, hi in padding])
  out = [(n - w) // s + 1 for n, w, s in zip(x.shape, window_dimensions, window_strides)]
  slices = [lax.slice(x, start, [a + (o - 1) * s + 1 for a, o, s in zip(start, out, window_strides)],
                      window_strides)
            for start in itertools.product(*(range(w) for w in window_dimensions))]
  return functools.reduce(lax.max, slices)


def _evaluate(jaxpr, consts, args):
  emit, skip = _plan(jaxpr)
  env = dict(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  read = lambda v: env[v] if _is_var(v) else v.val
  for i, eqn in enumerate(jaxpr.eqns):
    if i in skip:
      continue
    if i in emit:
      conv, residual, relu, slope = emit[i]
      call = onednn.call_options(conv.params['attributes'])
      outs = [onednn.conv(*map(read, conv.invars), call['strides'], call['pads'], relu=relu,
                          residual=None if residual is None else read(residual), dtype=conv.outvars[0].aval.dtype,
                          prelu=None if slope is None else read(slope))]
    elif (eqn.primitive.name == 'reduce_window_max'
          and set(eqn.params['base_dilation']) | set(eqn.params['window_dilation']) == {1}):
      outs = [_max_pool(read(eqn.invars[0]), **eqn.params)]
    else:  # as jax.core.eval_jaxpr does
      with eqn.ctx.manager:
        outs = eqn.primitive.bind(*map(read, eqn.invars), **eqn.primitive.get_bind_params(eqn.params))
      outs = outs if eqn.primitive.multiple_results else [outs]
    env.update(zip(eqn.outvars, outs))
  return [read(v) for v in jaxpr.outvars]
