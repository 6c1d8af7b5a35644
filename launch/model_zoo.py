"""Every registry model with its parameter counts and GFLOPs at its input size, as markdown or JSON.

  python -m launch.model_zoo                        # markdown table
  python -m launch.model_zoo --format=json --json_out=runs/zoo.json --models=resnet50,mobilefacenet

GFLOPs come from XLA's cost analysis of the compiled batch-1 backbone forward (a multiply-add counts 2).
"""
import json

import jax
import jax.numpy as jnp
from absl import app, flags

from facejax.models import MODELS, build_backbone, build_classifier, build_model, count_params, default_image_size

flags.DEFINE_list('models', None, 'Registry names (default: all).')
flags.DEFINE_enum('format', 'markdown', ['markdown', 'json'], 'What to print.')
flags.DEFINE_string('json_out', None, 'Also write the JSON rows here.')
flags.DEFINE_integer('embed_dim', 128, 'Embedding size of the face model whose params are listed.')
FLAGS = flags.FLAGS


def _abstract_variables(model, size, **kw):
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False, **kw), x), x


def compiled_gflops(model, variables, x) -> float:
  """FLOPs of `model.apply(variables, x)` from XLA's cost analysis of the compiled executable, in 1e9."""
  compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', float('nan'))) / 1e9


def zoo_row(name: str, embed_dim: int = 128) -> dict:
  size = default_image_size(name)
  backbone = build_backbone(name)
  bvars, x = _abstract_variables(backbone, size)
  features = jax.eval_shape(lambda v, x: backbone.apply(v, x, train=False), bvars, x).shape[-1]
  imagenet, _ = _abstract_variables(build_classifier(name, 1000), size)
  face, _ = _abstract_variables(build_model(name, num_classes=0, embed_dim=embed_dim), size, method='forward')
  return {'model': name, 'image_size': size, 'features': int(features),
          'params_backbone': count_params(bvars['params']), 'params_imagenet_head': count_params(imagenet['params']),
          f'params_face_d{embed_dim}': count_params(face['params']),
          'gflops': round(compiled_gflops(backbone, bvars, x), 3),
          'doc': MODELS[name].doc}


def markdown(rows: list[dict]) -> str:
  keys = [k for k in rows[0] if k != 'doc'] + ['doc']
  fmt = lambda v: f'{v:,}' if isinstance(v, int) else str(v)
  lines = ['| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)]
  return '\n'.join(lines + ['| ' + ' | '.join(fmt(r[k]) for k in keys) + ' |' for r in rows])


def main(argv):
  del argv
  rows = [zoo_row(n, FLAGS.embed_dim) for n in (FLAGS.models or list(MODELS))]
  print(json.dumps(rows, indent=1) if FLAGS.format == 'json' else markdown(rows))
  if FLAGS.json_out:
    with open(FLAGS.json_out, 'w') as f:
      json.dump(rows, f, indent=1)


if __name__ == '__main__':
  app.run(main)
