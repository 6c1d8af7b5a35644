"""The oneDNN custom call (facejax.inference.optimize.onednn) against its pure-XLA fallback."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from facejax.inference import hardware
from facejax.inference.benchmark import random_variables
from facejax.inference.export import export_embedder, load_exported, save_exported
from facejax.inference.flops import compiled_flops
from facejax.inference.optimize import onednn, optimize_for_inference
from facejax.models import build_model
from facejax.models.preprocessing import FACEJAX

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope='module', autouse=True)
def built():
  assert onednn.unavailable() is None, f'the project install builds the oneDNN custom call: {onednn.unavailable()}'
  assert int(os.environ['DPCPP_CPU_NUM_CUS']) >= 1  # oneDNN's workers: half the cores unless set


def _xla(x, kernel, bias, strides, pads, relu, residual=None):
  y = lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                               feature_group_count=x.shape[-1] // kernel.shape[2]) + bias
  y = y if residual is None else y + residual
  return jax.nn.relu(y) if relu else y


# (batch, H, W, C, F, k, stride, pads, relu): dlib's unpadded 7x7/2 RGB stem, padded and unpadded 3x3 at
# strides 1 and 2, a strided 1x1 shortcut, asymmetric pads on a non-square map, channel counts off oneDNN's blocks
CASES = [(1, 31, 31, 3, 8, 7, 2, ((0, 0), (0, 0)), False), (2, 17, 17, 8, 24, 3, 1, ((1, 1), (1, 1)), True),
         (3, 17, 17, 24, 48, 3, 2, ((0, 0), (0, 0)), False), (2, 9, 9, 48, 96, 1, 2, ((0, 0), (0, 0)), True),
         (1, 11, 7, 5, 13, 3, 1, ((0, 1), (2, 0)), False)]


# (batch, H, W, C, F, k, stride, pads, relu, groups): depthwise 3x3 at strides 1 and 2, MobileFaceNet's global
# depthwise 7x7 on a 7x7 map, a grouped conv with two output channels per group
GROUPED = [(2, 9, 9, 16, 16, 3, 1, ((1, 1), (1, 1)), True, 16), (1, 10, 10, 24, 24, 3, 2, ((0, 1), (0, 1)), False, 24),
           (2, 7, 7, 32, 32, 7, 1, ((0, 0), (0, 0)), False, 32), (1, 6, 6, 8, 12, 3, 1, ((1, 1), (1, 1)), True, 2)]


@pytest.mark.parametrize('case', CASES + GROUPED)
@pytest.mark.parametrize('residual', [False, True])
def test_conv_equals_xla(case, residual):
  """Plain, grouped and depthwise, and each with a residual added by a oneDNN post-op (before the ReLU post-op,
  as relu(conv + b + r))."""
  b, h, w, c, f, k, s, pads, relu, *groups = case
  rng = np.random.default_rng(0)
  shapes = ((b, h, w, c), (k, k, c // (groups or [1])[0], f), (f,))
  x, kernel, bias = (jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in shapes)
  shape = jax.eval_shape(lambda x: _xla(x, kernel, bias, (s, s), pads, relu), x).shape
  r = jnp.asarray(rng.normal(size=shape), jnp.float32) if residual else None
  call = lambda x, kernel, bias, r: onednn.conv(x, kernel, bias, (s, s), pads, relu, residual=r)
  out = jax.jit(call)(x, kernel, bias, r)
  ref = _xla(x, kernel, bias, (s, s), pads, relu, r)
  assert 'custom_call' in jax.jit(call).lower(x, kernel, bias, r).as_text()
  np.testing.assert_allclose(out, ref, atol=1e-5 * float(jnp.abs(ref).max()))


HAS_BF16 = hardware.has_bf16_dots(hardware.cpu_info().get('cpu_flags'))
BF16 = pytest.mark.skipif(not HAS_BF16, reason='this CPU has neither avx512_bf16 nor amx_bf16: oneDNN has no bf16 '
                                                'convolution here')


@BF16
@pytest.mark.parametrize('case', CASES + GROUPED)
def test_bf16_conv_is_the_exact_result_rounded_once(case):
  """bf16 input, kernel and residual: oneDNN's bf16 output is within one bf16 step of the exact float32
  relu(conv + b + r) of the same bf16 values (products summed in float32, rounded to bf16 once)."""
  b, h, w, c, f, k, s, pads, relu, *groups = case
  rng = np.random.default_rng(0)
  bf = lambda shape: jnp.asarray(rng.normal(size=shape), jnp.bfloat16)
  x, kernel = bf((b, h, w, c)), bf((k, k, c // (groups or [1])[0], f))
  bias = jnp.asarray(rng.normal(size=f), jnp.float32)
  exact = lambda r: _xla(*(a.astype(jnp.float32) for a in (x, kernel)), bias, (s, s), pads, relu, r)
  r = bf(jax.eval_shape(lambda: exact(None)).shape)
  call = lambda x, kernel, bias, r: onednn.conv(x, kernel, bias, (s, s), pads, relu, r, dtype=jnp.bfloat16)
  out = jax.jit(call)(x, kernel, bias, r)
  with jax.default_matmul_precision('highest'):
    ref = np.asarray(exact(r.astype(jnp.float32)))
  assert out.dtype == jnp.bfloat16 and 'custom_call' in jax.jit(call).lower(x, kernel, bias, r).as_text()
  step = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(ref), 2.0 ** -100))) - 7)  # bf16 keeps 8 significant bits
  assert np.all(np.abs(np.asarray(out, np.float32) - ref) <= step)


@pytest.mark.parametrize('dtype', ['float32', pytest.param('bfloat16', marks=BF16)])
@pytest.mark.parametrize('m', [1, 3])
def test_dense_is_the_exact_product_and_each_kernel_is_its_own(dtype, m):
  """oneDNN's matmul: float32 out within float32 rounding of the exact product of the dtype's values, and a second
  kernel through the same executable (weights as arguments, reordered copies cached by address) gets its own."""
  rng = np.random.default_rng(m)
  x = jnp.asarray(rng.normal(size=(m, 300)), dtype)
  bias = jnp.asarray(rng.normal(size=70), jnp.float32)
  step = jax.jit(lambda x, kernel, bias: onednn.dense(x, kernel, bias, dtype=dtype))
  assert 'facejax_onednn_dense' in step.lower(x, jax.ShapeDtypeStruct((300, 70), dtype), bias).as_text()
  for _ in range(3):
    kernel = jnp.asarray(rng.normal(size=(300, 70)), dtype)
    out = step(x, kernel, bias)
    exact = np.asarray(x, np.float64) @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, exact, atol=1e-5 * np.abs(exact).max())
  with pytest.raises(ValueError, match=r'onednn.dense: x \(3, 300\), kernel \(70, 300\), bias \(70,\): expected '
                                       r'\[M, K\], \[K, N\], \[N\]'):
    onednn.dense(jnp.zeros((3, 300)), jnp.zeros((70, 300)), bias)


@BF16
def test_large_dense_layers_run_in_onednn_bf16_and_are_exported(tmp_path, monkeypatch):
  """Under conv='onednn', dtype='bfloat16', dense layers of at least ONEDNN_DENSE_MIN_WEIGHTS weights become oneDNN
  bf16 matmuls (smaller ones stay XLA float32 dots); the embedding stays within bf16 error of float32, and the
  export's sidecar names both custom calls."""
  from facejax.inference import optimize
  model, variables = _student(7)
  x = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (2, 112, 112, 3)), jnp.float32)
  ref = optimize_for_inference(model, variables, image_size=112)(x)
  dense_calls = lambda fn: jax.jit(fn).lower(x).as_text().count('custom_call @facejax_onednn_dense')
  assert dense_calls(optimize_for_inference(model, variables, image_size=112, conv='onednn', dtype='bfloat16')) == 0
  monkeypatch.setattr(optimize, 'ONEDNN_DENSE_MIN_WEIGHTS', 1)
  fn = optimize_for_inference(model, variables, image_size=112, conv='onednn', dtype='bfloat16')
  assert dense_calls(fn) == 1
  assert float(jnp.min(jnp.sum(jax.jit(fn)(x) * ref, -1))) > 0.999
  meta = {}
  export_embedder(model, variables, FACEJAX, 112, optimize={'conv': 'onednn', 'dtype': 'bfloat16'}, metadata=meta)
  assert meta['custom_calls'] == ['facejax_onednn_conv', 'facejax_onednn_dense']


HAS_INT8 = hardware.has_int8_dots(hardware.cpu_info().get('cpu_flags'))
INT8 = pytest.mark.skipif(not HAS_INT8, reason='this CPU has no int8 dot instructions (avx512_vnni, avx_vnni, '
                                               "amx_int8): facejax runs no int8 conv in oneDNN here (the switch is "
                                               'tested with faked flags)')


@INT8
@pytest.mark.parametrize('residual', [False, True])
@pytest.mark.parametrize('case', CASES)
def test_int8_conv_is_the_exact_integer_sum_dequantized(case, residual):
  """int8 x and kernel: oneDNN's exact int32 sums times each channel's scale, plus bias (and a float32 residual),
  equal XLA's int32 conv dequantized the same way."""
  b, h, w, c, f, k, s, pads, relu = case
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.integers(-127, 128, (b, h, w, c)), jnp.int8)
  kernel = jnp.asarray(rng.integers(-127, 128, (k, k, c, f)), jnp.int8)
  bias = jnp.asarray(np.stack([rng.normal(size=f), rng.uniform(1e-4, 1e-3, f)]), jnp.float32)
  acc = lax.conv_general_dilated(x, kernel, (s, s), pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                 preferred_element_type=jnp.int32)
  ref = acc.astype(jnp.float32) * bias[1] + bias[0]
  r = jnp.asarray(rng.normal(size=ref.shape), jnp.float32) if residual else None
  ref = ref if r is None else ref + r
  ref = jax.nn.relu(ref) if relu else ref
  call = lambda x, kernel, bias, r: onednn.conv(x, kernel, bias, (s, s), pads, relu, residual=r)
  out = jax.jit(call)(x, kernel, bias, r)
  assert out.dtype == jnp.float32 and 'custom_call' in jax.jit(call).lower(x, kernel, bias, r).as_text()
  np.testing.assert_allclose(out, ref, atol=1e-5 * float(jnp.abs(ref).max()))
  with pytest.raises(ValueError, match=r'onednn.conv: an int8 kernel .* takes an int8 x \(got float32\)'):
    onednn.conv(x.astype(jnp.float32), kernel, bias, (s, s), pads)


@INT8
def test_int8_forward_equals_its_xla_fallback(monkeypatch):
  """conv='onednn', dtype='int8' with calibration: every ungrouped conv an int8 oneDNN call (the rewrite's
  epilogues included), equal to the same quantised forward through XLA's int32 convs."""
  model, variables = _student(8)
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.uniform(-1, 1, (2, 112, 112, 3)), jnp.float32)
  calibration = rng.uniform(-1, 1, (8, 112, 112, 3)).astype(np.float32)
  fn = optimize_for_inference(model, variables, image_size=112, conv='onednn', dtype='int8', calibration=calibration)
  hlo = jax.jit(fn).lower(x).as_text()
  calls = [line for line in hlo.splitlines() if 'custom_call @facejax_onednn_conv(' in line]
  assert len(calls) == 17 and all('xi8>, tensor<' in line for line in calls)  # the student's 17 convs, all int8
  fast = jax.jit(fn)(x)
  monkeypatch.setattr(onednn, 'unavailable', lambda: 'a test')
  with pytest.warns(UserWarning, match="conv='onednn': a test; XLA runs those convolutions instead"):
    slow = optimize_for_inference(model, variables, image_size=112, conv='onednn', dtype='int8',
                                  calibration=calibration)
  assert 'custom_call' not in jax.jit(slow).lower(x).as_text()
  np.testing.assert_allclose(fast, jax.jit(slow)(x), atol=1e-5)
  ref = optimize_for_inference(model, variables, image_size=112)(x)
  assert float(jnp.min(jnp.sum(fast * ref, -1))) > 0.99


@pytest.mark.parametrize('flags', [['avx2', 'fma'], ['avx2', 'avx512f', 'avx512_bf16']])
def test_without_int8_dots_no_int8_conv_runs_in_onednn(monkeypatch, flags):
  """On a CPU without VNNI or AMX int8 (faked flags: Zen 3, and an AVX-512 CPU without VNNI), where oneDNN's int8
  sums saturate to int16: the int8 primitive runs XLA's exact int32 conv, `optimize_for_inference` keeps
  oneDNN's convs in float32 (and says so), and neither --dtype=auto nor compare_cpu offers the int8 oneDNN path."""
  from bench.cpu_comparison import OPT_VARIANTS, compare_model
  from facejax.inference.optimize.choose import candidate_paths
  monkeypatch.setattr(hardware, 'cpu_info', lambda: {'cpu': 'no VNNI', 'cpu_flags': flags})
  assert 'saturate' in onednn.int8_unavailable() and onednn.unavailable() is None
  b, h, w, c, f, k, s, pads, relu = CASES[1]
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.integers(-127, 128, (b, h, w, c)), jnp.int8)
  kernel = jnp.asarray(rng.integers(-127, 128, (k, k, c, f)), jnp.int8)
  bias = jnp.asarray(np.stack([rng.normal(size=f), rng.uniform(1e-4, 1e-3, f)]), jnp.float32)
  call = jax.jit(lambda x, kernel, bias: onednn.conv(x, kernel, bias, (s, s), pads, relu))
  assert 'custom_call' not in call.lower(x, kernel, bias).as_text()
  acc = lax.conv_general_dilated(x, kernel, (s, s), pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                 preferred_element_type=jnp.int32)
  ref = jax.nn.relu(acc.astype(jnp.float32) * bias[1] + bias[0])  # exact sums; the dequantization may use an FMA
  np.testing.assert_allclose(call(x, kernel, bias), ref, rtol=1e-6, atol=1e-6)

  model, variables = _student(8)
  x = jnp.asarray(rng.uniform(-1, 1, (2, 112, 112, 3)), jnp.float32)
  calibration = rng.uniform(-1, 1, (8, 112, 112, 3)).astype(np.float32)
  with pytest.warns(UserWarning, match="dtype='int8': this CPU has no int8 dot instructions .* oneDNN float32"):
    fn = optimize_for_inference(model, variables, image_size=112, conv='onednn', dtype='int8', calibration=calibration)
  calls = [line for line in jax.jit(fn).lower(x).as_text().splitlines() if 'custom_call @facejax_onednn_conv(' in line]
  assert len(calls) == 17 and not any('xi8>' in line for line in calls)  # every conv in oneDNN, none int8
  f32 = optimize_for_inference(model, variables, image_size=112, conv='onednn')
  np.testing.assert_allclose(jax.jit(fn)(x), jax.jit(f32)(x), atol=1e-6)

  paths = candidate_paths(flags, convs=('xla', 'onednn'), calibrated=True)
  assert 'int8/onednn' not in paths and paths['int8'] == ('int8', 'auto')
  assert 'int8' not in candidate_paths(flags, conv='onednn', calibrated=True)  # it would be float32/onednn again
  for vnni in ('avx512_vnni', 'avx_vnni', 'amx_int8'):
    assert candidate_paths(['avx2', vnni], convs=('onednn',), calibrated=True)['int8/onednn'] == ('int8', 'onednn')
  notes = []
  compare_model('student_vgg', [], ['jax_opt', 'jax_onednn_int8'], rounds=1, calls=1, embed_dim=16,
                opt_variants=OPT_VARIANTS, ort_int8=False, log=notes.append)
  assert any('jax_onednn_int8 left out: this CPU has no int8 dot instructions' in n.get('note', '') for n in notes)


def test_flop_count_is_unknown_not_zero_with_the_custom_call():
  """XLA's cost analysis cannot see the work inside the call: compiled_flops says None rather than undercount."""
  x, kernel, bias = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 6)), jnp.zeros(6)
  lowered = jax.jit(lambda x: onednn.conv(x, kernel, bias, (1, 1), ((1, 1), (1, 1)))).lower(x)
  assert compiled_flops(lowered) is None and compiled_flops(lowered.compile()) is None
  assert compiled_flops(jax.jit(lambda x: _xla(x, kernel, bias, (1, 1), ((1, 1), (1, 1)), False)).lower(x)) > 0


@pytest.mark.parametrize('residual', [False, True])
def test_prelu_post_op_equals_xla(residual):
  """The PReLU post-op (one slope, an operand) after the bias and the residual: where(y >= 0, y, slope * y)."""
  rng = np.random.default_rng(4)
  x, kernel, bias, r = (jnp.asarray(rng.normal(size=shape), jnp.float32)
                        for shape in ((2, 9, 9, 8), (3, 3, 8, 16), (16,), (2, 9, 9, 16)))
  r = r if residual else None
  call = jax.jit(lambda x, slope: onednn.conv(x, kernel, bias, (1, 1), ((1, 1), (1, 1)), residual=r, prelu=slope))
  for slope in (0.25, -1.5):  # one executable, the slope an operand
    y = _xla(x, kernel, bias, (1, 1), ((1, 1), (1, 1)), False, r)
    np.testing.assert_allclose(call(x, slope), jnp.where(y >= 0, y, slope * y), atol=1e-5 * float(jnp.abs(y).max()))
  with pytest.raises(ValueError, match='relu=True and a prelu slope: one activation at most'):
    onednn.conv(x, kernel, bias, (1, 1), ((1, 1), (1, 1)), relu=True, prelu=0.25)


def test_residual_of_another_shape_is_refused():
  x, kernel, bias = jnp.zeros((1, 8, 8, 4)), jnp.zeros((3, 3, 4, 6)), jnp.zeros(6)
  with pytest.raises(ValueError, match=r'residual of shape \(1, 8, 8, 4\), expected the output shape \(1, 8, 8, 6\)'):
    onednn.conv(x, kernel, bias, (1, 1), ((1, 1), (1, 1)), residual=x)


def test_new_kernel_at_a_reused_address_is_reordered_again():
  """oneDNN's blocked copy of a kernel is cached by address; freed buffers' addresses come back (checked below),
  so the cache must notice the new contents."""
  rng = np.random.default_rng(0)
  x, bias = jnp.asarray(rng.normal(size=(1, 9, 9, 16)), jnp.float32), jnp.zeros(16)
  step = jax.jit(lambda x, kernel: onednn.conv(x, kernel, bias, (1, 1), ((1, 1), (1, 1))))
  addresses = []
  for _ in range(8):
    kernel = jax.device_put(rng.normal(size=(3, 3, 16, 16)).astype(np.float32))
    addresses.append(kernel.unsafe_buffer_pointer())
    np.testing.assert_allclose(step(x, kernel), _xla(x, kernel, bias, (1, 1), ((1, 1), (1, 1)), False), atol=1e-4)
    kernel.delete()
  assert len(set(addresses)) < len(addresses), 'no address was reused: this test no longer tests the cache'


def _student(seed):
  model = build_model('dlib_student', num_classes=0, embed_dim=16)
  return model, random_variables(model, 112, seed=seed)


def test_student_forward_equals_xla_and_each_kernel_is_its_own():
  """The whole student through oneDNN equals XLA's convs; a second set of weights through the same executable
  (weights as arguments, so oneDNN sees new kernels, possibly at reused addresses) gets its own answer."""
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 112, 112, 3)), jnp.float32)
  model, first = _student(1)
  _, second = _student(2)
  fn = optimize_for_inference(model, first, image_size=112, conv='onednn', weights='args')
  assert 'custom_call' in jax.jit(fn.forward).lower(fn.params, x).as_text()
  step = jax.jit(fn.forward)
  other = optimize_for_inference(model, second, image_size=112, conv='onednn', weights='args').params
  for params, variables in ((fn.params, first), (other, second), (fn.params, first)):
    ref = optimize_for_inference(model, variables, image_size=112, conv='xla')(x)
    np.testing.assert_allclose(step(params, x), ref, atol=1e-5)
  constant = jax.jit(optimize_for_inference(model, second, image_size=112, conv='onednn'))
  np.testing.assert_allclose(constant(x), optimize_for_inference(model, second, image_size=112, conv='xla')(x),
                             atol=1e-5)


def test_every_mobilefacenet_conv_depthwise_included_is_a_onednn_call():
  """MobileFaceNet: its plain, depthwise and global depthwise convs are all oneDNN calls (no native convolution
  left), each of its 33 PReLUs is a call's post-op, and it equals conv='xla'."""
  model = build_model('mobilefacenet', num_classes=0, embed_dim=16)
  variables = random_variables(model, 112, seed=5)
  fn = optimize_for_inference(model, variables, image_size=112, conv='onednn')
  kernels = [p['kernel'] for p in fn.params['layers'].values() if getattr(p['kernel'], 'ndim', 0) == 4]
  assert 0 < sum(k.shape[2] == 1 for k in kernels) < len(kernels)  # both kinds are there
  x = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (2, 112, 112, 3)), jnp.float32)
  hlo = jax.jit(fn).lower(x).as_text()
  assert hlo.count('custom_call @facejax_onednn_conv') == len(kernels) and 'stablehlo.convolution' not in hlo
  eqns = jax.make_jaxpr(fn)(x).jaxpr.eqns
  assert [onednn.call_options(e.params['attributes'])['prelu'] for e in eqns if e.primitive.name == 'ffi_call'].count(
      True) == 33 and 'select_n' not in {e.primitive.name for e in eqns}
  np.testing.assert_allclose(jax.jit(fn)(x), optimize_for_inference(model, variables, image_size=112, conv='xla')(x),
                             atol=1e-5)


def test_fallback_is_xla_and_says_why(monkeypatch):
  model, variables = _student(3)
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (1, 112, 112, 3)), jnp.float32)
  fast = jax.jit(optimize_for_inference(model, variables, image_size=112, conv='onednn'))(x)
  monkeypatch.setattr(onednn, 'unavailable', lambda: '/x/onednn_conv.so is not built')
  with pytest.warns(UserWarning, match=r"conv='onednn': /x/onednn_conv.so is not built; XLA runs"):
    fn = optimize_for_inference(model, variables, image_size=112, conv='onednn')
  assert 'custom_call' not in jax.jit(fn).lower(x).as_text()
  np.testing.assert_allclose(jax.jit(fn)(x), fast, atol=1e-5)


def test_onednn_refuses_int8_and_bf16_without_bf16_dots(monkeypatch):
  model, variables = _student(4)
  with pytest.raises(ValueError, match=r"conv='onednn' with dtype='int8' needs static activation scales .*: pass "
                                       r"calibration faces \(launch.export --calibration=N\)"):
    optimize_for_inference(model, variables, image_size=112, conv='onednn', dtype='int8')
  with pytest.raises(ValueError, match=r'onednn.conv: dtype=float16, expected float32 or bfloat16'):
    onednn.conv(jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 1, 2, 2)), jnp.zeros(2), (1, 1), ((0, 0), (0, 0)),
                dtype=jnp.float16)
  monkeypatch.setattr(hardware, 'cpu_info', lambda: {'cpu': 'an AVX2 CPU', 'cpu_flags': ['avx2']})
  with pytest.raises(ValueError, match=r"conv='onednn' with dtype='bfloat16': this CPU has neither avx512_bf16 nor "
                                       r"amx_bf16, so oneDNN has no bf16 convolution for it; use dtype='float32'"):
    optimize_for_inference(model, variables, image_size=112, conv='onednn', dtype='bfloat16')


def test_export_carries_the_custom_call_and_the_loader_asks_for_it(tmp_path, monkeypatch):
  """A batch-polymorphic .jaxexport with the oneDNN convs equals XLA's export; its sidecar names the custom call,
  and a process without it gets an error saying what to do instead of XLA's unregistered-target failure."""
  model, variables = _student(6)
  images = np.random.default_rng(2).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
  out = {}
  for conv in ('onednn', 'xla'):
    meta = {}
    exported = export_embedder(model, variables, FACEJAX, 112, optimize={'conv': conv}, metadata=meta)
    assert meta['custom_calls'] == (['facejax_onednn_conv'] if conv == 'onednn' else [])
    save_exported(exported, str(tmp_path / f'{conv}.jaxexport'), meta)
    loaded = load_exported(str(tmp_path / f'{conv}.jaxexport'))
    out[conv] = (loaded(images), loaded(images[:1]))
  np.testing.assert_allclose(out['onednn'][0], out['xla'][0], atol=1e-5)
  np.testing.assert_allclose(out['onednn'][1], out['xla'][0][:1], atol=1e-5)
  np.save(tmp_path / 'images.npy', images)
  fresh = subprocess.run([sys.executable, '-c', (  # a serving process: the loader registers the custom call
      'import sys, numpy as np\nfrom facejax.inference.export import load_exported\n'
      'np.save(sys.argv[2], load_exported(sys.argv[1])(np.load(sys.argv[3])))'),
      str(tmp_path / 'onednn.jaxexport'), str(tmp_path / 'fresh.npy'), str(tmp_path / 'images.npy')],
      capture_output=True, text=True, cwd=REPO)
  assert fresh.returncode == 0, fresh.stderr[-2000:]
  np.testing.assert_allclose(np.load(tmp_path / 'fresh.npy'), out['xla'][0], atol=1e-5)
  monkeypatch.setattr(onednn, 'unavailable', lambda: '/x/onednn_conv.so is not built')
  with pytest.raises(RuntimeError, match=r'onednn.jaxexport: exported with conv=onednn, .* not available here: '
                                         r'/x/onednn_conv.so is not built; build it \(make venv\) or re-export'):
    load_exported(str(tmp_path / 'onednn.jaxexport'))
  load_exported(str(tmp_path / 'xla.jaxexport'))  # no custom call: nothing asked
