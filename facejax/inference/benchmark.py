"""AOT-compiled inference timing: compile once, time the executable only.

`benchmark(fn, args)` lowers and compiles `fn` ahead of time (compile time reported on its own), warms up,
then times `runs` calls with `block_until_ready` (so it is correct on GPU too) and returns median/p90
milliseconds and the per-call FLOPs from XLA's cost analysis (every FLOP count: facejax/inference/flops.py).
`benchmark_model` builds the embedding network of a registry model (or takes one), picks the reference or the
optimized forward, and returns the DESIGN.md benchmark record.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from facejax import markdown
from facejax.inference.flops import compiled_flops, layer_flops
from facejax.inference.hardware import cpu_info, num_threads, peak_rss_mb


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
  from facejax.inference.optimize.trace import trace_layers
  flops = layer_flops(trace_layers(model, variables, image_size))  # traced at batch 1
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


def all_variants() -> dict:
  """The variants --all times per model and batch size: the reference apply, the default optimized forward, bf16,
  int8, and where the custom call is built (`onednn.unavailable()`) oneDNN convs in float32 and, on CPUs with
  bf16 dot instructions, in bf16."""
  from facejax.inference.hardware import cpu_info, has_bf16_dots
  from facejax.inference.optimize import onednn
  variants = {'plain': False, 'optimized': {}, 'bf16': {'dtype': 'bfloat16'}, 'int8': {'dtype': 'int8'}}
  if onednn.unavailable():
    return variants
  variants['onednn'] = {'conv': 'onednn'}
  if has_bf16_dots(cpu_info().get('cpu_flags')):
    variants['onednn_bf16'] = {'conv': 'onednn', 'dtype': 'bfloat16'}
  return variants


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
      for variant, opt in (variants or all_variants()).items():
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
  cells = []
  for (model, variant), row in rows.items():
    batched = f"{fmt(row['batched'])} (b{row['bmax']})" if row['batched'] is not None else '-'
    cells.append([model, variant, f"{row['params'] / 1e6:.2f}", fmt(row['gflops']), fmt(row['b1']), batched])
  return markdown.table(['model', 'variant', 'params (M)', 'GFLOPs', 'ms b1', 'ms/img batched'], cells, 'llrrrr')


def zoo_row(name: str, embed_dim: int = 128) -> dict:
  """A registry model's card: input size, feature width, parameters (backbone, with the ImageNet head, as a face
  model with `embed_dim`) and the face model's batch-1 GFLOPs as every facejax report counts them
  (`flops.layer_flops`: 2 x the multiply-accumulates of its conv and dense layers)."""
  from facejax.inference.optimize.trace import trace_layers
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
          'gflops': round(layer_flops(trace_layers(face, random_variables(face, size), size)) / 1e9, 3),
          'doc': MODELS[name].doc}


def zoo_markdown(rows: list[dict]) -> str:
  keys = [k for k in rows[0] if k != 'doc'] + ['doc']
  fmt = lambda v: f'{v:,}' if isinstance(v, int) else str(v)
  return markdown.table(keys, [[fmt(r[k]) for k in keys] for r in rows], 'l' * len(keys))
