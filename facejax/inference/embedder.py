"""Every model the CLIs use, reached through one seam: a path -> an embedding function; and image files -> embeddings.

A model is a run directory RUN (model.json + checkpoints/; `facejax.runs`) or an exported artifact `M.jaxexport`
(`launch.export`; its JSON sidecar `M.jaxexport.json` describes it).
`load_embedder(path, flip, step, raw, optimize) -> (embed_fn, image_size)` is the one place that turns a path into a
function uint8 [B, S, S, 3] RGB -> float32 [B, D] L2-normalised embeddings (raw=True: the un-normalised
embeddings, run directories only); `describe_model(path)` reads what is known without loading weights.
`embed_paths` (launch.embed) embeds every image under a directory or glob; `calibration_images` picks the faces
launch.export calibrates static int8 scales on.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Callable

from absl import logging
import numpy as np

from facejax.data.align import align_photo, resolve_align
from facejax.inference.embed import flip_mode, make_embed_fn
from facejax.runs import EXPORT_SUFFIXES, is_exported, latest_step, load_run, read_model_info, read_threshold

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm', '.pgm')


def describe_model(path: str) -> dict:
  """A run directory, `*.jaxexport` or `*.onnx` -> {'kind': 'run' | 'export', 'name', 'image_size', 'step'
  (latest / exported), 'flip' (baked into an export, else None), 'align', 'descriptor' (None when absent), 'info' (model.json or the
  export's sidecar, {} when it has none)}, without loading weights."""
  if is_exported(path):
    if not os.path.isfile(path):
      raise FileNotFoundError(f'exported model {path} does not exist (expected a file written by launch.export)')
    info = {}
    if os.path.isfile(path + '.json'):
      with open(path + '.json') as f:
        info = json.load(f)
    image_size = info.get('image_size') or (info.get('input', {}).get('shape') or [None, None])[1]
    return {'kind': 'export', 'name': info.get('model', '?'), 'image_size': image_size, 'step': info.get('step'),
            'flip': flip_mode(info.get('flip')), 'align': info.get('align'), 'descriptor': None, 'info': info}
  if not os.path.isdir(path):
    raise FileNotFoundError(f'run directory {path} does not exist (expected a launch.train workdir with '
                            f'model.json and checkpoints/<step>/, or an exported {" or ".join(EXPORT_SUFFIXES)} '
                            'file)')
  info = read_model_info(path)
  return {'kind': 'run', 'name': info['name'], 'image_size': int(info['image_size']), 'step': latest_step(path),
          'flip': None, 'align': info.get('align'), 'descriptor': info.get('descriptor'), 'info': info}


def load_embedder(path: str, flip: str | None = '', step: int | None = None, raw: bool = False,
                  optimize: bool | dict = False) -> tuple[Callable[[Any], Any], int]:
  """Run directory, `*.jaxexport` or `*.onnx` (run by ONNX Runtime) -> (embed_fn, image_size): embed_fn(uint8
  [B, S, S, 3] RGB) -> [B, D] L2-normalised ([B, 2D] for flip='concat'); S = image_size. `step`: checkpoint step
  (default the latest).

  raw=True: the un-normalised embeddings, `FaceNet.forward(x)['raw_embedding']` (dlib's descriptors for its
  converted net); run directories only, no flip. An export's flip mode is baked in: `flip` must match it.
  `optimize`: a run directory's forward, as `make_embed_fn` takes it (exports run as exported).
  This is the only place the CLIs turn a path into a model.
  """
  flip = flip_mode(flip)
  if is_exported(path):
    desc = describe_model(path)
    if raw:
      raise ValueError(f'{path}: an exported model outputs L2-normalised embeddings only; raw embeddings need '
                       f'the run directory it was exported from')
    if flip != desc['flip']:
      raise ValueError(f'{path}: flip TTA is baked into the export as {desc["flip"] or "none"}, got '
                       f'flip={flip or "none"} (re-export with launch.export --flip to change it)')
    if step is not None and desc['step'] is not None and step != desc['step']:
      raise ValueError(f'{path}: exported from checkpoint step {desc["step"]}, got step={step}')
    if path.endswith('.onnx'):
      from facejax.inference.onnx_export import OnnxEmbedder
      embedder = OnnxEmbedder(path)
    else:
      from facejax.inference.export import load_exported
      embedder = load_exported(path)
    return embedder, embedder.image_size
  describe_model(path)  # errors naming what is missing
  model, variables, info = load_run(path, step)
  image_size, preprocessing = int(info['image_size']), info['preprocessing_obj']
  return make_embed_fn(model, variables, preprocessing, image_size, flip=flip, optimize=optimize, raw=raw), image_size


def _decode_file(path: str) -> np.ndarray:
  from facejax.data.decode import decode_image
  with open(path, 'rb') as f:
    return decode_image(f.read())


def read_image(path: str) -> np.ndarray:
  """Image file -> uint8 [H, W, 3] RGB; FileNotFoundError / UnreadableImage naming the file."""
  from facejax.data.decode import UnreadableImage
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such image file')
  try:
    return _decode_file(path)
  except UnreadableImage as e:  # str(e) is 'category: detail'; put the file between them
    raise UnreadableImage(e.category, f'{path}: {str(e)[len(e.category) + 2:]}') from None


def find_images(images: str, flag: str = '--images') -> tuple[list[str], str]:
  """A directory (searched recursively for IMAGE_EXTENSIONS, any case) or a glob pattern (`**` recursive) ->
  (sorted file paths, root the names are relative to); none found: an error naming `flag`."""
  if os.path.isdir(images):
    root = images
    paths = [os.path.join(d, f) for d, _, files in os.walk(images) for f in files
             if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
  else:
    paths = [p for p in glob.glob(images, recursive=True) if os.path.isfile(p)]
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]) if paths else ''
  if not paths:
    raise FileNotFoundError(f'{flag}={images}: no image files found (expected a directory holding '
                            f'{"/".join(IMAGE_EXTENSIONS)} files, or a glob such as "faces/**/*.jpg")')
  return sorted(paths), root


def calibration_images(workdir: str, count: int, image_size: int, images: str = '') -> np.ndarray:
  """`count` face crops for static int8 calibration -> uint8 [N, S, S, 3]: evenly spaced over the image files
  under `images` (a directory or glob; unreadable files skipped), or, without `images`, over the run's own
  training data (config.json's data source). Center-cropped/resized like verification inputs."""
  from facejax.data.decode import UnreadableImage
  from facejax.data.loader import as_rgb_array, center_crop
  if count < 1:
    raise ValueError(f'calibration count={count}: expected >= 1')
  if images:
    paths, _ = find_images(images, '--calibration_images')
    picked = [paths[i] for i in np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int)]
    crops = []
    for path in picked:
      try:
        crops.append(center_crop(read_image(path), image_size))
      except (OSError, UnreadableImage) as e:  # an unreadable file: skip it
        logging.warning('calibration: skipping %s (%s)', path, e)
    if not crops:
      raise ValueError(f'--calibration_images={images}: none of the {len(picked)} picked files could be read')
    return np.stack(crops)
  config_path = os.path.join(workdir, 'config.json')
  config = {}
  if os.path.isfile(config_path):
    with open(config_path) as f:
      config = json.load(f)
  if 'data' not in config:  # no file, or a converted model's record (convert.py writes task/source/sha256)
    raise FileNotFoundError(f'{config_path}: no training config to take calibration images from (a converted '
                            'model?): pass a folder of face images instead (--calibration_images=DIR)')
  data = config['data']
  from facejax.data import make_source
  source = make_source(data['source'], **data.get('kwargs', {}))
  picked = np.linspace(0, len(source) - 1, min(count, len(source))).round().astype(int)
  return np.stack([center_crop(as_rgb_array(source[int(i)]['image']), image_size) for i in picked])


@dataclasses.dataclass
class EmbedResult:
  names: list[str]
  embeddings: np.ndarray
  skipped: list[str]
  summary: Any  # facejax.data.decode.DecodeSummary


def embed_files(embed_fn, image_size: int, paths: list[str], batch_size: int = 64, progress: bool = False,
                root: str = '', align: dict | None = None) -> EmbedResult:
  """Decode, (align,) center-crop and embed image files in fixed-size batches (one compilation); unreadable files
  and, with `align`, photos without a face ('no-face') are skipped and counted, never fatal. names are paths
  relative to `root`."""
  from facejax.data.align import NoFaceError
  from facejax.data.decode import DecodeSummary, UnreadableImage
  from facejax.data.loader import center_crop
  summary, names, skipped, out, batch = DecodeSummary(), [], [], [], []

  def flush():
    b = len(batch)
    x = np.stack(batch + [batch[-1]] * (batch_size - b))  # pad: every call has batch_size rows
    out.append(np.asarray(embed_fn(x), np.float32)[:b])
    batch.clear()

  files = paths
  if progress:
    from tqdm import tqdm
    files = tqdm(paths, desc='embed', unit='img')
  for path in files:
    name = os.path.relpath(path, root) if root else path
    try:
      image = align_photo(_decode_file(path), name, align)
    except NoFaceError as e:  # its message starts with the name; the summary prints the name itself
      summary.add_skipped(name, UnreadableImage('no-face', str(e).removeprefix(f'{name}: ')))
      skipped.append(name)
      continue
    except (UnreadableImage, OSError) as e:
      summary.add_skipped(name, e if isinstance(e, UnreadableImage) else UnreadableImage('io-error', str(e)))
      skipped.append(name)
      continue
    summary.add_ok()
    names.append(name)
    batch.append(center_crop(image, image_size))
    if len(batch) == batch_size:
      flush()
  if batch:
    flush()
  embeddings = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
  return EmbedResult(names, embeddings, skipped, summary)


def embed_paths(workdir: str, images: str, out: str, *, flip: str = 'auto', align: str = 'auto',
                batch_size: int = 64, progress: bool = True) -> EmbedResult:
  """Embed every image under a directory / matching a glob with a run's (or an export's) model; write `out`
  (.npz): names [N] str (relative paths), embeddings float32 [N, D] (L2-normalised), skipped [M] str, meta (JSON).

  flip='auto' uses the calibrated flip mode (threshold.json) so distances match its threshold, else the mode baked
  into an export, else none. align: see `resolve_align` ('auto': when the model asks for aligned chips).
  """
  desc = describe_model(workdir)
  if flip == 'auto':
    try:
      flip = read_threshold(workdir)['flip']
    except FileNotFoundError:
      flip = desc['flip'] or ''
  flip = flip_mode(flip) or ''
  align_spec = resolve_align(align, desc)
  paths, root = find_images(images)
  embed_fn, image_size = load_embedder(workdir, flip)
  result = embed_files(embed_fn, image_size, paths, batch_size=batch_size, progress=progress, root=root,
                       align=align_spec)
  if not result.names:
    raise ValueError(f'--images={images}: none of the {len(paths)} files could be used\n{result.summary.format()}')
  meta = {'workdir': os.path.abspath(workdir), 'step': desc['step'], 'flip': flip or 'none',
          'image_size': image_size, 'align': align_spec, 'root': os.path.abspath(root), 'images': images,
          **result.summary.to_dict()}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = out + '.tmp'
  with open(tmp, 'wb') as f:  # a file object: np.savez would otherwise append '.npz' to the name
    np.savez(f, names=np.asarray(result.names, dtype=str), embeddings=result.embeddings,
             skipped=np.asarray(result.skipped, dtype=str), meta=np.asarray(json.dumps(meta)))
  os.replace(tmp, out)
  return result
