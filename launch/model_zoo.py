"""Every registry model with its parameter counts and GFLOPs at its input size, as markdown or JSON.

  python -m launch.model_zoo                        # markdown table
  python -m launch.model_zoo --format=json --json_out=runs/zoo.json --models=resnet50,mobilefacenet

GFLOPs: the batch-1 face model (embedding head included), 2 x the multiply-accumulates of its conv and dense
layers (facejax.inference.flops.layer_flops, the count every facejax report uses).
"""
import json

from absl import app, flags

flags.DEFINE_list('models', None, 'Registry names (default: all).')
flags.DEFINE_enum('format', 'markdown', ['markdown', 'json'], 'What to print.')
flags.DEFINE_string('json_out', None, 'Also write the JSON rows here.')
flags.DEFINE_integer('embed_dim', 128, 'Embedding size of the face model whose params are listed.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from facejax.inference.benchmark import zoo_markdown, zoo_row
  from facejax.models import MODELS
  rows = [zoo_row(n, FLAGS.embed_dim) for n in (FLAGS.models or list(MODELS))]
  print(json.dumps(rows, indent=1) if FLAGS.format == 'json' else zoo_markdown(rows))
  if FLAGS.json_out:
    with open(FLAGS.json_out, 'w') as f:
      json.dump(rows, f, indent=1)


if __name__ == '__main__':
  app.run(main)
