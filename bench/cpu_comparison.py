"""facejax vs ONNX Runtime vs PyTorch eager on the CPU, same networks, same weights, same process, interleaved.

  pip install -e '.[bench]'      # onnxruntime, onnx, openvino, jax2onnx, torch (facejax never imports torch)
  python -m launch.compare_cpu --models=resnet50,vgg16 --batch_sizes=1,8 --json_out=runs/bench/compare_cpu.json

For each model (a FaceNet embedder: backbone + 128-d head, random weights with random BN statistics) the
script builds a PyTorch twin of the flax network (torchvision-style modules), copies the flax weights into it
layer by layer (call order, shapes checked), exports it to ONNX (TorchScript exporter, dynamic batch), and
checks that torch and ONNX Runtime reproduce the flax embeddings. Then every variant is timed in the same
process, interleaved round by round (each round runs each variant `--calls` times back to back and keeps
all but the first, so a framework's idle spinning threads do not tax the next one):

  jax_plain   jax.jit(model.apply), variables as arguments (what a user writes)
  jax_opt     facejax.inference.optimize_for_inference, float32 (BN folded, im2col convs, constants)
  jax_onednn  the same with every conv in oneDNN (the custom call, `conv='onednn'`; ReLU/PReLU/residual post-ops)
  jax_bf16    the same as jax_opt, bf16 conv matmuls accumulating in float32 (AMX / avx512_bf16)
  jax_onednn_bf16  oneDNN bf16 convs (bf16 activations between them, float32 accumulation; AMX / avx512_bf16)
  jax_int8    the same, int8 per-channel weights, per-example dynamic int8 activations
  jax_int8_static  int8 with static activation scales calibrated on 32 other random inputs
  jax_onednn_int8  oneDNN int8 convs with those static scales (only on CPUs with VNNI / AMX int8; float32 between them)
  ort         ONNX Runtime, all graph optimizations, intra-op threads = usable cores, sequential
  ort_int8    ONNX Runtime dynamic quantization of the same graph (--ort_int8)
  ort_facejax ONNX Runtime on facejax's own ONNX export of the net (jax2onnx, `launch.export --format=onnx`)
  openvino    OpenVINO on the torch twin's ONNX graph (no twin: facejax's own export) at its default precision
              for this CPU (bf16 where it has avx512_bf16 / AMX), static batch, latency hint, threads = usable cores
  openvino_f32  the same with f32 inference precision forced
  torch       PyTorch eager, torch.set_num_threads(usable cores), inference_mode
  torch_1t    the same on one thread (OpenMP's barriers collapse when another process holds a core)

Medians (and minima: the machine may be shared; contention only adds time) in ms per call and per image.
"""
from __future__ import annotations

import json
import os
import tempfile
import time

from facejax import markdown

from bench.torch_twins import export_onnx, torch_twin

def openvino_model(path: str, shape: list[int], threads: int, f32: bool):
  """OpenVINO CPU executable of an ONNX graph at a static input `shape`; f32 forces float32 inference precision
  (otherwise OpenVINO's default for this CPU: bf16 where it has avx512_bf16 or AMX)."""
  import openvino as ov
  core = ov.Core()
  net = core.read_model(path)
  net.reshape(shape)
  config = {'PERFORMANCE_HINT': 'LATENCY', 'INFERENCE_NUM_THREADS': threads}
  if f32:
    config['INFERENCE_PRECISION_HINT'] = 'f32'
  compiled = core.compile_model(net, 'CPU', config)
  precision = compiled.get_property('INFERENCE_PRECISION_HINT')
  return compiled, getattr(precision, 'get_type_name', lambda: str(precision))()


TWINS = ('ResNet', 'VGG', 'MobileFaceNet')  # backbones with a torch twin (and so a torch-exported ONNX graph)
TWIN_VARIANTS = ('ort', 'ort_int8', 'torch', 'torch_1t')  # OpenVINO reads facejax's own export without a twin
ANCHORS = ('jax_plain', 'ort', 'ort_facejax', 'openvino', 'openvino_f32', 'torch', 'torch_1t')
# 'random' calibration: 32 uniform inputs
OPT_VARIANTS = {'jax_opt': {}, 'jax_onednn': {'conv': 'onednn'}, 'jax_bf16': {'dtype': 'bfloat16'},
                'jax_onednn_bf16': {'conv': 'onednn', 'dtype': 'bfloat16'},
                'jax_int8': {'dtype': 'int8'}, 'jax_int8_static': {'dtype': 'int8', 'calibration': 'random'},
                'jax_onednn_int8': {'conv': 'onednn', 'dtype': 'int8', 'calibration': 'random'}}


def compare_model(name: str, batch_sizes, variants, rounds: int, calls: int, embed_dim: int, opt_variants: dict,
                  ort_int8: bool, log=print, pause: float = 0.05) -> list[dict]:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from facejax.inference.benchmark import inference_params, random_variables
  from facejax.inference.hardware import cpu_info, has_int8_dots, num_threads
  from facejax.inference.flops import layer_flops
  from facejax.inference.onnx_export import onnx_session
  from facejax.inference.optimize import optimize_for_inference
  from facejax.inference.optimize.trace import trace_layers
  from facejax.models import build_model, default_image_size
  threads, cpu = num_threads(), cpu_info()
  torch.set_num_threads(threads)
  if os.path.isdir(name):  # a run directory (trained, or converted such as a tfjs graph): its weights and size
    from facejax.runs import load_run
    model, variables, info = load_run(name)
    size = int(info['image_size'])
  else:
    size = default_image_size(name)
    model = build_model(name, num_classes=0, embed_dim=embed_dim)
    variables = random_variables(model, size)
  flops = layer_flops(trace_layers(model, variables, size))
  tmpdir = tempfile.mkdtemp(prefix=f'compare_{os.path.basename(os.path.normpath(name))}_')
  no_twin = type(model.backbone).__name__ not in TWINS  # e.g. dlib's ResNet: the runtimes read facejax's export
  if no_twin:
    dropped = [v for v in variants if v in TWIN_VARIANTS]
    variants = list(dict.fromkeys([v for v in variants if v not in TWIN_VARIANTS] + (['ort_facejax'] if dropped
                                                                                       else [])))
    ort_int8 = False
    if dropped:
      log({'model': name, 'note': f'no torch twin for {type(model.backbone).__name__}: {", ".join(dropped)} '
                                  'left out; ort_facejax (ONNX Runtime on the jax2onnx export) is the anchor'})
  if not has_int8_dots(cpu.get('cpu_flags')):  # oneDNN's int8 sums saturate there: it would time float32 convs
    dropped = [v for v in variants if opt_variants.get(v, {}).get('conv') == 'onednn'
               and opt_variants[v].get('dtype') == 'int8']
    variants = [v for v in variants if v not in dropped]
    if dropped:
      log({'model': name, 'note': f'{", ".join(dropped)} left out: this CPU has no int8 dot instructions '
                                  '(avx512_vnni, avx_vnni, amx_int8), so facejax runs no int8 conv in oneDNN here'})
  net = onnx_path = None
  uses_onnx = not no_twin and (ort_int8 or any(v in ('ort', 'ort_int8') or v.startswith('openvino')
                                                for v in variants))
  if uses_onnx or any(v.startswith('torch') for v in variants):
    net = torch_twin(model, variables, size)
  if uses_onnx:  # the ONNX graph is the torch twin's export
    onnx_path = os.path.join(tmpdir, 'model.onnx')
    export_onnx(net, size, onnx_path)
  if 'ort_facejax' in variants or (no_twin and any(v.startswith('openvino') for v in variants)):
    # facejax's own export (BN folded), fed the same float NHWC input
    from facejax.inference.export import embedding_function
    from facejax.inference.onnx_export import export_onnx as facejax_onnx
    as_is = type('AsIs', (), {'apply': staticmethod(lambda x: x)})  # the inputs are model inputs already
    fn, _ = embedding_function(model, variables, as_is, size, optimize={'conv': 'xla'})
    facejax_onnx_path = os.path.join(tmpdir, 'model.facejax.onnx')
    facejax_onnx(fn, size, facejax_onnx_path, dtype='float32')
  precision = {}
  records = []
  for b in batch_sizes:
    rng = np.random.default_rng(b)
    x_nhwc = rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32)
    x_nchw = np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))
    xj = jnp.asarray(x_nhwc)
    xt = torch.from_numpy(x_nchw)
    fns, compile_s = {}, {}
    for v in variants + (['ort_int8'] if ort_int8 else []):
      t0 = time.perf_counter()
      if v == 'jax_plain':
        dv = jax.device_put(variables)  # once: numpy arguments would be copied on every call
        c = jax.jit(lambda v_, x: model.apply(v_, x, method=model.embed)).lower(dv, xj).compile()
        fns[v] = lambda c=c, dv=dv: c(dv, xj)
      elif v in opt_variants:
        options = dict(opt_variants[v])
        if isinstance(options.get('calibration'), str):  # 'random': other draws of the timed inputs' distribution
          options['calibration'] = np.random.default_rng(1000).uniform(-1, 1, (32, size, size, 3)).astype(np.float32)
        f = optimize_for_inference(model, variables, image_size=size, **options)
        c = jax.jit(f).lower(xj).compile(compiler_options=f.compiler_options or None)
        fns[v] = lambda c=c: c(xj)
      elif v == 'ort':
        sess = onnx_session(onnx_path, threads)
        fns[v] = lambda s=sess: s.run(None, {'images': x_nchw})[0]
      elif v == 'ort_facejax':
        sess = onnx_session(facejax_onnx_path, threads)
        fns[v] = lambda s=sess: s.run(None, {'images': x_nhwc})[0]
      elif v in ('openvino', 'openvino_f32'):
        nhwc = onnx_path is None  # no twin: facejax's own NHWC export
        compiled, precision[v] = openvino_model(facejax_onnx_path if nhwc else onnx_path,
                                                list(x_nhwc.shape if nhwc else x_nchw.shape), threads,
                                                f32=v == 'openvino_f32')
        request = compiled.create_infer_request()
        fns[v] = lambda r=request, x=(x_nhwc if nhwc else x_nchw): r.infer({0: x})[0]
      elif v == 'ort_int8':
        from onnxruntime.quantization import QuantType, quantize_dynamic
        q = os.path.join(tmpdir, 'model.int8.onnx')
        if not os.path.exists(q):
          quantize_dynamic(onnx_path, q, weight_type=QuantType.QInt8)
        sess = onnx_session(q, threads)
        fns[v] = lambda s=sess: s.run(None, {'images': x_nchw})[0]
      elif v in ('torch', 'torch_1t'):
        def run_torch(n=1 if v == 'torch_1t' else threads):
          torch.set_num_threads(n)
          with torch.inference_mode():
            return net(xt)
        fns[v] = run_torch
      else:
        raise ValueError(f'unknown variant {v!r}')
      out = fns[v]()  # first call: compile / allocate; also the accuracy check below
      compile_s[v] = time.perf_counter() - t0
      fns[v] = (fns[v], np.asarray(jax.block_until_ready(out) if v.startswith('jax') else out, np.float32))
    ref = fns['jax_plain'][1] if 'jax_plain' in fns else None
    times = {v: [] for v in fns}
    for _ in range(rounds):
      for v, (fn, _) in fns.items():
        time.sleep(pause)  # let the previous framework's spinning worker threads go idle
        for k in range(calls):
          t0 = time.perf_counter()
          out = fn()
          if v.startswith('jax'):
            jax.block_until_ready(out)
          if k:
            times[v].append((time.perf_counter() - t0) * 1e3)
    for v, (fn, out) in fns.items():
      ms = np.asarray(times[v])
      r = {'model': name, 'variant': v, 'batch_size': b, 'image_size': size, 'params': inference_params(variables),
           'gflops_per_image': round(flops / 1e9, 4), 'ms_median': round(float(np.median(ms)), 2),
           'ms_min': round(float(ms.min()), 2), 'ms_per_image': round(float(np.median(ms)) / b, 3),
           'compile_or_load_s': round(compile_s[v], 2), 'threads': threads, 'samples': len(ms), 'pause_s': pause,
           **cpu}
      if v in opt_variants:
        r['options'] = opt_variants[v]
      if v in precision:
        r['inference_precision'] = precision[v]
      if ref is not None:
        r['max_abs_diff_vs_jax_plain'] = float(f'{np.abs(out - ref).max():.3g}')
        r['min_cosine_vs_jax_plain'] = round(float(np.min(np.sum(out * ref, -1))), 6)
      records.append(r)
      log(r)
  return records


def comparison_table(records: list[dict]) -> str:
  """Per model: params, GFLOPs, ms at batch 1 and ms/image at the largest batch for each variant, and each
  optimized facejax variant / ONNX Runtime (on the torch twin's graph, else on facejax's own export) and / OpenVINO
  at its default precision, at both batches."""
  models = list(dict.fromkeys(r['model'] for r in records))
  variants = list(dict.fromkeys(r['variant'] for r in records))
  bmax = max(r['batch_size'] for r in records)
  get = lambda m, v, b: next((r for r in records if r['model'] == m and r['variant'] == v and r['batch_size'] == b),
                             None)
  batches = ((1, 'ms_median'),) + (((bmax, 'ms_per_image'),) if bmax > 1 else ())
  ratios = [v for v in variants if v.startswith('jax_') and v != 'jax_plain']
  # ORT's column falls back to facejax's own export where a model has no torch twin (dlib's nets)
  anchors = [(a, label) for a, label in (('ort', 'ORT'), ('openvino', 'OV'))
             if a in variants or (a == 'ort' and 'ort_facejax' in variants)]
  head = ['model', 'params (M)', 'GFLOPs'] + [f'{v} b1' for v in variants]
  if bmax > 1:
    head += [f'{v} b{bmax} /img' for v in variants]
  head += [f'{v[4:]}/{label} b{b}' for a, label in anchors for b, _ in batches for v in ratios]
  cells = []
  for m in models:
    any_r = next(r for r in records if r['model'] == m)
    row = [m, f"{any_r['params'] / 1e6:.2f}", f"{any_r['gflops_per_image']:.2f}"]
    for b, key in batches:
      row += [f"{get(m, v, b)[key]:.2f}" if get(m, v, b) else '-' for v in variants]
    for anchor, _ in anchors:
      for b, key in batches:
        for v in ratios:
          x, o = get(m, v, b), get(m, anchor, b) or (get(m, 'ort_facejax', b) if anchor == 'ort' else None)
          row.append(f"{x[key] / o[key]:.2f}" if x and o else '-')
    cells.append(row)
  return markdown.table(head, cells, 'll' + 'r' * (len(head) - 2))


def missing_packages(variants, ort_int8: bool) -> list[str]:
  """The optional packages (the [bench] extra) the chosen variants need that are not installed."""
  import importlib.util
  needed = ['torch']  # the inputs are built with torch whatever is timed
  if any(v.startswith('ort') for v in variants) or ort_int8:
    needed += ['onnx', 'onnxruntime']
  if any(v.startswith('openvino') for v in variants):
    needed += ['openvino']
  if 'ort_facejax' in variants:
    needed += ['jax2onnx']
  return [m for m in needed if importlib.util.find_spec(m) is None]


def run(models, batch_sizes, variants, *, rounds: int = 7, calls: int = 3, embed_dim: int = 128,
        opt_variants: dict = OPT_VARIANTS, ort_int8: bool = False, pause: float = 0.05, log=print) -> list[dict]:
  """Compare every model (each variant timed in the same process, interleaved; `pause` seconds idle before each
  variant's block of `calls`) -> every record, each also passed to `log` as a JSON line (`comparison_table`
  renders them)."""
  records = []
  for name in models:
    records += compare_model(name, [int(b) for b in batch_sizes], list(variants), rounds, calls, embed_dim,
                             opt_variants, ort_int8, log=lambda r: log(json.dumps(r)), pause=pause)
  return records
