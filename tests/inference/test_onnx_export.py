"""facejax.inference.onnx_export: registry nets exported with jax2onnx run in ONNX Runtime with the embeddings
facejax computes (random weights and BatchNorm statistics; real faces: tests/launch/test_evaluate_embed_verify_dlib)."""
import json

import jax
import numpy as np
import pytest

pytest.importorskip('jax2onnx')
pytest.importorskip('onnxruntime')

from facejax.inference.benchmark import random_variables  # noqa: E402
from facejax.inference.export import embedding_function  # noqa: E402
from facejax.inference.onnx_export import OnnxEmbedder, export_onnx, onnx_session  # noqa: E402
from facejax.models import build_model, default_image_size  # noqa: E402
from facejax.models.preprocessing import FACEJAX  # noqa: E402


@pytest.mark.parametrize('name, optimize, flip', [('student_vgg', True, 'sum'), ('mobilefacenet', False, None)])
def test_onnx_runtime_reproduces_the_embedding_function(name, optimize, flip, tmp_path):
  size = default_image_size(name)
  model = build_model(name, num_classes=0)
  variables = random_variables(model, size)
  fn, _ = embedding_function(model, variables, FACEJAX, size, flip=flip, optimize=optimize)
  path = str(tmp_path / f'{name}.onnx')
  info = export_onnx(fn, size, path, {'model': name})
  with open(path + '.json') as f:
    assert json.load(f) == info
  assert info['output']['shape'] == [None, 128] and info['model'] == name
  images = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
  embedder = OnnxEmbedder(path)
  assert (embedder.image_size, embedder.embed_dim) == (size, 128)
  want = np.asarray(jax.jit(fn)(images))
  for b in (1, 3):  # the batch dimension is dynamic
    np.testing.assert_allclose(embedder(images[:b]), want[:b], atol=2e-5)
  np.testing.assert_allclose(embedder(images[0]), want[:1], atol=2e-5)  # one image: a batch of 1
  with pytest.raises(ValueError, match=rf'images: expected uint8 \[B, {size}, {size}, 3\], got float32'):
    embedder(images.astype(np.float32))


def test_missing_model_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'nope.onnx: no such ONNX model \(write one with python -m '
                                              r'launch.export --format=onnx\)'):
    onnx_session(str(tmp_path / 'nope.onnx'))
