"""Export a trained run's embedder as a self-contained jax.export artifact or an ONNX model.

  python -m launch.export --workdir=RUN --out=model.jaxexport [--flip=sum] [--dtype=float32] [--nooptimize]
  python -m launch.export --workdir=RUN --out=m.jaxexport --dtype=int8 --calibration=256 [--calibration_images=DIR]
  python -m launch.export --format=onnx --workdir=RUN --out=model.onnx [--nooptimize] [--flip=sum]

Writes OUT (batch-polymorphic, uint8 RGB [b, S, S, 3] -> float32 [b, D] L2-normalised) and OUT.json (shapes,
model name, preprocessing, options, face alignment). --format=jax: the serialized `jax.export.Exported`; load it
with `facejax.inference.load_exported(OUT)`, which does not need the model code. --format=onnx (the `[bench]`
extra: jax2onnx): an ONNX graph for ONNX Runtime / OpenVINO / mobile runtimes, float32, BN folded with
--optimize (convolutions stay ONNX Conv ops for the runtime to lower).
"""
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Run directory (model.json + checkpoints/).')
flags.DEFINE_string('out', None, 'Artifact path, e.g. model.jaxexport or model.onnx.')
flags.DEFINE_enum('format', 'jax', ['jax', 'onnx'], 'jax: a jax.export artifact; onnx: an ONNX model (jax2onnx).')
flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
flags.DEFINE_enum('flip', None, ['sum', 'concat'], 'Flip test-time augmentation baked into the artifact.')
flags.DEFINE_bool('optimize', True, 'Export the optimized inference forward (BN folded, re-lowered convs).')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16', 'int8'], 'Dtype policy of the optimized forward.')
flags.DEFINE_enum('conv', 'auto', ['auto', 'im2col', 'winograd', 'xla'], 'Conv lowering of the optimized forward.')
flags.DEFINE_integer('calibration', 0, "--dtype=int8: static activation scales from this many face crops (the "
                     "run's training data, or --calibration_images); 0: per-image scales at run time.")
flags.DEFINE_string('calibration_images', '', 'Directory or glob of face images to calibrate on.')
flags.DEFINE_list('platforms', ['cpu'], 'Platforms to lower for (e.g. cpu,cuda).')
flags.mark_flags_as_required(['workdir', 'out'])


def main(argv):
  del argv
  if FLAGS.format == 'onnx' and (FLAGS.dtype != 'float32' or FLAGS.conv != 'auto' or FLAGS.calibration):
    raise app.UsageError('--format=onnx exports float32 with ONNX Conv ops: drop --dtype, --conv and '
                         '--calibration (the runtime chooses its own lowerings and precision)')
  import json
  import numpy as np
  from facejax.inference.export import export_embedder, save_exported
  from facejax.runs import load_run
  model, variables, info = load_run(FLAGS.workdir, FLAGS.step)
  conv = 'xla' if FLAGS.format == 'onnx' else FLAGS.conv  # ONNX keeps Conv ops for the runtime to lower
  options = {'dtype': FLAGS.dtype, 'conv': conv} if FLAGS.optimize else False
  if FLAGS.calibration:
    if options is False or FLAGS.dtype != 'int8':
      raise app.UsageError('--calibration: static activation scales are for --dtype=int8 (with --optimize)')
    from facejax.inference.embedder import calibration_images
    crops = calibration_images(FLAGS.workdir, FLAGS.calibration, int(info['image_size']), FLAGS.calibration_images)
    options['calibration'] = np.asarray(info['preprocessing_obj'].apply(crops))
  meta = {}
  if FLAGS.format == 'onnx':
    from facejax.inference.export import embedding_function
    from facejax.inference.onnx_export import export_onnx
    fn, _ = embedding_function(model, variables, info['preprocessing_obj'], int(info['image_size']), flip=FLAGS.flip,
                               optimize=options)
  else:
    exported = export_embedder(model, variables, info['preprocessing_obj'], int(info['image_size']),
                               flip=FLAGS.flip, optimize=options, platforms=FLAGS.platforms, metadata=meta)
  meta.update({
      'model': info['name'], 'embed_dim': info['embed_dim'], 'image_size': int(info['image_size']),
      'preprocessing': info['preprocessing'], 'flip': FLAGS.flip,
      'optimize': {k: v for k, v in options.items() if k != 'calibration'} if options else None,
      'calibration': ({'images': int(len(options['calibration'])), 'source': FLAGS.calibration_images or
                       'training data'} if FLAGS.calibration else None),
      'workdir': FLAGS.workdir, 'step': info.get('step'),
      'align': info.get('align'),  # face alignment the model expects (dlib chips); the CLIs apply it
  })
  if FLAGS.format == 'onnx':
    print(json.dumps(export_onnx(fn, int(info['image_size']), FLAGS.out, meta)))
  else:
    print(json.dumps(save_exported(exported, FLAGS.out, meta)))


if __name__ == '__main__':
  app.run(main)
