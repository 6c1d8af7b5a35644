"""The jaxpr rewrite of the optimized forward (facejax.inference.optimize.rewrite): oneDNN epilogue fusion and max
pooling as strided slices, each against the forward as traced."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facejax.inference import hardware
from facejax.inference.benchmark import random_variables
from facejax.inference.optimize import onednn, optimize_for_inference
from facejax.inference.optimize.rewrite import rewrite_forward
from facejax.models import build_model


BF16 = pytest.mark.skipif(not hardware.has_bf16_dots(hardware.cpu_info().get('cpu_flags')),
                          reason='this CPU has neither avx512_bf16 nor amx_bf16: oneDNN has no bf16 convolution here')


@pytest.fixture(scope='module', autouse=True)
def built():
  assert onednn.unavailable() is None, f'the project install builds the oneDNN custom call: {onednn.unavailable()}'


def _calls(fn, *args):
  """[(number of operands, relu attribute)] of the oneDNN calls in fn's jaxpr; the names of its other ops."""
  eqns = jax.make_jaxpr(fn)(*args).jaxpr.eqns
  calls = [(len(e.invars), int(dict(e.params['attributes'])['relu'])) for e in eqns
           if e.primitive.name == 'ffi_call']
  return calls, {e.primitive.name for e in eqns}


def test_epilogues_fuse_and_values_match():
  rng = np.random.default_rng(0)
  k = jnp.asarray(rng.normal(size=(3, 3, 8, 8)) * 0.2, jnp.float32)
  b = jnp.asarray(rng.normal(size=8), jnp.float32)
  conv = lambda x: onednn.conv(x, k, b, (1, 1), ((1, 1), (1, 1)))

  def f(x):
    a = nn.relu(x + conv(x))          # residual + ReLU, the residual on the left of the add
    c = jnp.maximum(conv(a), 0.0)     # ReLU written as max(y, 0)
    d = conv(c) + c                   # residual, no ReLU
    e = conv(d)                       # used twice: stays a plain call, the add and ReLU stay XLA's
    return nn.relu(e + d) + e

  x = jnp.asarray(rng.normal(size=(2, 9, 9, 8)), jnp.float32)
  calls, ops = _calls(f, x)
  assert calls == [(3, 0)] * 4 and 'custom_jvp_call' in ops
  calls, ops = _calls(rewrite_forward(f), x)
  assert sorted(calls) == [(3, 0), (3, 1), (4, 0), (4, 1)]
  assert 'custom_jvp_call' in ops and 'max' not in ops  # the one ReLU left is the doubly-used conv's
  np.testing.assert_allclose(jax.jit(rewrite_forward(f))(x), jax.jit(f)(x), atol=1e-5)


@pytest.mark.parametrize('dtype', ['float32', pytest.param('bfloat16', marks=BF16)])
def test_prelu_fuses_and_values_match(dtype):
  """flax's nn.PReLU after a oneDNN conv (where(y >= 0, y, slope * y)) becomes the call's PReLU post-op, with the
  slope as an operand; a PReLU whose input is not a single-use conv output stays as traced."""
  rng = np.random.default_rng(3)
  k = jnp.asarray(rng.normal(size=(3, 3, 8, 8)) * 0.2, dtype)
  b = jnp.asarray(rng.normal(size=8), jnp.float32)
  prelu = lambda h: nn.PReLU(param_dtype=jnp.float32).apply({'params': {'negative_slope': jnp.float32(0.3)}}, h)
  conv = lambda h: onednn.conv(h, k, b, (1, 1), ((1, 1), (1, 1)), dtype=dtype)

  def f(x):
    y = prelu(conv(x))
    z = conv(y)
    return prelu(z) + prelu(z + y)  # z is used twice: stays a plain call

  x = jnp.asarray(rng.normal(size=(2, 9, 9, 8)), dtype)
  calls, ops = _calls(rewrite_forward(f), x)
  assert sorted(calls) == [(3, 0), (4, 2)] and 'ge' in ops  # the two PReLUs on z stay XLA's
  out, ref = (np.asarray(jax.jit(g)(x), np.float32) for g in (rewrite_forward(f), f))
  # float32: equal; bfloat16: the slope multiplies before the one rounding, not after it (one bf16 step), and
  # the second conv and the adds carry that step on
  np.testing.assert_allclose(out, ref, atol=1e-5 if dtype == 'float32' else 2 ** -6 * float(np.abs(ref).max()))


@pytest.mark.parametrize('window, strides, padding', [((3, 3), (2, 2), ((1, 1), (1, 1))), ((3, 3), (2, 2), 'VALID'),
                                                      ((2, 2), (2, 2), 'VALID'), ((3, 2), (1, 2), ((0, 1), (2, 0)))])
def test_max_pool_is_strided_slices_and_exact(window, strides, padding):
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 11, 10, 5)), jnp.float32)
  pool = lambda x: nn.max_pool(x, window, strides, padding)
  assert 'reduce_window_max' in _calls(pool, x)[1]
  assert 'reduce_window_max' not in _calls(rewrite_forward(pool), x)[1]
  np.testing.assert_array_equal(jax.jit(rewrite_forward(pool))(x), pool(x))


@pytest.mark.parametrize('dtype', ['float32', pytest.param('bfloat16', marks=BF16)])
def test_student_forward_fuses_every_epilogue(dtype):
  """dlib_student with every conv in oneDNN: 15 of its 17 convs take their ReLU as a post-op, 6 of them also
  their block's residual add (the other two convs end the downsampling blocks, where dlib's pad_add pads their
  output before the add), its max pool is slices, and it equals conv='xla' (float32: to 1e-5; bfloat16, where
  the calls pass bf16 activations on: a cosine of 0.99 per embedding to float32's)."""
  model = build_model('dlib_student', num_classes=0, embed_dim=16)
  variables = random_variables(model, 112, seed=4)
  x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (2, 112, 112, 3)), jnp.float32)
  fn = optimize_for_inference(model, variables, image_size=112, conv='onednn', dtype=dtype)
  calls, ops = _calls(fn, x)
  out = jax.jit(fn)(x)
  assert len(calls) == 17 and sum(relu for _, relu in calls) == 15 and sum(n == 4 for n, _ in calls) == 6
  assert 'reduce_window_max' not in ops
  outs = {e.outvars[0].aval.dtype for e in jax.make_jaxpr(fn)(x).jaxpr.eqns if e.primitive.name == 'ffi_call'}
  assert outs == {jnp.dtype(dtype)} and out.dtype == jnp.float32
  ref = optimize_for_inference(model, variables, image_size=112, conv='xla')(x)
  if dtype == 'float32':
    np.testing.assert_allclose(out, ref, atol=1e-5)
  else:
    assert np.min(np.sum(np.asarray(out) * np.asarray(ref), axis=1)) > 0.99
