"""Pretrained weights from other frameworks -> (facejax Classifier, variables), in memory or as a checkpoint."""
from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax

from facejax.convert import keras_h5, torchvision
from facejax.convert.plan import ConversionReport, apply_plan
from facejax.models.preprocessing import PREPROCESSING
from facejax.runs import check_out_dir, save_converted

SOURCES = ('keras_h5', 'torchvision')
KERAS_SUFFIXES = ('.h5', '.hdf5', '.keras')


@dataclasses.dataclass
class Converted:
  model: nn.Module  # facejax Classifier
  variables: dict  # {'params': {'backbone', 'classifier'}, 'batch_stats': {...}}
  metadata: dict  # what metadata.json holds (report included)
  report: ConversionReport


def infer_source(path: str) -> str:
  ext = os.path.splitext(path)[1].lower()
  if ext in KERAS_SUFFIXES:
    return 'keras_h5'
  if ext in torchvision.TORCH_SUFFIXES + ('.safetensors',):
    return 'torchvision'
  raise ValueError(f'{path}: cannot tell the source framework from {ext!r}; expected Keras '
                   f'{"/".join(KERAS_SUFFIXES)} or torchvision {"/".join(torchvision.TORCH_SUFFIXES)}/.safetensors')


def convert_pretrained(arch: str, path: str | None = None, source: str | None = None, seed: int = 0) -> Converted:
  """Reads `path` (a `source` file; inferred from the suffix when None) into facejax `arch`. path=None: the
  ImageNet weights a pip package installed for `arch` (mobilenet_v2, efficientnet_lite0/1/2; `torchvision.
  PACKAGED_WEIGHTS`), or an error naming what to install.

  Raises ValueError for a file of another architecture, a missing tensor, a tensor no variable takes, or a
  shape mismatch (naming the tensor and both shapes).
  """
  if path is None:
    path = torchvision.packaged_weights(arch)
  source = source or infer_source(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: no such file')
  if source == 'keras_h5':
    tensors, fmt = keras_h5.read_keras_h5(path)
    plan, tensors = keras_h5.keras_plan(arch, tensors, path)
  elif source == 'torchvision':
    tensors, fmt = torchvision.read_state_dict(path)
    plan = torchvision.torchvision_plan(arch, tensors, path)
  else:
    raise ValueError(f'unknown source {source!r}; expected one of {SOURCES}')
  model, variables, report = apply_plan(plan, tensors, path, seed)
  metadata = {'arch': plan.arch, 'requested_arch': arch, 'source': source, 'format': fmt,
              'src': os.path.abspath(path), 'preprocessing': plan.preprocessing,
              'preprocessing_spec': PREPROCESSING[plan.preprocessing].to_dict(), 'num_classes': plan.num_classes,
              'image_size': plan.image_size, 'notes': plan.notes, 'report': report.to_dict()}
  return Converted(model, variables, metadata, report)


def load_pretrained(arch: str, path: str | None = None, source: str | None = None):
  """-> (model, variables): `model.apply(variables, x, train=False)` on `[B, H, W, 3]` float32 input,
  preprocessed as the source expects (`PREPROCESSING[metadata['preprocessing']]`), gives the source logits.

  `arch`: 'vgg16' | 'vgg16_gap' | 'resnet50' (Keras files build 'resnet50_keras') | 'resnet50_keras' |
  'resnet18' (torchvision) | 'mobilenet_v2' | 'efficientnet_lite0/1/2' (path=None: the packaged ImageNet weights,
  pip extra [imagenet]). VGG16 with fc6 expects the input size the source was built for (224 for
  torchvision; Keras: 32 * sqrt(fc1 fan-in / 512)).
  """
  c = convert_pretrained(arch, path, source)
  return c.model, jax.device_put(c.variables)


def convert_to_checkpoint(source: str, arch: str, src: str | None, out: str, overwrite: bool = False) -> dict:
  """What `python -m launch.convert` does: convert `src` and write `out/checkpoint` + `out/metadata.json`.
  src=None: the packaged ImageNet weights of `arch` (see convert_pretrained)."""
  if source not in SOURCES:
    raise ValueError(f'unknown source {source!r}; expected one of {SOURCES}')
  if src is None:
    src = torchvision.packaged_weights(arch)
  if infer_source(src) != source:
    raise ValueError(f'{src}: a {infer_source(src)} file, but --from={source}')
  check_out_dir(out, overwrite)  # fail before the (slow) conversion
  c = convert_pretrained(arch, src, source)
  save_converted(out, c.variables, c.metadata, overwrite=overwrite)
  return c.metadata
