"""The cosine head and ArcFace's additive angular margin (facejax.models.heads, facejax.losses.arcface_logits)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from facejax import losses
from facejax.models import build_model
from facejax.runs import load_run
from facejax.train import train
from tests.configs.tiny import get_config


def test_arcface_logits_widen_the_target_angle_only():
  rng = np.random.default_rng(0)
  cos = rng.uniform(-1, 1, (64, 7)).astype(np.float32)
  cos[:4, 0] = [-0.99, -0.95, 0.999, 0.0]  # both sides of the fallback point cos(pi - m)
  labels = np.r_[[0, 0, 0, 0], rng.integers(0, 7, 60)]
  scale, margin = 30.0, 0.5
  out = np.asarray(losses.arcface_logits(jnp.asarray(scale * cos), jnp.asarray(labels), scale, margin)) / scale
  target = cos[np.arange(64), labels]
  want = np.where(target > np.cos(np.pi - margin), np.cos(np.arccos(target) + margin), target - margin * np.sin(margin))
  np.testing.assert_allclose(out[np.arange(64), labels], want, atol=2e-6)
  others = np.ones_like(cos, bool)
  others[np.arange(64), labels] = False
  np.testing.assert_allclose(out[others], cos[others], atol=1e-6)  # x scale / scale round-off only
  assert np.all(out[np.arange(64), labels] < target)  # the margin always costs the target


def test_cosine_classifier_logits_are_scaled_cosines_of_normalised_rows():
  model = build_model('student_vgg', num_classes=5, embed_dim=8, classifier='cosine', cosine_scale=16.0, width=0.25)
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (3, 16, 16, 3)), jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x)
  out = model.apply(variables, x, method='forward')
  w = np.asarray(variables['params']['classifier']['kernel'])
  e = np.asarray(out['raw_embedding'])
  want = 16.0 * (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))
  np.testing.assert_allclose(out['logits'], want, atol=1e-4)
  assert 'bias' not in variables['params']['classifier']
  with pytest.raises(ValueError, match=r"classifier='arc': expected one of \('softmax', 'cosine'\)"):
    build_model('student_vgg', num_classes=5, classifier='arc').init(jax.random.PRNGKey(0), x)


def test_arcface_run_trains_records_its_classifier_and_needs_a_cosine_one(tmp_path):
  config = get_config('classify')
  config.model.classifier, config.model.cosine_scale, config.classify.margin = 'cosine', 16.0, 0.3
  config.total_steps = 4
  metrics = train(config, str(tmp_path / 'arc'))
  assert np.isfinite(metrics['loss'])
  model, variables, info = load_run(str(tmp_path / 'arc'))
  assert (info['classifier'], info['cosine_scale'], model.classifier_kind, model.cosine_scale) == ('cosine', 16.0, 'cosine',
                                                                                                16.0)
  config.model.classifier = 'softmax'
  with pytest.raises(ValueError, match=r"config.classify.margin=0.3 \(ArcFace\) needs config.model.classifier='cosine'"):
    train(config, str(tmp_path / 'softmax'))
