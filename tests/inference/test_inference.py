"""Inference: rewrites equal the reference forward, embedders, AOT benchmark, export round trip.

Tolerances (random weights, randomised BN statistics and scales, L2-normalised embeddings):
float32 rewrites max |diff| <= 1e-4 (float32 reassociation only; typically ~1e-6); bfloat16 and int8 cosine
similarity to the reference >= 0.98 for every example (typically >= 0.999).
"""
import json
import os
import re
import subprocess
import sys
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facejax.inference.benchmark import all_variants, benchmark, benchmark_model, markdown_table, random_variables
from facejax.inference.embed import embed_images, make_embed_fn
from facejax.inference.export import export_embedder, load_exported, save_exported
from facejax.inference.optimize import onednn, optimize_for_inference, prepare_layers
from facejax.inference.optimize.fold import fold_batch_norm
from facejax.inference.optimize.trace import trace_layers
from facejax.models import MODELS, build_model
from facejax.models.preprocessing import FACEJAX

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
F32_TOL = 1e-4
LOW_PRECISION_MIN_COS = 0.98

# Every registry model, shrunk (width) to keep compiles cheap; the layer types and topology are the real ones.
SMALL = {
    'vgg16': dict(width=0.125), 'vgg16_gap': dict(width=0.125), 'resnet50': dict(width=0.25),
    'resnet50_keras': dict(width=0.25), 'vgg_small': {}, 'student_vgg': {}, 'mobilefacenet': dict(width=0.25),
    'resnet18': dict(width=0.25), 'resnet18_w050': dict(width=0.25), 'dlib_resnet': dict(width=0.25),
    'dlib_student': {}, 'mobilenet_v2': dict(width=0.25), 'efficientnet_lite0': dict(width=0.25),
    'efficientnet_lite1': dict(width=0.25), 'efficientnet_lite2': dict(width=0.25),
}
SIZES = {'dlib_resnet': 112, 'dlib_student': 112}  # their unpadded stride-2 layers need a larger input
SIZE = 32


def _model(name, size=SIZE):
  model = build_model(name, num_classes=0, embed_dim=16, **SMALL.get(name, {}))
  return model, random_variables(model, size, seed=1)


def _inputs(batch=3, size=SIZE, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)), jnp.float32)


def _reference(model, variables, x):
  return np.asarray(jax.jit(lambda v, x: model.apply(v, x, method=model.embed))(variables, x))


def test_small_table_covers_the_registry():
  assert set(SMALL) == set(MODELS), 'add new registry models to SMALL so the rewrites are tested on them'


@pytest.mark.parametrize('name', sorted(SMALL))
def test_float32_rewrite_matches_reference(name):
  size = SIZES.get(name, SIZE)
  model, variables = _model(name, size)
  x = _inputs(size=size)
  ref = _reference(model, variables, x)
  out = jax.jit(optimize_for_inference(model, variables, image_size=size))(x)
  np.testing.assert_allclose(out, ref, atol=F32_TOL, err_msg=name)


@pytest.mark.parametrize('name', ['vgg_small', 'mobilefacenet'])
def test_low_precision_rewrites_keep_embeddings(name):
  model, variables = _model(name)
  x = _inputs()
  ref = _reference(model, variables, x)
  for dtype in ('bfloat16', 'int8'):
    out = np.asarray(jax.jit(optimize_for_inference(model, variables, image_size=SIZE, dtype=dtype))(x))
    assert out.dtype == np.float32
    cos = np.sum(out * ref, axis=-1)
    assert cos.min() >= LOW_PRECISION_MIN_COS, (name, dtype, cos)


def test_static_int8_calibration():
  from facejax.inference.optimize.quantize import activation_ranges
  model, variables = _model('resnet18_w050')
  calibration = np.asarray(_inputs(8, seed=5))
  ranges = activation_ranges(model, variables, calibration)
  assert ranges['backbone/conv1'] == pytest.approx(float(np.abs(calibration).max()))  # the stem sees the input
  fn = optimize_for_inference(model, variables, image_size=SIZE, dtype='int8', calibration=calibration)
  layer = fn.params['layers']['backbone/layer1_0/conv2']
  assert float(layer['act_scale']) == pytest.approx(ranges['backbone/layer1_0/conv2'] / 127, rel=1e-6)
  x = _inputs(4, seed=6)  # not the calibration images
  cos = np.sum(np.asarray(jax.jit(fn)(x)) * _reference(model, variables, x), axis=-1)
  assert cos.min() >= LOW_PRECISION_MIN_COS, cos
  with pytest.raises(ValueError, match="static activation scales are for dtype='int8'"):
    optimize_for_inference(model, variables, image_size=SIZE, dtype='bfloat16', calibration=calibration)


def test_int8_does_not_mix_examples_of_a_batch():
  model, variables = _model('student_vgg')
  fn = jax.jit(optimize_for_inference(model, variables, image_size=SIZE, dtype='int8'))
  x = _inputs(4)
  loud = x.at[1:].multiply(0).at[1:].add(50.0)  # other examples with a much larger range
  np.testing.assert_allclose(fn(x)[:1], fn(loud)[:1], atol=1e-6)


@pytest.mark.parametrize('conv', ['im2col', 'winograd'])
def test_conv_lowerings_match_reference(conv):
  model, variables = _model('resnet18_w050')  # 7x7 stride-2 stem, 3x3 stride 1 and 2, 1x1 stride 2
  x = _inputs(2, size=20)  # odd feature-map sizes: Winograd's 2x2 tiles need cropping
  variables = random_variables(model, 20, seed=4)
  out = jax.jit(optimize_for_inference(model, variables, image_size=20, conv=conv))(x)
  np.testing.assert_allclose(out, _reference(model, variables, x), atol=F32_TOL)


def test_auto_lowering_choices():
  model = build_model('resnet50', num_classes=0, embed_dim=16)
  variables = random_variables(model, 224)
  traced = trace_layers(model, variables, 224)
  layers = prepare_layers(fold_batch_norm(model, variables, 224, traced), traced, 'auto', 'float32')['layers']
  low = {p: v['lowering'] for p, v in layers.items()}
  assert low['backbone/conv1'] == 'xla'  # 7x7 stem at 112x112
  assert low['backbone/layer1_0/conv2'] == 'xla' and low['backbone/layer1_0/conv1'] == 'matmul'
  assert low['backbone/layer3_1/conv2'] == 'winograd' and low['backbone/layer4_0/conv2'] == 'matmul'  # 14x14; s2
  assert layers['backbone/layer3_1/conv2']['kernel'].shape == (16, 256, 256)
  int8 = prepare_layers(fold_batch_norm(model, variables, 224, traced), traced, 'auto', 'int8',
                        int8_im2col_max_pixels=3136)['layers']
  assert int8['backbone/conv1']['lowering'] == 'xla'  # 112x112 > 3136 pixels: float32 native conv
  assert {v['lowering'] for p, v in int8.items() if p != 'backbone/conv1'} == {'matmul'}
  assert isinstance(int8['backbone/layer1_0/conv2']['kernel'], tuple)  # (int8 [576, 64], scale [64])


def test_bf16_lowering_by_im2col_bytes():
  """bf16: im2col matmuls while the per-image im2col matrix fits AUTO_BF16_IM2COL_MAX_BYTES, float32 native
  convs above (VGG's 224 and 112x112x128 maps) and on RGB inputs; dense layers stay float32, stored [F, K]."""
  from facejax.inference.optimize.lowering import auto_lowering
  for name, native in [('resnet50', {'backbone/conv1'}), ('vgg16', {'conv1_1', 'conv1_2', 'conv2_2'})]:
    model = build_model(name, num_classes=0, embed_dim=16)
    shapes = jax.eval_shape(lambda k, x: model.init(k, x, method=model.embed), jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
    traced = trace_layers(model, shapes, 224)
    low = {p.split('/')[-1] if name == 'vgg16' else p: auto_lowering(e, 'bfloat16') for p, e in traced.items()
           if e.kind == 'conv'}
    assert {p for p, v in low.items() if v == 'xla'} == native, name
  model, variables = _model('vgg16')
  traced = trace_layers(model, variables, SIZE)
  layers = prepare_layers(fold_batch_norm(model, variables, SIZE, traced), traced, 'auto', 'bfloat16')['layers']
  assert layers['backbone/conv3_1']['kernel'].dtype == jnp.bfloat16
  fc6 = layers['backbone/fc6']['kernel']
  assert fc6.dtype == np.float32 and fc6.shape == (traced['backbone/fc6'].out_shape[-1], traced['backbone/fc6'].in_shape[-1])


def test_default_compiler_options_by_network_shape():
  """float32: YNNPACK dots with their elementwise epilogues for ResNets, XLA's own handling for nets with depthwise
  convs (MobileFaceNet), individual dots for VGG's fc-heavy head; bf16 keeps individual dots for all."""
  from facejax.inference.optimize.options import YNN_DOT_ELTWISE, YNN_INDIVIDUAL_DOT, default_compiler_options
  got = {}
  for name in ('resnet50', 'mobilefacenet', 'vgg16'):
    model, variables = _model(name)
    traced = trace_layers(model, variables, SIZE)
    for dtype in ('float32', 'bfloat16'):
      got[name, dtype] = default_compiler_options(traced, {}, dtype)
  assert got['resnet50', 'float32'] == YNN_DOT_ELTWISE and got['mobilefacenet', 'float32'] == {}
  assert got['vgg16', 'float32'] == YNN_INDIVIDUAL_DOT
  assert {got[n, 'bfloat16']['xla_cpu_experimental_ynn_fusion_type'] for n in ('resnet50', 'mobilefacenet', 'vgg16')} \
      == {YNN_INDIVIDUAL_DOT['xla_cpu_experimental_ynn_fusion_type']}


def _dot_operand_dtypes(hlo: str) -> list[tuple[str, ...]]:
  """Operand dtypes of every dot in an optimized HLO module's text (operands resolved within their computation)."""
  out = []
  for block in hlo.split('\n\n'):
    types = dict(re.findall(r'%?([\w.\-]+): (\w+)\[', block.split('\n', 1)[0]))  # computation parameters
    types.update(re.findall(r'%([\w.\-]+) = (\w+)\[', block))
    for args in re.findall(r' dot\(%([\w.\-]+), %([\w.\-]+)\)', block):
      out.append(tuple(types.get(a, '?') for a in args))
  return out


def test_bf16_matmuls_stay_bf16_after_xla():
  """XLA CPU upcasts bf16 pads, slices and concatenations to float32; the im2col columns travel as uint16 bits so
  the compiled conv matmuls really take bf16 operands (the fast AMX/avx512_bf16 path), accumulating in f32."""
  model, variables = _model('resnet18_w050')
  fn = optimize_for_inference(model, variables, image_size=SIZE, dtype='bfloat16', conv='im2col')
  hlo = jax.jit(fn).lower(_inputs()).compile(compiler_options=fn.compiler_options).as_text()
  dots = _dot_operand_dtypes(hlo)
  convs = len([e for e in trace_layers(model, variables, SIZE).values() if e.kind == 'conv'])
  assert sum(d == ('bf16', 'bf16') for d in dots) == convs, dots
  assert not re.search(r'= f32\[[\d,]+\]\{[\d,]+\} concatenate\(', hlo)


def test_bf16_warns_without_hardware_bf16(monkeypatch):
  import facejax.inference.hardware as hardware
  model, variables = _model('student_vgg')
  monkeypatch.setattr(hardware, 'cpu_info', lambda: {'cpu': 'old', 'cpu_flags': ['avx2', 'avx512f']})
  with pytest.warns(UserWarning, match='neither avx512_bf16 nor amx_bf16'):
    optimize_for_inference(model, variables, image_size=SIZE, dtype='bfloat16')
  monkeypatch.setattr(hardware, 'cpu_info', lambda: {'cpu': 'spr', 'cpu_flags': ['avx512_bf16', 'amx_bf16']})
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    optimize_for_inference(model, variables, image_size=SIZE, dtype='bfloat16')


def test_auto_dtype_times_what_the_cpu_can_run_and_falls_back_to_float32(monkeypatch):
  import facejax.inference.hardware as hardware
  from facejax.inference.optimize.choose import candidate_paths, choose_dtype
  assert list(candidate_paths(['avx2', 'avx512f'])) == ['float32', 'int8']  # no bf16 dot instructions: no bf16
  assert list(candidate_paths(['avx512_bf16'])) == list(candidate_paths(['amx_bf16'])) == ['float32', 'bfloat16',
                                                                                           'int8']
  monkeypatch.setattr(hardware, 'cpu_info', lambda: {'cpu': 'test', 'cpu_flags': ['avx512_bf16']})
  model, variables = _model('student_vgg')
  check, calibration = np.asarray(_inputs(6, seed=7)), np.asarray(_inputs(8, seed=8))
  choose = lambda min_cosine: choose_dtype(model, variables, image_size=SIZE, check=check, calibration=calibration,
                                           batch_size=2, min_cosine=min_cosine, rounds=2, calls=1,
                                           convs=('xla',))
  anything = choose(-1.0)  # every candidate agrees: the fastest wins
  times = {d: c['ms_median'] for d, c in anything['candidates'].items()}
  assert set(times) == {'float32', 'float32/xla', 'bfloat16', 'int8'}
  fastest = anything['candidates'][min(times, key=times.get)]
  assert (anything['dtype'], anything['conv']) == (fastest['dtype'], fastest['conv'])
  assert anything['candidates']['float32/xla']['conv'] == 'xla' and anything['candidates']['int8']['conv'] == 'auto'
  assert anything['calibrated'] == (anything['dtype'] == 'int8') and anything['cpu'] == 'test'
  for name in ('float32', 'float32/xla'):
    assert anything['candidates'][name]['min_cosine'] == pytest.approx(1.0, abs=1e-5)
  for dtype in ('bfloat16', 'int8'):
    assert LOW_PRECISION_MIN_COS <= anything['candidates'][dtype]['min_cosine'] < 1.0
  strict = choose(1.5)  # nothing but float32 itself can agree
  assert strict['dtype'] == 'float32' and not strict['candidates']['int8']['agrees']


def test_auto_export_checks_and_times_the_artifact_it_returns(tmp_path):
  """choose_export: each candidate is the serialized artifact read back, so the chosen one's recorded agreement
  is what its bytes give on the check faces; ONNX Runtime on the ONNX export is timed beside them."""
  from facejax.inference.optimize.choose import ORT, choose_export, ort_unavailable
  model, variables = _model('student_vgg')
  rng = np.random.default_rng(9)
  check = rng.integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
  calibration = np.asarray(FACEJAX.apply(rng.integers(0, 256, (8, SIZE, SIZE, 3), dtype=np.uint8)))
  choice, chosen, onnx_path = choose_export(model, variables, FACEJAX, SIZE, check=check, calibration=calibration,
                                            batch_size=2, convs=('xla',), onnx_dir=str(tmp_path), min_cosine=-1.0,
                                            rounds=2, calls=1)
  own = {n: c for n, c in choice['candidates'].items() if n != ORT}
  name = min(own, key=lambda n: own[n]['ms_median'])  # every candidate agrees at min_cosine=-1
  assert (choice['dtype'], choice['conv']) == (own[name]['dtype'], own[name]['conv'])
  assert chosen.metadata['cpu_compiler_options'] == chosen.compiler_options
  reference = export_embedder(model, variables, FACEJAX, SIZE, optimize={'dtype': 'float32', 'conv': 'auto'})
  save_exported(chosen.exported, str(tmp_path / 'chosen.jaxexport'), chosen.metadata)
  reloaded = load_exported(str(tmp_path / 'chosen.jaxexport'))
  emb, ref = reloaded(check), np.asarray(jax.jit(reference.call)(check))
  assert float(np.min(np.sum(emb * ref, -1))) == pytest.approx(own[name]['min_cosine'], abs=2e-6)
  if ort_unavailable():
    assert onnx_path is None and choice['ort'] == ort_unavailable() and ORT not in choice['candidates']
  else:
    ort = choice['candidates'][ORT]
    assert os.path.isfile(onnx_path) and ort['agrees'] and ort['min_cosine'] > 0.9999
    assert choice['ort_speedup'] == round(own[name]['ms_median'] / ort['ms_median'], 3)
    assert choice['fastest'] == min(choice['candidates'], key=lambda n: choice['candidates'][n]['ms_median'])


def test_xla_conv_lowering_with_weights_as_arguments():
  model, variables = _model('mobilefacenet')  # plain, depthwise and global-depthwise convs, PReLU
  x = _inputs()
  fn = optimize_for_inference(model, variables, image_size=SIZE, conv='xla', weights='args')
  np.testing.assert_allclose(jax.jit(fn.forward)(fn.params, x), _reference(model, variables, x), atol=F32_TOL)


def test_bn_folding_math_on_conv_and_dense():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.BatchNorm(use_running_average=True, epsilon=1e-3)(nn.Conv(5, (3, 3), strides=2, use_bias=True)(x))
      x = nn.relu(x).reshape(x.shape[0], -1)
      return nn.BatchNorm(use_running_average=True, use_scale=False)(nn.Dense(4, use_bias=False)(x))

  net = Net()
  x = _inputs(2, 8)
  variables = jax.tree_util.tree_map(np.asarray, net.init(jax.random.PRNGKey(0), x))
  rng = np.random.default_rng(0)
  variables['batch_stats'] = jax.tree_util.tree_map(lambda v: rng.uniform(0.5, 2, v.shape).astype(np.float32),
                                                    variables['batch_stats'])
  variables['params']['BatchNorm_0'] = {k: rng.normal(size=v.shape).astype(np.float32)
                                        for k, v in variables['params']['BatchNorm_0'].items()}
  method = lambda m, x: m(x)
  traced = trace_layers(net, variables, 8, method)
  assert traced['BatchNorm_0'].fold_into == 'Conv_0' and traced['BatchNorm_1'].fold_into == 'Dense_0'
  folded = fold_batch_norm(net, variables, 8, traced)
  bn = variables['batch_stats']['BatchNorm_0']
  g = variables['params']['BatchNorm_0']
  s = g['scale'] / np.sqrt(bn['var'] + 1e-3)
  np.testing.assert_allclose(folded['layers']['Conv_0']['kernel'], variables['params']['Conv_0']['kernel'] * s,
                             rtol=1e-6)
  np.testing.assert_allclose(folded['layers']['Conv_0']['bias'],
                             (variables['params']['Conv_0']['bias'] - bn['mean']) * s + g['bias'], rtol=1e-5,
                             atol=1e-6)
  ref = net.apply(variables, x)
  for conv in ('im2col', 'xla'):
    fn = optimize_for_inference(net, variables, image_size=8, conv=conv, method=method)
    np.testing.assert_allclose(jax.jit(fn.raw)(x), ref, atol=1e-5, rtol=1e-5)


def test_make_embed_fn_flip_modes_and_optimized_path():
  model, variables = _model('student_vgg')
  images = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
  plain = np.asarray(make_embed_fn(model, variables, FACEJAX, SIZE)(images))
  assert plain.shape == (2, 16) and plain.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(plain, axis=-1), 1, atol=1e-5)
  np.testing.assert_allclose(make_embed_fn(model, variables, FACEJAX, SIZE, optimize=True)(images), plain,
                             atol=F32_TOL)
  concat = np.asarray(make_embed_fn(model, variables, FACEJAX, SIZE, flip='concat')(images))
  assert concat.shape == (2, 32)
  np.testing.assert_allclose(concat[:, :16] * np.sqrt(2), plain, atol=1e-5)
  symmetric = np.concatenate([images[:, :, :SIZE // 2], images[:, :, :SIZE // 2][:, :, ::-1]], axis=2)
  np.testing.assert_allclose(make_embed_fn(model, variables, FACEJAX, SIZE, flip='sum')(symmetric),
                             make_embed_fn(model, variables, FACEJAX, SIZE)(symmetric), atol=1e-5)
  with pytest.raises(ValueError, match='flip'):
    make_embed_fn(model, variables, FACEJAX, SIZE, flip='mirror')
  with pytest.raises(ValueError, match=r'images: expected \[B, 32, 32, 3\]'):
    make_embed_fn(model, variables, FACEJAX, SIZE)(images[:, :16])


def test_make_embed_fn_raw_equals_the_heads_output_on_every_forward():
  """raw=True: FaceNet.forward's 'raw_embedding' through the flax forward, and the BN-folded forward with the
  options the evaluator takes (`onednn_options`: oneDNN's convolutions where built, else the flax forward)."""
  from facejax.inference.optimize import onednn_options
  model, variables = _model('student_vgg')
  images = np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
  ref = np.asarray(model.apply(variables, FACEJAX.apply(images), method='forward')['raw_embedding'])
  assert np.abs(np.linalg.norm(ref, axis=-1) - 1).max() > 1e-2  # not normalised: the test can tell
  np.testing.assert_allclose(make_embed_fn(model, variables, FACEJAX, SIZE, raw=True)(images), ref, atol=1e-5)
  for optimize in (True, onednn_options()):
    np.testing.assert_allclose(make_embed_fn(model, variables, FACEJAX, SIZE, raw=True, optimize=optimize)(images),
                               ref, atol=F32_TOL * np.abs(ref).max())
  with pytest.raises(ValueError, match='raw embeddings are single-image'):
    make_embed_fn(model, variables, FACEJAX, SIZE, flip='sum', raw=True)


def test_embed_images_pads_the_tail_and_resizes():
  model, variables = _model('student_vgg')
  calls = []
  fn = make_embed_fn(model, variables, FACEJAX, SIZE)

  def counting(batch):
    calls.append(batch.shape)
    return fn(batch)

  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(5)]
  images.append(rng.integers(0, 256, (50, 40, 3), dtype=np.uint8))  # resized/cropped on the way
  out = embed_images(counting, images, SIZE, batch_size=4)
  assert out.shape == (6, 16) and calls == [(4, SIZE, SIZE, 3)] * 2
  np.testing.assert_allclose(out[:4], fn(np.stack(images[:4])), atol=1e-6)


def test_benchmark_reports_aot_timing_and_flops():
  a = jnp.ones((64, 64))
  r = benchmark(lambda a: a @ a, (a,), warmup=1, runs=3)
  assert {'compile_s', 'ms_median', 'ms_p90', 'gflops', 'backend', 'runs'} <= set(r)
  assert r['runs'] == 3 and r['ms_p90'] >= r['ms_median'] > 0 and r['backend'] == 'cpu'
  assert r['gflops'] == pytest.approx(2 * 64**3 / 1e9, rel=0.01)


def test_benchmark_model_record_and_table():
  model, variables = _model('student_vgg')
  keys = {'model', 'params', 'gflops', 'batch_size', 'image_size', 'ms_median', 'ms_p90', 'compile_s', 'backend',
          'ms_per_image', 'threads', 'peak_rss_mb', 'variant'}
  plain = benchmark_model(model, variables, batch_size=2, image_size=SIZE, runs=2, warmup=1)
  opt = benchmark_model(model, variables, batch_size=2, image_size=SIZE, runs=2, warmup=1, optimize=True)
  assert keys <= set(plain) and keys <= set(opt)
  assert plain['variant'] == 'plain' and opt['variant'].startswith('optimized')
  default = benchmark_model(model, variables, batch_size=2, image_size=SIZE, runs=2, warmup=1, optimize={})
  assert default['variant'] == 'optimized' and default['compiler_options'] == opt['compiler_options'] != {}
  assert plain['params'] == opt['params'] > 0 and plain['gflops'] == opt['gflops'] > 0
  assert plain['ms_per_image'] == pytest.approx(plain['ms_median'] / 2, abs=1e-3)
  table = markdown_table([dict(plain, model='student_vgg'), dict(opt, model='student_vgg')])
  assert table.count('| student_vgg |') == 2


def test_all_variants_time_onednn_where_built(monkeypatch):
  import facejax.inference.hardware as hardware
  assert all_variants()['onednn'] == {'conv': 'onednn'}  # make venv builds it
  monkeypatch.setattr(hardware, 'cpu_info', lambda: {'cpu': 'test', 'cpu_flags': ['avx512_bf16']})
  assert all_variants()['onednn_bf16'] == {'conv': 'onednn', 'dtype': 'bfloat16'}
  monkeypatch.setattr(hardware, 'cpu_info', lambda: {'cpu': 'test', 'cpu_flags': ['avx2']})
  assert 'onednn_bf16' not in all_variants()  # no bf16 dot instructions: oneDNN has no bf16 conv
  monkeypatch.setattr(onednn, 'unavailable', lambda: 'not built')
  assert set(all_variants()) == {'plain', 'optimized', 'bf16', 'int8'}


def test_launch_benchmark_writes_the_design_json(tmp_path):
  out = tmp_path / 'b.json'
  subprocess.run([sys.executable, '-m', 'launch.benchmark', '--model=student_vgg', '--batch_size=2', '--image_size=24',
                  '--optimize', '--conv=onednn', '--runs=2', '--warmup=1', f'--json_out={out}'], cwd=REPO, check=True,
                 capture_output=True)
  record = json.loads(out.read_text())
  assert {'model', 'params', 'gflops', 'batch_size', 'image_size', 'ms_median', 'ms_p90', 'compile_s',
          'backend'} <= set(record)
  assert record['model'] == 'student_vgg' and record['batch_size'] == 2 and record['image_size'] == 24
  assert record['variant'] == 'optimized,conv=onednn,dtype=float32,weights=const'


@pytest.mark.parametrize('flip,dtype', [(None, 'float32'), ('sum', 'int8')])
def test_export_round_trip_is_batch_polymorphic(tmp_path, flip, dtype):
  model, variables = _model('student_vgg')
  path = str(tmp_path / 'model.jaxexport')
  meta = {'model': 'student_vgg'}
  exported = export_embedder(model, variables, FACEJAX, SIZE, flip=flip, optimize={'dtype': dtype}, metadata=meta)
  info = save_exported(exported, path, meta)
  assert info['input']['shape'] == [None, SIZE, SIZE, 3] and info['output']['shape'] == [None, 16]
  loaded = load_exported(path)
  assert loaded.image_size == SIZE and loaded.embed_dim == 16 and loaded.metadata['model'] == 'student_vgg'
  assert loaded.compiler_options == optimize_for_inference(model, variables, image_size=SIZE,
                                                           dtype=dtype).compiler_options
  images = np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
  reference = np.asarray(make_embed_fn(model, variables, FACEJAX, SIZE, flip=flip,
                                       optimize={'dtype': dtype})(images))
  np.testing.assert_allclose(loaded(images), reference, atol=1e-5)
  np.testing.assert_allclose(loaded(images[:2]), reference[:2], atol=1e-5)
  if dtype == 'float32':
    np.testing.assert_allclose(loaded(images), make_embed_fn(model, variables, FACEJAX, SIZE, flip=flip)(images),
                               atol=F32_TOL)


def _fake_run(tmp_path, name='resnet18_w050'):
  """A run directory in facejax.train's format: model.json + an orbax checkpoint of {'params', 'batch_stats'}."""
  import orbax.checkpoint as ocp
  model = build_model(name, num_classes=7, embed_dim=16, width=0.25)
  variables = random_variables(model, SIZE, seed=2)
  run = tmp_path / 'run'
  (run / 'checkpoints' / '3').mkdir(parents=True)
  info = {'name': name, 'num_classes': 7, 'embed_dim': 16, 'dropout': 0.0, 'kwargs': {'width': 0.25},
          'image_size': SIZE, 'preprocessing': FACEJAX.to_dict(), 'task': 'classify'}
  (run / 'model.json').write_text(json.dumps(info))
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(str(run / 'checkpoints' / '3' / 'state'), {'params': variables['params'],
                                                        'batch_stats': variables['batch_stats']})
  ckpt.wait_until_finished()
  return run, model, variables


def test_launch_export_and_loader_without_model_code(tmp_path):
  run, model, variables = _fake_run(tmp_path)
  out = tmp_path / 'model.jaxexport'
  subprocess.run([sys.executable, '-m', 'launch.export', f'--workdir={run}', f'--out={out}'], cwd=REPO, check=True,
                 capture_output=True)
  images = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
  np.save(tmp_path / 'images.npy', images)
  loader = (
      'import sys, numpy as np\n'
      'from facejax.inference import load_exported\n'
      f'emb = load_exported({str(out)!r})(np.load({str(tmp_path / "images.npy")!r}))\n'
      f'np.save({str(tmp_path / "emb.npy")!r}, emb)\n'
      'print(sorted(m for m in sys.modules if m.startswith("facejax")))\n'
      'assert "facejax.models" not in sys.modules and "flax" not in sys.modules\n')
  proc = subprocess.run([sys.executable, '-c', loader], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  reference = make_embed_fn(model, variables, FACEJAX, SIZE)(images)
  np.testing.assert_allclose(np.load(tmp_path / 'emb.npy'), reference, atol=F32_TOL)
