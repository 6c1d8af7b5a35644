"""Conversion plans: which source tensor fills which model variable, and how; and the checked assembly.

A source reader (`keras_h5`, `torchvision`) turns a file into flat `{key: np.ndarray}` and a planner
returns a `Plan`. `apply_plan` checks the plan against the model's abstract variables and fills them.
Nothing is loaded partially: a model variable no tensor fills, a source tensor nothing consumes and any
shape mismatch are errors. The only exceptions are explicit and reported: `Plan.skip` (source tensors the
target arch drops by design, e.g. fc6/fc7 for `vgg16_gap`) and `Plan.init_head` (the classifier head is
freshly initialised when the source has none that fits).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from facejax.models.registry import build_classifier

Transform = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Assignment:
  """`dst` ('params/backbone/conv1_1/kernel') <- transform(tensors[src])."""
  src: str
  dst: str
  transform: Optional[Transform] = None


@dataclasses.dataclass
class Plan:
  arch: str  # registry name of the model to build
  source: str  # 'keras_h5' | 'torchvision'
  preprocessing: str  # key of facejax.models.PREPROCESSING the weights expect
  num_classes: int
  image_size: int  # input size the variables were shaped for (only VGG fc6 depends on it)
  assignments: list[Assignment]
  skip: dict[str, str] = dataclasses.field(default_factory=dict)  # src key -> why this arch drops it
  init_head: Optional[str] = None  # why the classifier head is newly initialised; None: it must be loaded
  notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ConversionReport:
  """What a conversion or transfer did, tensor by tensor."""
  loaded: list[tuple[str, str, tuple[int, ...]]] = dataclasses.field(default_factory=list)  # (src, dst, shape)
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (src, reason)
  initialised: list[tuple[str, tuple[int, ...], str]] = dataclasses.field(default_factory=list)  # (dst, shape, why)

  def to_dict(self) -> dict:
    return {'loaded': [[s, d, list(shape)] for s, d, shape in self.loaded],
            'skipped': [[s, why] for s, why in self.skipped],
            'initialised': [[d, list(shape), why] for d, shape, why in self.initialised]}

  @classmethod
  def from_dict(cls, d: dict) -> 'ConversionReport':
    return cls([(s, t, tuple(shape)) for s, t, shape in d['loaded']], [tuple(x) for x in d['skipped']],
               [(t, tuple(shape), why) for t, shape, why in d['initialised']])

  def summary(self) -> str:
    return f'{len(self.loaded)} loaded, {len(self.skipped)} skipped, {len(self.initialised)} newly initialised'

  def format(self, verbose: bool = True) -> str:
    lines = [self.summary()]
    if verbose:
      lines += ['loaded:'] + [f'  {s} -> {d} {list(shape)}' for s, d, shape in self.loaded]
    by_reason: dict[str, list[str]] = {}
    for s, why in self.skipped:
      by_reason.setdefault(why, []).append(s)
    lines += ['skipped:'] + [f'  {why}: {_listing(srcs, 4)}' for why, srcs in by_reason.items()]
    lines += ['newly initialised:'] + [f'  {d} {list(shape)}: {why}' for d, shape, why in self.initialised]
    return '\n'.join(lines)


def flatten(tree, prefix: str = '') -> dict:
  """Nested dict -> {'a/b/c': leaf}."""
  out = {}
  for k, v in tree.items():
    path = f'{prefix}/{k}' if prefix else str(k)
    if isinstance(v, dict) or hasattr(v, 'items'):
      out.update(flatten(v, path))
    else:
      out[path] = v
  return out


def unflatten(flat: dict) -> dict:
  out: dict = {}
  for path, v in flat.items():
    *parents, leaf = path.split('/')
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


def abstract_variables(model: nn.Module, image_size: int) -> dict:
  """{'params': ..., 'batch_stats': ...} of ShapeDtypeStructs, without allocating anything."""
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)


def _listing(items: list[str], limit: int = 12) -> str:
  more = f', ... ({len(items)} in all)' if len(items) > limit else ''
  return ', '.join(items[:limit]) + more


def apply_plan(plan: Plan, tensors: dict[str, np.ndarray], where: str, seed: int = 0):
  """Build the model and its variables from `tensors` as `plan` says -> (model, variables, report).

  Raises ValueError naming the tensor(s) on a shape mismatch, a missing tensor or an unexpected tensor.
  """
  model = build_classifier(plan.arch, plan.num_classes)
  targets = flatten(abstract_variables(model, plan.image_size))
  filled, report = {}, ConversionReport()
  missing, consumed = [], set()
  for a in plan.assignments:
    if a.dst not in targets:  # a planner bug, not a user error
      raise KeyError(f'plan for {plan.arch} targets {a.dst}, which the model does not have')
    if a.dst in filled:
      raise KeyError(f'plan for {plan.arch} fills {a.dst} twice')
    if a.src not in tensors:
      missing.append(f'{a.src} (-> {a.dst} {list(targets[a.dst].shape)})')
      continue
    raw = np.asarray(tensors[a.src])
    value = a.transform(raw) if a.transform else raw
    want = tuple(targets[a.dst].shape)
    if value.shape != want:
      conv = f' (converted to {list(value.shape)})' if value.shape != raw.shape else ''
      raise ValueError(f'{where}: tensor {a.src} has shape {list(raw.shape)}{conv}, but {plan.arch} expects '
                       f'{list(want)} for {a.dst}')
    filled[a.dst] = value.astype(np.float32)
    consumed.add(a.src)
    report.loaded.append((a.src, a.dst, want))

  head = sorted(p for p in targets if p.startswith('params/classifier/') and p not in filled)
  if plan.init_head and head:
    rng = jax.random.PRNGKey(seed)
    for path in head:
      shape = tuple(targets[path].shape)
      value = nn.initializers.lecun_normal()(rng, shape) if path.endswith('kernel') else jnp.zeros(shape)
      filled[path] = np.asarray(value, np.float32)
      report.initialised.append((path, shape, plan.init_head))
  planned = {a.dst for a in plan.assignments}
  unplanned = sorted(p for p in set(targets) - set(filled) - planned)
  if missing or unplanned:
    parts = missing + [f'(no source tensor maps to {p} {list(targets[p].shape)})' for p in unplanned]
    raise ValueError(f'{where}: missing tensors for {plan.arch}: {_listing(parts)}')

  unexpected = []
  for key in tensors:
    if key in consumed:
      continue
    if key in plan.skip:
      report.skipped.append((key, plan.skip[key]))
    else:
      unexpected.append(f'{key} {list(np.shape(tensors[key]))}')
  if unexpected:
    raise ValueError(f'{where}: tensors that {plan.arch} has no place for (a different architecture?): '
                     f'{_listing(unexpected)}')
  variables = unflatten(filled)
  variables.setdefault('batch_stats', {})
  return model, variables, report


def vgg_image_size(fan_in: int, backbone, where: str, name: str) -> int:
  """fc6 fan-in = C * s * s for an s x s final feature map: the input is 32 * s (five 2x2 pools)."""
  c = backbone.widths[-1]
  s = math.isqrt(fan_in // c) if fan_in % c == 0 else 0
  if s == 0 or c * s * s != fan_in:
    raise ValueError(f'{where}: tensor {name} has fan-in {fan_in}, expected {c} * s * s (an s x s x {c} '
                     'flattened feature map)')
  return 32 * s
