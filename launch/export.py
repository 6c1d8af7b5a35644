"""Export a trained run's embedder as a self-contained jax.export artifact or an ONNX model.

  python -m launch.export --workdir=RUN --out=model.jaxexport [--flip=sum] [--dtype=float32] [--nooptimize]
  python -m launch.export --workdir=RUN --out=m.jaxexport --dtype=int8 --calibration=256 [--calibration_images=DIR]
  python -m launch.export --workdir=RUN --out=m.jaxexport --dtype=auto [--calibration=256] [--auto_batch=1]
  python -m launch.export --format=onnx --workdir=RUN --out=model.onnx [--nooptimize] [--flip=sum]

Writes OUT (batch-polymorphic, uint8 RGB [b, S, S, 3] -> float32 [b, D] L2-normalised) and OUT.json (shapes,
model name, preprocessing, options, face alignment). --format=jax: the serialized `jax.export.Exported`; load it
with `facejax.inference.load_exported(OUT)`, which does not need the model code. --dtype=auto times float32,
bfloat16 (where the CPU has bf16 dot instructions) and int8 (static scales with --calibration) on this machine
at --auto_batch, each as the serialized artifact itself, and keeps the fastest whose embeddings of 64 held-out
faces stay within a cosine of 0.995 of float32's (facejax.inference.optimize.choose); OUT.json records every
candidate's time and agreement. ONNX Runtime on facejax's ONNX export (the `[bench]` extra) is timed beside
them: where it is faster than every facejax path, OUT with the suffix .onnx is written too, and said so.
--format=onnx (the `[bench]` extra: jax2onnx): an ONNX graph for ONNX Runtime / OpenVINO / mobile runtimes,
float32, BN folded with --optimize (convolutions stay ONNX Conv ops for the runtime to lower).
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Run directory (model.json + checkpoints/).')
flags.DEFINE_string('out', None, 'Artifact path, e.g. model.jaxexport or model.onnx.')
flags.DEFINE_enum('format', 'jax', ['jax', 'onnx'], 'jax: a jax.export artifact; onnx: an ONNX model (jax2onnx).')
flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
flags.DEFINE_enum('flip', None, ['sum', 'concat'], 'Flip test-time augmentation baked into the artifact.')
flags.DEFINE_bool('optimize', True, 'Export the optimized inference forward (BN folded, re-lowered convs).')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16', 'int8', 'auto'],
                  'Dtype policy of the optimized forward; auto: the fastest on this CPU that agrees with float32.')
flags.DEFINE_integer('auto_batch', 1, '--dtype=auto: the batch size the candidates are timed at.')
flags.DEFINE_enum('conv', 'auto', ['auto', 'im2col', 'winograd', 'xla', 'onednn'],
                  'Conv lowering of the optimized forward (onednn: the oneDNN custom call, which the loading '
                  'process must have built too).')
flags.DEFINE_integer('calibration', 0, "--dtype=int8 or auto: static activation scales from this many face crops "
                     "(the run's training data, or --calibration_images); 0: per-image scales at run time.")
flags.DEFINE_string('calibration_images', '', 'Directory or glob of face images to calibrate on.')
flags.DEFINE_list('platforms', ['cpu'], 'Platforms to lower for (e.g. cpu,cuda).')
flags.mark_flags_as_required(['workdir', 'out'])

AUTO_CHECK_FACES = 64  # --dtype=auto: held-out faces the candidates' embeddings are compared on


def _faces(info: dict, calibration: int, check: int) -> tuple[np.ndarray | None, np.ndarray | None]:
  """(calibration faces as model inputs, held-out check faces as uint8 crops), from the run's training data or
  --calibration_images; the check faces are evenly spaced among them, None where none are asked for."""
  if not calibration + check:
    return None, None
  from facejax.inference.embedder import calibration_images
  try:
    crops = calibration_images(FLAGS.workdir, calibration + check, int(info['image_size']), FLAGS.calibration_images)
  except (FileNotFoundError, ValueError) as e:  # no (readable) --calibration_images, or no training data to use
    sys.exit(f'launch.export: {e}')
  held_out = np.zeros(len(crops), bool)
  if check:
    held_out[np.linspace(0, len(crops) - 1, max(1, min(check, len(crops) // 2))).round().astype(int)] = True
  return (np.asarray(info['preprocessing_obj'].apply(crops[~held_out])) if calibration else None,
          crops[held_out] if check else None)


def main(argv):
  del argv
  if FLAGS.format == 'onnx' and (FLAGS.dtype != 'float32' or FLAGS.conv != 'auto' or FLAGS.calibration):
    raise app.UsageError('--format=onnx exports float32 with ONNX Conv ops: drop --dtype, --conv and '
                         '--calibration (the runtime chooses its own lowerings and precision)')
  from facejax.inference.export import export_embedder, save_exported
  from facejax.inference.optimize.choose import ORT, choose_export
  from facejax.runs import load_run
  model, variables, info = load_run(FLAGS.workdir, FLAGS.step)
  conv = 'xla' if FLAGS.format == 'onnx' else FLAGS.conv  # ONNX keeps Conv ops for the runtime to lower
  options = {'dtype': FLAGS.dtype, 'conv': conv} if FLAGS.optimize else False
  if FLAGS.calibration and (options is False or FLAGS.dtype not in ('int8', 'auto')):
    raise app.UsageError('--calibration: static activation scales are for --dtype=int8 or auto (with --optimize)')
  if FLAGS.dtype == 'auto' and options is False:
    raise app.UsageError("--dtype=auto chooses among the optimized forward's dtype policies: drop --nooptimize")
  meta, size = {}, int(info['image_size'])
  calibration, check = _faces(info, FLAGS.calibration, AUTO_CHECK_FACES if FLAGS.dtype == 'auto' else 0)
  if calibration is not None:
    options['calibration'] = calibration
  exported = onnx_tmp = None
  if FLAGS.dtype == 'auto':
    from facejax.inference.optimize import onednn
    # float32 is also timed with XLA's native convs and with oneDNN (where built; bfloat16 too, and int8 with
    # calibration faces) when the lowering is left to facejax (--conv=auto); and ONNX Runtime on the ONNX export
    convs = ('xla',) + (() if onednn.unavailable() else ('onednn',))
    onnx_tmp = tempfile.mkdtemp(prefix='facejax_export_')
    meta['dtype_choice'], chosen, onnx_path = choose_export(
        model, variables, info['preprocessing_obj'], size, check=check, calibration=calibration,
        batch_size=FLAGS.auto_batch, conv=conv, convs=convs if conv == 'auto' else (), flip=FLAGS.flip,
        platforms=FLAGS.platforms, onnx_dir=onnx_tmp)
    exported = chosen.exported  # the very artifact that was checked and timed
    meta.update(chosen.metadata)
    options.update(dtype=meta['dtype_choice']['dtype'], conv=meta['dtype_choice']['conv'])
    if options['dtype'] != 'int8':
      options.pop('calibration', None)
    print(json.dumps({'dtype_choice': meta['dtype_choice']}), flush=True)
  if FLAGS.format == 'onnx':
    from facejax.inference.export import embedding_function
    from facejax.inference.onnx_export import export_onnx
    fn, _ = embedding_function(model, variables, info['preprocessing_obj'], size, flip=FLAGS.flip, optimize=options)
  elif exported is None:
    exported = export_embedder(model, variables, info['preprocessing_obj'], size, flip=FLAGS.flip, optimize=options,
                               platforms=FLAGS.platforms, metadata=meta)
  meta.update({
      'model': info['name'], 'embed_dim': info['embed_dim'], 'image_size': size,
      'preprocessing': info['preprocessing'], 'flip': FLAGS.flip,
      'optimize': {k: v for k, v in options.items() if k != 'calibration'} if options else None,
      'calibration': ({'images': int(len(options['calibration'])), 'source': FLAGS.calibration_images or
                       'training data'} if options and 'calibration' in options else None),
      'workdir': FLAGS.workdir, 'step': info.get('step'),
      'align': info.get('align'),  # face alignment the model expects (dlib chips); the CLIs apply it
  })
  if FLAGS.format == 'onnx':
    print(json.dumps(export_onnx(fn, int(info['image_size']), FLAGS.out, meta)))
    return
  print(json.dumps(save_exported(exported, FLAGS.out, meta)))
  choice = meta.get('dtype_choice') or {}
  if choice.get('fastest') == ORT:  # ONNX Runtime beat every facejax path on this CPU: deploy its model
    out = os.path.splitext(FLAGS.out)[0] + '.onnx'
    shutil.move(onnx_path, out)
    with open(onnx_path + '.json') as f:
      onnx_meta = json.load(f)
    with open(out + '.json', 'w') as f:
      json.dump({**onnx_meta, **meta, 'optimize': {'conv': 'xla'}, 'calibration': None}, f, indent=2)
    print(f"launch.export: ONNX Runtime on the ONNX export is the fastest path on this CPU "
          f"({choice['candidates'][ORT]['ms_median']} ms at batch {choice['batch_size']}, "
          f"{choice['ort_speedup']}x facejax's best, {choice['dtype']}/{choice['conv']}): deploy {out} "
          f"(launch.embed, verify and evaluate run .onnx files); {FLAGS.out} holds facejax's best", flush=True)
  if onnx_tmp:
    shutil.rmtree(onnx_tmp, ignore_errors=True)


if __name__ == '__main__':
  app.run(main)
