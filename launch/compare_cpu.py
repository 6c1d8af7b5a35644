"""facejax vs ONNX Runtime vs PyTorch eager on the CPU, same networks, same weights, same process, interleaved.

  pip install -e '.[bench]'      # onnxruntime, onnx, openvino, jax2onnx, torch (facejax never imports torch)
  python -m launch.compare_cpu --models=resnet50,vgg16 --batch_size=8 --json_out=runs/bench/compare_cpu.json

For each model (a FaceNet embedder: backbone + 128-d head, random weights with random BN statistics) the
script builds a PyTorch twin of the flax network (torchvision-style modules), copies the flax weights into it
layer by layer (call order, shapes checked), exports it to ONNX (TorchScript exporter, dynamic batch), and
checks that torch and ONNX Runtime reproduce the flax embeddings. Then every variant is timed in the same
process, interleaved round by round (each round runs each variant `--calls` times back to back and keeps
all but the first, so a framework's idle spinning threads do not tax the next one):

  jax_plain   jax.jit(model.apply), variables as arguments (what a user writes)
  jax_opt     facejax.inference.optimize_for_inference, float32 (BN folded, im2col convs, constants)
  jax_bf16    the same, bf16 conv matmuls accumulating in float32 (AMX / avx512_bf16)
  jax_int8    the same, int8 per-channel weights, per-example dynamic int8 activations
  jax_int8_static  int8 with static activation scales calibrated on 32 other random inputs
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
import json
import os
import sys
import tempfile
import time

from absl import app, flags

from facejax import markdown

FLAGS = flags.FLAGS
flags.DEFINE_list('models', ['resnet50', 'vgg16', 'vgg_small', 'student_vgg', 'mobilefacenet', 'resnet18',
                             'resnet18_w050'], 'Registry models (each at its default input size).')
flags.DEFINE_list('batch_sizes', ['1', '8'], 'Batch sizes (the table shows batch 1 and ms/image at the largest).')
flags.DEFINE_list('variants', ['jax_plain', 'jax_opt', 'jax_bf16', 'jax_int8', 'jax_int8_static', 'ort',
                                'ort_facejax', 'openvino', 'openvino_f32', 'torch', 'torch_1t'],
                  'What to time.')
flags.DEFINE_bool('ort_int8', False, 'Also time ONNX Runtime dynamic int8 quantization.')
flags.DEFINE_integer('rounds', 7, 'Interleaved rounds.')
flags.DEFINE_integer('calls', 3, 'Calls per variant per round (the first of each block is not timed).')
flags.DEFINE_integer('embed_dim', 128, 'Embedding size.')
flags.DEFINE_string('opt_variants', '{}', 'JSON {name: optimize_for_inference options} adding (or redefining) '
                    'jax_* variants, e.g. {"jax_opt_xla": {"conv": "xla"}}; name them in --variants too.')
flags.DEFINE_string('json_out', None, 'Write all records here (and the markdown table next to it, .md).')

ONNX_OPSET = 17


# --------------------------------------------------------------------------------------------------------
# PyTorch twins of the flax backbones (torchvision layout, NCHW).


def _torch_modules():
  import torch
  from torch import nn

  def conv_bn(cin, cout, k, stride=1, groups=1, bias=False, eps=1e-5, pad=None):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2 if pad is None else pad, groups=groups, bias=bias),
                         nn.BatchNorm2d(cout, eps=eps))

  class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, f, stride, stride_in_1x1, bias, eps):
      super().__init__()
      self.a = conv_bn(cin, f, 3, stride, bias=bias, eps=eps)
      self.b = conv_bn(f, f, 3, bias=bias, eps=eps)
      self.down = conv_bn(cin, f, 1, stride, bias=bias, eps=eps) if (stride != 1 or cin != f) else None

    def forward(self, x):
      y = self.b(torch.relu(self.a(x)))
      return torch.relu(y + (self.down(x) if self.down is not None else x))

  class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, f, stride, stride_in_1x1, bias, eps):
      super().__init__()
      s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
      self.a = conv_bn(cin, f, 1, s1, bias=bias, eps=eps)
      self.b = conv_bn(f, f, 3, s3, bias=bias, eps=eps)
      self.c = conv_bn(f, 4 * f, 1, bias=bias, eps=eps)
      self.down = conv_bn(cin, 4 * f, 1, stride, bias=bias, eps=eps) if (stride != 1 or cin != 4 * f) else None

    def forward(self, x):
      y = self.c(torch.relu(self.b(torch.relu(self.a(x)))))
      return torch.relu(y + (self.down(x) if self.down is not None else x))

  class ResNet(nn.Module):
    def __init__(self, b):  # b: the flax ResNet module (its fields)
      super().__init__()
      from facejax.models.common import scaled
      from facejax.models.resnet import BottleneckBlock
      f0 = scaled(b.num_filters, b.width)
      self.stem = conv_bn(3, f0, 7, 2, bias=b.conv_bias, eps=b.bn_eps)
      self.stem_pool = b.stem_pool
      block = Bottleneck if b.block_cls is BottleneckBlock else Basic
      blocks, cin = [], f0
      for i, n in enumerate(b.stage_sizes):
        for j in range(n):
          blocks.append(block(cin, f0 * 2**i, 2 if i > 0 and j == 0 else 1, b.stride_in_1x1, b.conv_bias, b.bn_eps))
          cin = f0 * 2**i * block.expansion
      self.blocks = nn.Sequential(*blocks)
      self.out_dim = cin

    def forward(self, x):
      x = torch.relu(self.stem(x))
      if self.stem_pool:
        x = nn.functional.max_pool2d(x, 3, 2, 1)
      return self.blocks(x).mean((2, 3))

  class VGG(nn.Module):
    def __init__(self, b):
      super().__init__()
      from facejax.models.common import scaled
      layers, cin = [], 3
      for n, w in zip(b.stage_sizes, b.widths):
        for _ in range(n):
          w_ = scaled(w, b.width)
          layers += [nn.Conv2d(cin, w_, 3, 1, 1, bias=not b.norm)] + ([nn.BatchNorm2d(w_)] if b.norm else [])
          layers.append(nn.ReLU())
          cin = w_
        layers.append(nn.MaxPool2d(2, 2))
      self.features = nn.Sequential(*layers)
      self.fc = nn.ModuleList()
      self.flatten = bool(b.fc_dims)
      self.channels = cin
      self.fc_dims = [scaled(d, b.width) for d in b.fc_dims]

    def build_fc(self, spatial):
      cin = self.channels * spatial * spatial
      for d in self.fc_dims:
        self.fc.append(nn.Linear(cin, d))
        cin = d
      self.out_dim = cin if self.fc_dims else self.channels

    def forward(self, x):
      x = self.features(x)
      if not self.flatten:
        return x.mean((2, 3))
      x = x.permute(0, 2, 3, 1).flatten(1)  # NHWC flatten, as the flax model (and Keras) does
      for fc in self.fc:
        x = torch.relu(fc(x))
      return x

  class ConvBNAct(nn.Module):
    def __init__(self, cin, cout, k, stride=1, groups=1, act=True):
      super().__init__()
      self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
      self.bn = nn.BatchNorm2d(cout)
      self.act = nn.PReLU(1) if act else None

    def forward(self, x):
      x = self.bn(self.conv(x))
      return self.act(x) if self.act is not None else x

  class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, t, stride):
      super().__init__()
      h = cin * t
      self.body = nn.Sequential(ConvBNAct(cin, h, 1), ConvBNAct(h, h, 3, stride, groups=h),
                                ConvBNAct(h, cout, 1, act=False))
      self.residual = stride == 1 and cin == cout

    def forward(self, x):
      y = self.body(x)
      return x + y if self.residual else y

  class MobileFaceNet(nn.Module):
    def __init__(self, b, image_size):
      super().__init__()
      from facejax.models.common import scaled
      c0 = scaled(64, b.width)
      layers = [ConvBNAct(3, c0, 3, 2), ConvBNAct(c0, c0, 3, 1, groups=c0)]
      cin = c0
      for t, c, n, s in b.blocks:
        for i in range(n):
          c_ = scaled(c, b.width)
          layers.append(InvertedResidual(cin, c_, t, s if i == 0 else 1))
          cin = c_
      d = scaled(b.out_dim, b.width)
      layers.append(ConvBNAct(cin, d, 1))
      self.body = nn.Sequential(*layers)
      with torch.no_grad():
        hw = self.body(torch.zeros(1, 3, image_size, image_size)).shape[2:]
      self.gdconv = nn.Conv2d(d, d, tuple(hw), groups=d, bias=False)
      self.gdbn = nn.BatchNorm2d(d)
      self.out_dim = d

    def forward(self, x):
      return self.gdbn(self.gdconv(self.body(x))).flatten(1)

  class Embedder(nn.Module):
    def __init__(self, backbone, embed_dim):
      super().__init__()
      self.backbone = backbone
      self.dense = nn.Linear(backbone.out_dim, embed_dim)
      self.bn = nn.BatchNorm1d(embed_dim)

    def forward(self, x):
      return nn.functional.normalize(self.bn(self.dense(self.backbone(x))), dim=-1, eps=1e-10)

  return dict(ResNet=ResNet, VGG=VGG, MobileFaceNet=MobileFaceNet, Embedder=Embedder)


def torch_twin(model, variables, image_size: int):
  """A torch.nn.Module computing `model.embed` ([B, 3, S, S] NCHW input) with the flax weights copied in."""
  import flax.linen as fnn
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from torch import nn

  from facejax.models.resnet import ResNet
  from facejax.models.students import MobileFaceNet
  from facejax.models.vgg import VGG
  mods = _torch_modules()
  b = model.backbone
  if isinstance(b, ResNet):
    backbone = mods['ResNet'](b)
  elif isinstance(b, VGG):
    backbone = mods['VGG'](b)
    if b.fc_dims:
      with torch.no_grad():
        spatial = backbone.features(torch.zeros(1, 3, image_size, image_size)).shape[-1]
      backbone.build_fc(spatial)
    else:
      backbone.build_fc(0)
  elif isinstance(b, MobileFaceNet):
    backbone = mods['MobileFaceNet'](b, image_size)
  else:
    raise ValueError(f'no torch twin for backbone {type(b).__name__}')
  net = mods['Embedder'](backbone, model.embed_dim).eval()

  # flax side: parameterised layers in call order.
  flax_layers = []

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == '__call__' and type(context.module) in (fnn.Conv, fnn.Dense, fnn.BatchNorm, fnn.PReLU):
      flax_layers.append((type(context.module).__name__, context.module.scope.path, context.module))
    return next_fun(*args, **kwargs)

  with fnn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(v, x, method=model.embed), variables,
                   jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
  # torch side: the same, from forward hooks.
  torch_layers = []
  hooks = [m.register_forward_hook(lambda m, i, o: torch_layers.append(m)) for m in net.modules()
           if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, nn.PReLU))]
  with torch.no_grad():
    net(torch.zeros(2, 3, image_size, image_size))
  for h in hooks:
    h.remove()
  if len(flax_layers) != len(torch_layers):
    raise ValueError(f'torch twin has {len(torch_layers)} layers, flax model {len(flax_layers)}')

  def get(tree, path):
    for k in path:
      tree = tree[k]
    return np.asarray(tree)

  kinds = {'Conv': nn.Conv2d, 'Dense': nn.Linear, 'BatchNorm': (nn.BatchNorm2d, nn.BatchNorm1d), 'PReLU': nn.PReLU}
  with torch.no_grad():
    for (kind, path, fmod), tmod in zip(flax_layers, torch_layers):
      if not isinstance(tmod, kinds[kind]):
        raise ValueError(f'{"/".join(path)}: flax {kind} vs torch {type(tmod).__name__}')
      p = variables['params']
      for k in path:  # a BatchNorm without scale and bias has no params entry
        p = p.get(k, {})
      if kind == 'Conv':
        w = torch.from_numpy(np.ascontiguousarray(np.asarray(p['kernel']).transpose(3, 2, 0, 1)))
        assert tmod.weight.shape == w.shape, (path, tmod.weight.shape, w.shape)
        tmod.weight.copy_(w)
        if 'bias' in p:
          tmod.bias.copy_(torch.from_numpy(np.asarray(p['bias'])))
      elif kind == 'Dense':
        w = torch.from_numpy(np.ascontiguousarray(np.asarray(p['kernel']).T))
        assert tmod.weight.shape == w.shape, (path, tmod.weight.shape, w.shape)
        tmod.weight.copy_(w)
        tmod.bias.copy_(torch.from_numpy(np.asarray(p['bias'])))
      elif kind == 'BatchNorm':
        tmod.running_mean.copy_(torch.from_numpy(get(variables['batch_stats'], path + ('mean',))))
        tmod.running_var.copy_(torch.from_numpy(get(variables['batch_stats'], path + ('var',))))
        tmod.eps = fmod.epsilon
        if 'scale' in p:
          tmod.weight.copy_(torch.from_numpy(np.asarray(p['scale'])))
        if 'bias' in p:
          tmod.bias.copy_(torch.from_numpy(np.asarray(p['bias'])))
      else:
        tmod.weight.copy_(torch.from_numpy(np.asarray(p['negative_slope'], np.float32).reshape(1)))
  return net


def export_onnx(net, image_size: int, path: str) -> None:
  import torch
  torch.onnx.export(net, (torch.zeros(1, 3, image_size, image_size),), path, dynamo=False, opset_version=ONNX_OPSET,
                    input_names=['images'], output_names=['embeddings'],
                    dynamic_axes={'images': {0: 'batch'}, 'embeddings': {0: 'batch'}})


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


# --------------------------------------------------------------------------------------------------------


TWINS = ('ResNet', 'VGG', 'MobileFaceNet')  # backbones with a torch twin (and so a torch-exported ONNX graph)
TWIN_VARIANTS = ('ort', 'ort_int8', 'torch', 'torch_1t')  # OpenVINO reads facejax's own export without a twin
ANCHORS = ('jax_plain', 'ort', 'ort_facejax', 'openvino', 'openvino_f32', 'torch', 'torch_1t')
OPT_VARIANTS = {'jax_opt': {}, 'jax_bf16': {'dtype': 'bfloat16'}, 'jax_int8': {'dtype': 'int8'},
                'jax_int8_static': {'dtype': 'int8', 'calibration': 'random'}}  # 'random': 32 uniform inputs


def compare_model(name: str, batch_sizes, variants, rounds: int, calls: int, embed_dim: int, opt_variants: dict,
                  ort_int8: bool, log=print, pause: float = 0.05) -> list[dict]:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from facejax.inference.benchmark import inference_params, random_variables
  from facejax.inference.hardware import cpu_info, num_threads
  from facejax.inference.flops import layer_flops
  from facejax.inference.onnx_export import onnx_session
  from facejax.inference.optimize import optimize_for_inference
  from facejax.inference.optimize.trace import trace_plan
  from facejax.models import build_model, default_image_size
  threads, cpu = num_threads(), cpu_info()
  torch.set_num_threads(threads)
  size = default_image_size(name)
  model = build_model(name, num_classes=0, embed_dim=embed_dim)
  variables = random_variables(model, size)
  flops = layer_flops(trace_plan(model, variables, size))
  tmpdir = tempfile.mkdtemp(prefix=f'compare_{name}_')
  no_twin = type(model.backbone).__name__ not in TWINS  # e.g. dlib's ResNet: the runtimes read facejax's export
  if no_twin:
    dropped = [v for v in variants if v in TWIN_VARIANTS]
    variants = list(dict.fromkeys([v for v in variants if v not in TWIN_VARIANTS] + (['ort_facejax'] if dropped
                                                                                       else [])))
    ort_int8 = False
    if dropped:
      log({'model': name, 'note': f'no torch twin for {type(model.backbone).__name__}: {", ".join(dropped)} '
                                  'left out; ort_facejax (ONNX Runtime on the jax2onnx export) is the anchor'})
  net = onnx_path = None
  uses_onnx = not no_twin and (ort_int8 or any(v in ('ort', 'ort_int8') or v.startswith('openvino')
                                                for v in variants))
  if uses_onnx or any(v.startswith('torch') for v in variants):
    net = torch_twin(model, variables, size)
  if uses_onnx:  # the ONNX graph is the torch twin's export
    onnx_path = os.path.join(tmpdir, f'{name}.onnx')
    export_onnx(net, size, onnx_path)
  if 'ort_facejax' in variants or (no_twin and any(v.startswith('openvino') for v in variants)):
    # facejax's own export (BN folded), fed the same float NHWC input
    from facejax.inference.export import embedding_function
    from facejax.inference.onnx_export import export_onnx as facejax_onnx
    as_is = type('AsIs', (), {'apply': staticmethod(lambda x: x)})  # the inputs are model inputs already
    fn, _ = embedding_function(model, variables, as_is, size, optimize={'conv': 'xla'})
    facejax_onnx_path = os.path.join(tmpdir, f'{name}.facejax.onnx')
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
        q = os.path.join(tmpdir, f'{name}.int8.onnx')
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
           'compile_or_load_s': round(compile_s[v], 2), 'threads': threads, 'samples': len(ms), **cpu}
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
  anchors = [(a, label) for a, label in (('ort', 'ORT'), ('openvino', 'OV')) if a in variants]
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


def main(argv):
  del argv
  unknown = sorted(set(FLAGS.variants) - set(ANCHORS) - set(OPT_VARIANTS) - set(json.loads(FLAGS.opt_variants)))
  if unknown:
    raise app.UsageError(f'--variants: unknown {unknown}; expected some of jax_plain, {", ".join(OPT_VARIANTS)}, '
                         f'{", ".join(ANCHORS[1:])} (or a name defined in --opt_variants)')
  missing = missing_packages(FLAGS.variants, FLAGS.ort_int8)
  if missing:
    without_ort = ','.join(v for v in FLAGS.variants if not v.startswith(('ort', 'openvino'))) or 'jax_plain,jax_opt'
    sys.exit(f'launch.compare_cpu: --variants={",".join(FLAGS.variants)}{" --ort_int8" * FLAGS.ort_int8} need '
             f"{', '.join(missing)}, not installed: pip install -e '.[bench]'"
             + ('' if 'torch' in missing else f' (or leave ONNX Runtime out: --variants={without_ort})'))
  records = []
  for name in FLAGS.models:
    records += compare_model(name, [int(b) for b in FLAGS.batch_sizes], list(FLAGS.variants), FLAGS.rounds,
                             FLAGS.calls, FLAGS.embed_dim, dict(OPT_VARIANTS, **json.loads(FLAGS.opt_variants)),
                             FLAGS.ort_int8,
                             log=lambda r: print(json.dumps(r), flush=True))
  table = comparison_table(records)
  print(table)
  if FLAGS.json_out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json_out)), exist_ok=True)
    with open(FLAGS.json_out, 'w') as f:
      json.dump({'records': records, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
                 'opt_variants': dict(OPT_VARIANTS, **json.loads(FLAGS.opt_variants))}, f, indent=2)
    with open(os.path.splitext(FLAGS.json_out)[0] + '.md', 'w') as f:
      f.write(table + '\n')


if __name__ == '__main__':
  app.run(main)
