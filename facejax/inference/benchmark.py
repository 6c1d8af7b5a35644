"""AOT-compiled inference timing: compile once, time the executable only.

`benchmark(fn, args)` lowers and compiles `fn` ahead of time (compile time reported on its own), warms up,
then times `runs` calls with `block_until_ready` (so it is correct on GPU too) and returns median/p90
milliseconds and the per-call FLOPs from XLA's cost analysis. `jaxpr_flops` counts conv/matmul FLOPs from a
function's jaxpr instead, the same on every backend (on GPU XLA's count misses the cuDNN/cuBLAS custom calls).
`benchmark_model` builds the embedding network of a registry model (or takes one), picks the reference or the
optimized forward, and returns the DESIGN.md benchmark record.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from facejax.inference.hardware import cpu_info, num_threads, peak_rss_mb


def compiled_flops(compiled) -> float | None:
  """FLOPs per call from `compiled.cost_analysis()` (a dict, or a list of one dict on older jax); None when
  the backend reports none."""
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


def benchmark(fn: Callable, example_args: Sequence[Any], *, warmup: int = 3, runs: int = 15,
              compiler_options: dict | None = None) -> dict:
  """AOT-compile `fn(*example_args)` and time the compiled executable.

  `compiler_options` (XLA options for this executable only) default to `fn.compiler_options` when `fn` has
  them (an optimized InferenceFn does).
  -> {'compile_s', 'ms_median', 'ms_p90', 'ms_min', 'gflops' (per call, None if unknown), 'backend', 'runs'}.
  """
  if runs < 1:
    raise ValueError(f'runs: expected >= 1, got {runs}')
  example_args = tuple(example_args)
  if compiler_options is None:
    compiler_options = dict(getattr(fn, 'compiler_options', None) or {})
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*example_args).compile(compiler_options=compiler_options or None)
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    jax.block_until_ready(compiled(*example_args))
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*example_args))
    times.append(time.perf_counter() - t0)
  ms = np.asarray(times) * 1e3
  flops = compiled_flops(compiled)
  return {
      'compile_s': round(compile_s, 3),
      'ms_median': round(float(np.median(ms)), 3),
      'ms_p90': round(float(np.percentile(ms, 90)), 3),
      'ms_min': round(float(ms.min()), 3),
      'gflops': None if flops is None else float(f'{flops / 1e9:.6g}'),
      'backend': jax.default_backend(),
      'runs': runs,
      'compiler_options': compiler_options,
  }


def random_variables(model, image_size: int, seed: int = 0, method=None) -> dict:
  """Random variables for `model` without running its initialisers (shapes from `jax.eval_shape`, values from
  numpy: no compile, seconds even for VGG-16). Kernels ~ N(0, 2 / fan_in) (He), biases ~ N(0, 0.1), BatchNorm
  scales ~ U(0.5, 1.5), running means ~ N(0, 0.1), running variances ~ U(0.5, 1.5), PReLU slopes ~ U(0.1, 0.3):
  BN folding is exercised by something other than the identity, and zero-initialised residual-branch scales
  do not hide half of a ResNet."""
  method = method or getattr(model, 'embed', None)
  shapes = jax.eval_shape(lambda k, x: model.init(k, x, method=method), jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
  rng = np.random.default_rng(seed)

  def value(path, s):
    name = getattr(path[-1], 'key', str(path[-1]))
    shape = tuple(s.shape)
    if name == 'kernel' and len(shape) >= 2:
      v = rng.standard_normal(shape) * np.sqrt(2.0 / max(1, int(np.prod(shape[:-1]))))
    elif name in ('scale', 'var'):
      v = rng.uniform(0.5, 1.5, shape)
    elif name == 'negative_slope':
      v = rng.uniform(0.1, 0.3, shape)
    else:  # biases, running means, anything else
      v = rng.standard_normal(shape) * 0.1
    return np.asarray(v, s.dtype)

  return jax.tree_util.tree_map_with_path(value, dict(shapes))


def inference_params(variables) -> int:
  """Parameters the embedder uses: everything except the identity classifier (which inference never runs)."""
  from facejax.models import count_params
  params = dict(variables['params'])
  params.pop('classifier', None)
  return count_params(params)


def benchmark_model(name_or_model, variables=None, *, batch_size: int = 1, image_size: int | None = None,
                    optimize: bool | dict = False, embed_dim: int = 128, seed: int = 0, warmup: int = 3,
                    runs: int = 15, variant: str | None = None, **overrides) -> dict:
  """Time the embedding forward (float model input [B, S, S, 3] -> [B, D] L2-normalised) of one model.

  `name_or_model`: a registry name (a FaceNet with `embed_dim` and no classifier is built with `overrides`
  and random weights) or a FaceNet module, then `variables` and `image_size` are required.
  `optimize`: False -> the reference flax forward with variables as jit arguments (what a user writes);
  True or a dict of `optimize_for_inference` options -> the rewritten inference forward.
  -> {"model", "params", "gflops", "batch_size", "image_size", "ms_median", "ms_p90", "compile_s", "backend",
      "ms_per_image", "threads", "peak_rss_mb", "variant", ...}. "gflops" is per call (the whole batch) and counts
  2 x the multiply-accumulates of the conv/dense layers, so plain and optimized variants report the same model
  cost; "xla_gflops" is what the compiled executable's cost analysis says.
  """
  from facejax.models import build_model, default_image_size
  if isinstance(name_or_model, str):
    name = name_or_model
    model = build_model(name, num_classes=0, embed_dim=embed_dim, **overrides)
    image_size = image_size or default_image_size(name)
    if variables is None:
      variables = random_variables(model, image_size, seed)
  else:
    model = name_or_model
    name = getattr(getattr(model, 'backbone', model), '__class__').__name__
    if variables is None or image_size is None:
      raise ValueError('benchmark_model(module, ...): variables and image_size are required with a module')
  x = jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (batch_size, image_size, image_size, 3)), jnp.float32)
  if isinstance(optimize, dict) or optimize:  # {} = the default options, not "off"
    from facejax.inference.optimize import optimize_for_inference
    options = dict(optimize) if isinstance(optimize, dict) else {}
    fn = optimize_for_inference(model, variables, image_size=image_size, **options)
    if fn.options['weights'] == 'args':
      result = benchmark(fn.forward, (fn.params, x), warmup=warmup, runs=runs, compiler_options=fn.compiler_options)
    else:
      result = benchmark(fn, (x,), warmup=warmup, runs=runs)
    variant = variant or 'optimized' + ''.join(f',{k}={v}' for k, v in sorted(options.items()))
  else:
    fn = lambda v, x: model.apply(v, x, method=model.embed)
    # On the device once: numpy arguments would be copied host -> device on every call.
    result = benchmark(fn, (jax.device_put(variables), x), warmup=warmup, runs=runs)
    variant = variant or 'plain'
  from facejax.inference.optimize import layer_flops, trace_plan
  flops = layer_flops(trace_plan(model, variables, image_size))  # traced at batch 1
  return {
      'model': name,
      'params': inference_params(variables),
      'gflops': float(f'{flops * batch_size / 1e9:.6g}'),
      'gflops_per_image': float(f'{flops / 1e9:.6g}'),
      'xla_gflops': result['gflops'],
      'batch_size': batch_size,
      'image_size': image_size,
      'ms_median': result['ms_median'],
      'ms_p90': result['ms_p90'],
      'compile_s': result['compile_s'],
      'backend': result['backend'],
      'ms_per_image': round(result['ms_median'] / batch_size, 3),
      'ms_min': result['ms_min'],
      'threads': num_threads(), **cpu_info(),
      'peak_rss_mb': peak_rss_mb(),
      'variant': variant,
      'runs': result['runs'],
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'compiler_options': result['compiler_options'],
  }


# The variants --all times per model and batch size: the reference apply and the default optimized forward.
ALL_VARIANTS = {'plain': False, 'optimized': {}, 'bf16': {'dtype': 'bfloat16'}, 'int8': {'dtype': 'int8'}}


def benchmark_all(batch_sizes=(1, 8), names=None, variants=None, log=None, **kwargs) -> list[dict]:
  """benchmark_model for every registry model (default input size) x batch size x variant."""
  from facejax.models import MODELS
  from facejax.models import build_model, default_image_size
  records = []
  for name in names or sorted(MODELS):
    size = default_image_size(name)
    model = build_model(name, num_classes=0, embed_dim=kwargs.get('embed_dim', 128))
    variables = random_variables(model, size, kwargs.get('seed', 0))
    for b in batch_sizes:
      for variant, opt in (variants or ALL_VARIANTS).items():
        r = benchmark_model(model, variables, batch_size=b, image_size=size, optimize=opt, variant=variant,
                            warmup=kwargs.get('warmup', 3), runs=kwargs.get('runs', 15))
        r['model'] = name
        records.append(r)
        if log:
          log(r)
  return records


def markdown_table(records: list[dict]) -> str:
  """One row per (model, variant): params, GFLOPs/image, ms at batch 1, ms/image at the largest batch."""
  rows = {}
  for r in records:
    key = (r['model'], r['variant'])
    row = rows.setdefault(key, {'params': r['params'], 'gflops': None, 'b1': None, 'batched': None, 'bmax': 0})
    if r['batch_size'] == 1:
      row['b1'] = r['ms_median']
      row['gflops'] = r.get('gflops_per_image', r['gflops'])
    if r['batch_size'] > 1 and r['batch_size'] >= row['bmax']:
      row['batched'], row['bmax'] = r['ms_per_image'], r['batch_size']
  fmt = lambda v, f='{:.2f}': '-' if v is None else f.format(v)
  lines = ['| model | variant | params (M) | GFLOPs | ms b1 | ms/img batched |', '|---|---|---:|---:|---:|---:|']
  for (model, variant), row in rows.items():
    batched = f"{fmt(row['batched'])} (b{row['bmax']})" if row['batched'] is not None else '-'
    lines.append(f"| {model} | {variant} | {row['params'] / 1e6:.2f} | {fmt(row['gflops'])} | {fmt(row['b1'])} | "
                 f"{batched} |")
  return '\n'.join(lines)


def zoo_row(name: str, embed_dim: int = 128) -> dict:
  """A registry model's card: input size, feature width, parameters (backbone, with the ImageNet head, as a face
  model with `embed_dim`) and the face model's batch-1 GFLOPs as every facejax report counts them
  (`optimize.layer_flops`: 2 x the multiply-accumulates of its conv and dense layers)."""
  from facejax.inference.optimize import layer_flops, trace_plan
  from facejax.models import MODELS, build_backbone, build_classifier, build_model, count_params, default_image_size
  size = default_image_size(name)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  shapes = lambda model, **kw: jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False, **kw), x)
  backbone, face = build_backbone(name), build_model(name, num_classes=0, embed_dim=embed_dim)
  bvars = shapes(backbone)
  features = jax.eval_shape(lambda v, x: backbone.apply(v, x, train=False), bvars, x).shape[-1]
  return {'model': name, 'image_size': size, 'features': int(features),
          'params_backbone': count_params(bvars['params']),
          'params_imagenet_head': count_params(shapes(build_classifier(name, 1000))['params']),
          f'params_face_d{embed_dim}': count_params(shapes(face, method='forward')['params']),
          'gflops': round(layer_flops(trace_plan(face, random_variables(face, size), size)) / 1e9, 3),
          'doc': MODELS[name].doc}


def zoo_markdown(rows: list[dict]) -> str:
  keys = [k for k in rows[0] if k != 'doc'] + ['doc']
  fmt = lambda v: f'{v:,}' if isinstance(v, int) else str(v)
  lines = ['| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)]
  return '\n'.join(lines + ['| ' + ' | '.join(fmt(r[k]) for k in keys) + ' |' for r in rows])
