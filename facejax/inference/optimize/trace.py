"""The traced layers of an inference rewrite: which modules run, with which configuration, and which BN folds into which
layer.

The rewrite is generic over the model code: one abstract trace of the embedding forward (`jax.eval_shape` under
`flax.linen.intercept_methods`) records every `nn.Conv`/`nn.Dense`/`nn.BatchNorm` call and which BatchNorm reads
exactly the output of which Conv/Dense.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass
class TracedLayer:
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


def trace_layers(model, variables, image_size: int, method: Callable = _raw_embed) -> dict[str, TracedLayer]:
  """Abstract trace of `method` -> {path: TracedLayer} in call order."""
  traced: dict[str, TracedLayer] = {}
  producers: dict[int, tuple[str, Any]] = {}  # id(output tracer) -> (conv/dense path, tracer kept alive)

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != '__call__' or not isinstance(module, (nn.Conv, nn.Dense, nn.BatchNorm)):
      return next_fun(*args, **kwargs)
    path = _path(module)
    kind = _KINDS.get(type(module))
    if kind is None:  # subclasses: do not guess their semantics
      return next_fun(*args, **kwargs)
    if path in traced:
      raise ValueError(f'{path}: module called twice; the inference rewrite expects each layer to run once')
    x = args[0]
    entry = TracedLayer(path, kind, module.clone(parent=None), in_shape=tuple(x.shape))
    traced[path] = entry
    out = next_fun(*args, **kwargs)
    entry.out_shape = tuple(out.shape)
    if kind == 'bn':
      producer = producers.pop(id(x), None)
      if producer is not None and module.axis in (-1, x.ndim - 1):
        entry.fold_into = producer[0]
        traced[producer[0]].folded_bn = path
    else:
      producers[id(out)] = (path, out)
    return out

  def run(variables, x):
    with nn.intercept_methods(interceptor):
      return model.apply(variables, x, method=method)

  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  jax.eval_shape(run, variables, x)
  return traced
