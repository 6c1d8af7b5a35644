"""jaxpr_flops against XLA's own count of the same function (CPU).

The reference is the cost analysis of the *lowered* (unoptimized) HLO: jit turns each conv_general_dilated and
dot_general equation into one HLO convolution/dot with the same window and dimension numbers (after dropping
equations whose outputs are unused), so for functions made only of convs, dots and data movement XLA's number is
exactly the one HloCostAnalysis gives those ops. The compiled (optimized) count agrees for plain convs, but XLA:CPU
rewrites some of them before counting: the batch_group_count weight gradient of a depthwise conv is expanded into a
larger conv plus elementwise ops (611064 FLOPs against 135424 for a [2, 16, 16, 8] input), so it is not a clean
reference. Gradients are taken with jax.vjp and a given cotangent, so the only ops are the transposed convs
(jax.grad of a sum(y * c) would add the multiply and the reduction to XLA's count). XLA keeps its counts as
float32, hence rel=1e-6.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from facejax.inference.flops import compiled_flops, jaxpr_flops
from facejax.models import build_classifier, build_model

NHWC = ('NHWC', 'HWIO', 'NHWC')


def xla_flops(f, *args) -> float:
  """HloCostAnalysis FLOPs of f's unoptimized HLO (jit lowered, not compiled)."""
  flops = compiled_flops(jax.jit(f).lower(*args))
  if flops is None:
    pytest.skip('this jax/backend gives no cost analysis for a lowered function')
  return flops


def normal(*shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def conv(**kwargs):
  return lambda x, w: lax.conv_general_dilated(x, w, dimension_numbers=NHWC, **kwargs)


def conv_vjp(f):
  """(x, w, cotangent) -> (dx, dw): the backward convs only."""
  def grads(x, w, ct):
    _, vjp = jax.vjp(f, x, w)
    return vjp(ct)
  return grads


X = normal(2, 15, 15, 8)  # odd size: SAME and strided windows hit the padding unevenly
CONVS = {
    '3x3_s1_same': (conv(window_strides=(1, 1), padding='SAME'), (3, 3, 8, 16)),
    '7x7_s2_pad3': (conv(window_strides=(2, 2), padding=((3, 3), (3, 3))), (7, 7, 8, 16)),  # ResNet stem
    '1x1_s2': (conv(window_strides=(2, 2), padding='VALID'), (1, 1, 8, 16)),  # ResNet downsample shortcut
    'dilated_3x3': (conv(window_strides=(1, 1), padding='SAME', rhs_dilation=(2, 2)), (3, 3, 8, 16)),
    'grouped_4': (conv(window_strides=(1, 1), padding='SAME', feature_group_count=4), (3, 3, 2, 16)),
    'depthwise': (conv(window_strides=(2, 2), padding='SAME', feature_group_count=8), (3, 3, 1, 8)),
}


@pytest.mark.parametrize('name', sorted(CONVS))
def test_conv_forward_matches_xla(name):
  f, w_shape = CONVS[name]
  w = normal(*w_shape, seed=1)
  assert jaxpr_flops(f, X, w) == pytest.approx(xla_flops(f, X, w), rel=1e-6)


@pytest.mark.parametrize('name', sorted(CONVS))
def test_conv_gradient_matches_xla(name):
  # dx: lhs-dilated conv for strided forwards; dw: a conv with the image as kernel, batch_group_count = groups.
  f, w_shape = CONVS[name]
  w = normal(*w_shape, seed=1)
  ct = normal(*jax.eval_shape(f, X, w).shape, seed=2)
  counted = jaxpr_flops(conv_vjp(f), X, w, ct)
  assert counted == pytest.approx(xla_flops(conv_vjp(f), X, w, ct), rel=1e-6)
  assert counted == pytest.approx(2 * jaxpr_flops(f, X, w), rel=0.5)  # sanity: backward ~ 2x forward


def test_shape_dtype_structs_and_einsum_batch_dims():
  a, b = normal(3, 5, 6), normal(3, 6, 7)
  f = lambda a, b: jnp.einsum('bij,bjk->bik', a, b)
  abstract = [jax.ShapeDtypeStruct(t.shape, t.dtype) for t in (a, b)]
  assert jaxpr_flops(f, *abstract) == xla_flops(f, a, b) == 2 * 3 * 5 * 6 * 7


def test_scan_counts_body_times_length():
  # XLA lowers scan to a while loop and counts its body once; the jaxpr knows the trip count.
  x, ws = normal(4, 8), normal(5, 8, 8)
  f = lambda x, ws: lax.scan(lambda c, w: (c @ w, None), x, ws)[0]
  assert jaxpr_flops(f, x, ws) == 5 * xla_flops(lambda x, w: x @ w, x, ws[0])


def test_cond_counts_the_most_expensive_branch():
  x, w = normal(4, 8), normal(8, 8)
  f = lambda p, x, w: lax.cond(p, lambda: x @ w, lambda: (x @ w) @ w)
  counted = jaxpr_flops(f, True, x, w)
  assert counted == 2 * (2 * 4 * 8 * 8)
  assert counted <= xla_flops(f, True, x, w) <= counted + 1  # XLA adds 1 for converting the predicate to an index


def test_checkpoint_and_custom_vjp():
  x, w1, w2, ct = normal(4, 8), normal(8, 16), normal(16, 8), normal(4, 8)
  forward = lambda x, w1, w2: (x @ w1) @ w2

  @jax.custom_vjp
  def custom(x, w1, w2):
    return forward(x, w1, w2)

  def custom_fwd(x, w1, w2):
    h = x @ w1
    return h @ w2, (x, w1, w2, h)

  def custom_bwd(res, g):
    x, w1, w2, h = res
    g_h = g @ w2.T
    return g_h @ w1.T, x.T @ g_h, h.T @ g

  custom.defvjp(custom_fwd, custom_bwd)

  def value_and_grads(f):  # distinct weights: no add_any of two cotangents, so XLA counts only the matmuls
    def run(x, w1, w2, ct):
      y, vjp = jax.vjp(f, x, w1, w2)
      return y, vjp(ct)
    return run

  matmul = 2 * 4 * 8 * 16  # every matmul here: two of (4, 8, 16) as output dims, the third contracted
  # Forward 2 matmuls, backward 4; remat recomputes x @ w1 in the backward (hardware FLOPs, as XLA counts them).
  for f, matmuls in ((forward, 6), (jax.checkpoint(forward), 7), (custom, 6)):
    assert jaxpr_flops(f, x, w1, w2) == xla_flops(f, x, w1, w2) == 2 * matmul
    counted = jaxpr_flops(value_and_grads(f), x, w1, w2, ct)
    assert counted == xla_flops(value_and_grads(f), x, w1, w2, ct) == matmuls * matmul


def test_unused_outputs_are_not_counted():
  x, w = normal(4, 8), normal(8, 8)
  assert jaxpr_flops(lambda x, w: (x @ w, x @ w @ w)[0], x, w) == 2 * 4 * 8 * 8


def test_psum_traced_with_axis_env():
  x, w = normal(4, 8), normal(8, 8)
  f = lambda x, w: lax.psum(x @ w, 'batch')
  with pytest.raises(NameError):
    jaxpr_flops(f, x, w)
  assert jaxpr_flops(f, x, w, axis_env=[('batch', 2)]) == xla_flops(lambda x, w: x @ w, x, w)


def test_small_resnet_forward_close_to_xla():
  model = build_model('resnet18', num_classes=10, embed_dim=16, width=0.25)
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
  f = lambda v, x: model.apply(v, x)
  counted, xla = jaxpr_flops(f, variables, x), xla_flops(f, variables, x)
  assert 0.9 * xla < counted <= xla  # XLA also counts BN, ReLU, pooling, the residual adds


def test_resnet50_forward_is_8_2_gflops():
  model = build_classifier('resnet50', 1000)
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
  flops = jaxpr_flops(lambda v, x: model.apply(v, x), variables, x)
  # 7.90e9: the usual 4.09 GMACs (8.18e9) count the taps on zero padding, which XLA (and so this) does not.
  assert flops == pytest.approx(2 * 4.09e9, rel=0.05)


def test_model_zoo_row():
  from facejax.inference.benchmark import zoo_markdown, zoo_row
  row = zoo_row('resnet18_w050', embed_dim=128)
  assert row['image_size'] == 112 and row['features'] == 256 and row['params_backbone'] == 2_798_880
  assert 0.1 < row['gflops'] < 1.0
  assert '| resnet18_w050 | 112 | 256 | 2,798,880 |' in zoo_markdown([row])
