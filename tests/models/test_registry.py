"""Every registry model builds at its input sizes (shapes via jax.eval_shape: no compute), a few small ones run
for real, and the teachers have the reference parameter counts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facejax.models import MODELS, build_backbone, build_classifier, build_model, count_params, default_image_size
from facejax.models.resnet import ResNet50

STUDENTS = ('student_vgg', 'mobilefacenet', 'resnet18', 'resnet18_w050')
STUDENT_SIZES = (112, 96)  # aligned-face crops the students must take besides their default


def cases():
  for name in MODELS:
    for size in sorted({default_image_size(name)} | (set(STUDENT_SIZES) if name in STUDENTS else set())):
      yield name, size


def abstract_init(model, size, batch=1, **kw):
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False, **kw), x)


@pytest.mark.parametrize('name,size', list(cases()))
def test_builds_at_input_size(name, size):
  model = build_model(name, num_classes=5, embed_dim=16)
  variables = abstract_init(model, size)
  assert set(variables['params']) == {'backbone', 'embedding', 'classifier'}
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, method='forward'), variables, x)
  assert out['logits'].shape == (2, 5) and out['embedding'].shape == (2, 16)
  assert out['embedding'].dtype == jnp.float32


def params_of(name, size=None, **kw):
  return count_params(abstract_init(build_classifier(name, 1000, **kw), size or default_image_size(name))['params'])


def test_teacher_param_counts():
  assert params_of('vgg16') == 138_357_544  # torchvision / Keras VGG16 with the ImageNet head
  assert params_of('resnet50') == 25_557_032  # torchvision resnet50
  assert params_of('resnet50_keras') == 25_583_592  # Keras ResNet50 trainable (+53,120 BN moving stats)
  vgg16_convs = count_params(abstract_init(build_backbone('vgg16_gap'), 224)['params'])
  assert vgg16_convs == 14_714_688  # Keras VGG16(include_top=False)


def test_student_sizes():
  backbone = lambda n: count_params(abstract_init(build_backbone(n), default_image_size(n))['params'])
  assert 9 * backbone('student_vgg') <= backbone('vgg16')
  assert 0.8e6 <= backbone('mobilefacenet') <= 1.3e6  # ~1M at 112x112
  assert 2 * backbone('resnet18_w050') <= backbone('resnet18')


# ResNets run for real in test_convert (resnet18/resnet50 against torch); these are the other two families.
@pytest.mark.parametrize('name,size', [('student_vgg', 48), ('mobilefacenet', 96)])
def test_student_runs(name, size):
  model = build_model(name, num_classes=4, embed_dim=8)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, size, size, 3), minval=-1, maxval=1)

  @jax.jit  # one compile: init, a train-mode step and the eval embedding
  def run(x):
    # 'rbg' keys compile several times faster than threefry on CPU; the init distribution is the same.
    variables = model.init(jax.random.key(0, impl='rbg'), x, train=False)
    out, updates = model.apply(variables, x, train=True, method='forward', mutable=['batch_stats'],
                               rngs={'dropout': jax.random.key(2, impl='rbg')})
    changed = jax.tree.map(lambda a, b: jnp.any(a != b), updates['batch_stats'], variables['batch_stats'])
    return out, jnp.any(jnp.stack(jax.tree.leaves(changed))), model.apply(variables, x, method='embed')

  out, changed, emb = run(x)
  assert np.all(np.isfinite(out['logits'])) and out['logits'].shape == (2, 4)
  np.testing.assert_allclose(np.linalg.norm(out['embedding'], axis=-1), 1.0, rtol=1e-5)
  assert changed, 'train mode must update BatchNorm statistics'
  assert emb.shape == (2, 8) and np.all(np.isfinite(emb))
  np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)


def test_embedding_only_model():
  model = build_model('resnet18_w050', num_classes=0, embed_dim=32)
  variables = abstract_init(model, 96, method='forward')
  assert set(variables['params']) == {'backbone', 'embedding'}
  out = jax.eval_shape(lambda v, x: model.apply(v, x, method='forward'), variables,
                       jax.ShapeDtypeStruct((3, 96, 96, 3), jnp.float32))
  assert 'logits' not in out and out['embedding'].shape == (3, 32)


@pytest.mark.parametrize('hw,use_bias', [((32, 32), False), ((33, 30), True), ((31, 35), False)])
def test_space_to_depth_stem_matches_the_7x7_conv(hw, use_bias):
  """SpaceToDepthStem: nn.Conv's parameter tree and init, its outputs and kernel gradients, on odd and even sides."""
  import flax.linen as nn

  from facejax.models.common import pad
  from facejax.models.resnet import SpaceToDepthStem
  conv, s2d = nn.Conv(8, (7, 7), (2, 2), padding=pad(7), use_bias=use_bias), SpaceToDepthStem(8, use_bias)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2,) + hw + (3,))
  variables = conv.init(jax.random.PRNGKey(1), x)
  jax.tree_util.tree_map(np.testing.assert_array_equal, s2d.init(jax.random.PRNGKey(1), x), variables)
  if use_bias:
    variables = jax.tree_util.tree_map(lambda v: v + 0.5, variables)
  want, got = conv.apply(variables, x), s2d.apply(variables, x)
  assert got.shape == want.shape == (2, (hw[0] + 1) // 2, (hw[1] + 1) // 2, 8)
  np.testing.assert_allclose(got, want, atol=1e-5)
  grad = lambda m: jax.grad(lambda v: jnp.sum(jnp.sin(m.apply(v, x))))(variables)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), grad(s2d), grad(conv))


def test_resnet50_space_to_depth_stem_same_network():
  """ResNet50(stem_space_to_depth=True) reads the same checkpoints and computes the same features, also in bf16."""
  plain, s2d = ResNet50(width=0.0625), ResNet50(width=0.0625, stem_space_to_depth=True)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 40, 40, 3))
  variables = plain.init(jax.random.PRNGKey(1), x)
  np.testing.assert_allclose(s2d.apply(variables, x), plain.apply(variables, x), atol=1e-5)
  bf16 = [ResNet50(width=0.0625, dtype=jnp.bfloat16, stem_space_to_depth=s) for s in (False, True)]
  a, b = (np.asarray(m.apply(variables, x), np.float32) for m in bf16)
  assert np.abs(a - b).max() <= 0.02 * np.abs(a).max()
