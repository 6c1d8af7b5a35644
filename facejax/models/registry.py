"""Model registry: name -> backbone constructor and its default input size (preprocessing: models/preprocessing.py)."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from facejax.models.dlib_resnet import DlibResNet
from facejax.models.heads import Classifier, FaceNet
from facejax.models.mobilenet import EfficientNetLite0, EfficientNetLite1, EfficientNetLite2, MobileNetV2
from facejax.models.resnet import ResNet18, ResNet50
from facejax.models.students import MobileFaceNet
from facejax.models.tfjs_graph import NAME as TFJS_GRAPH
from facejax.models.tfjs_graph import build_tfjs_model
from facejax.models.vgg import VGG


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  backbone: Callable[..., nn.Module]
  image_size: int
  doc: str


_VGG16 = dict(stage_sizes=(2, 2, 3, 3, 3), widths=(64, 128, 256, 512, 512))
_SMALL = dict(stage_sizes=(1, 1, 2, 2), widths=(16, 32, 64, 128))

MODELS: dict[str, ModelSpec] = {
    # Teachers.
    'vgg16': ModelSpec(functools.partial(VGG, **_VGG16, fc_dims=(4096, 4096)), 224,
                       'VGG-16 with fc6/fc7 (138.4M params with the ImageNet head).'),
    'vgg16_gap': ModelSpec(functools.partial(VGG, **_VGG16, fc_dims=()), 224,
                           'VGG-16 convs + global average pooling instead of fc6/fc7.'),
    'resnet50': ModelSpec(ResNet50, 224, 'ResNet-50, torchvision v1.5 layout (25.6M with the ImageNet head).'),
    'resnet50_keras': ModelSpec(functools.partial(ResNet50, stride_in_1x1=True, conv_bias=True, bn_eps=1.001e-5), 224,
                                'ResNet-50, keras.applications v1 layout (stride in the 1x1, conv biases).'),
    'vgg_small': ModelSpec(functools.partial(VGG, **_SMALL, fc_dims=(512,), norm=True, dropout=0.3), 48,
                           'Demo teacher: 6 convs (16-128 channels) + one fc layer, BN, for 48x48 synthetic faces.'),
    # ImageNet backbones for face transfer (weights: facejax.convert.load_pretrained(name), from the pip extra
    # [imagenet]); the default size is the face size, the ImageNet resolution is in the doc.
    'mobilenet_v2': ModelSpec(MobileNetV2, 112, 'MobileNetV2, torchvision layout (3.5M params with the ImageNet '
                              'head; ImageNet at 224 px).'),
    'efficientnet_lite0': ModelSpec(EfficientNetLite0, 112, 'EfficientNet-Lite0: B0 without squeeze-excite, ReLU6, '
                                    "TF 'SAME' padding (4.65M params with the ImageNet head; ImageNet at 224 px)."),
    'efficientnet_lite1': ModelSpec(EfficientNetLite1, 112, 'EfficientNet-Lite1: Lite0 with 1.1x depth (5.42M '
                                    'params with the ImageNet head; ImageNet at 240 px).'),
    'efficientnet_lite2': ModelSpec(EfficientNetLite2, 112, 'EfficientNet-Lite2: 1.1x width, 1.2x depth (6.09M '
                                    'params with the ImageNet head; ImageNet at 260 px).'),
    # Students.
    'student_vgg': ModelSpec(functools.partial(VGG, **_SMALL, fc_dims=(), norm=True, width=0.5), 48,
                             'Paper-style compressed student: thin VGG (half the demo teacher width), global pooling.'),
    'mobilefacenet': ModelSpec(MobileFaceNet, 112, 'MobileFaceNet: depthwise-separable, ~1M params at 112x112.'),
    'resnet18': ModelSpec(ResNet18, 112, 'ResNet-18 (torchvision layout).'),
    'resnet18_w050': ModelSpec(functools.partial(ResNet18, width=0.5), 112, 'ResNet-18 at half width.'),
    'dlib_resnet': ModelSpec(DlibResNet, 150, "dlib's face recognition ResNet (29 convs, 256-d pooled features; "
                             'converted weights: facejax.convert.dlib, input: dlib_resnet.dlib_preprocessing()).'),
    'dlib_student': ModelSpec(functools.partial(DlibResNet, channels=(8, 24, 48, 96), blocks=(1, 2, 2, 2, 1)),
                              150, "The real-faces student: dlib's ResNet with 8/24/48/96 stream channels, 8 of its "
                              '14 residual blocks (cut from the teacher by facejax.convert.prune; '
                              'configs/real_faces.py).'),
}


# Whole networks (head included) that come from a converted file, rebuilt from model.json's kwargs: not in MODELS,
# which lists what a name alone builds. 'tfjs_graph': a TensorFlow.js graph model (facejax.convert.tfjs_run).
CONVERTED_MODELS: dict[str, Callable[..., nn.Module]] = {TFJS_GRAPH: build_tfjs_model}


def _spec(name: str) -> ModelSpec:
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; expected one of: {", ".join(sorted(MODELS))}')
  return MODELS[name]


def build_backbone(name: str, dtype: Any = jnp.float32, **overrides) -> nn.Module:
  """Backbone module `[B, H, W, 3] -> [B, F]`; `overrides` set module fields (e.g. width=0.25)."""
  ctor = _spec(name).backbone
  fields = {f.name for f in dataclasses.fields(ctor.func if isinstance(ctor, functools.partial) else ctor)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f'model {name!r} has no field(s) {unknown}; known: {sorted(fields - {"parent", "name"})}')
  return ctor(dtype=dtype, **overrides)


def build_model(name: str, num_classes: int, embed_dim: int = 128, dropout: float = 0.0, dtype: Any = jnp.float32,
                bn_axis: str | None = None, classifier: str = 'softmax', cosine_scale: float = 64.0,
                **overrides) -> FaceNet:
  """Face model: backbone + embedding head + identity classifier (num_classes=0: embedding only; `classifier`:
  'softmax' or 'cosine', see FaceNet). `bn_axis` (the pmap axis name, training only) makes BatchNorm statistics
  cross-device. CONVERTED_MODELS build from their `overrides` (model.json kwargs)."""
  if name in CONVERTED_MODELS:
    return CONVERTED_MODELS[name](num_classes=num_classes, embed_dim=embed_dim, dtype=dtype, **overrides)
  backbone = build_backbone(name, dtype, **overrides, **({'bn_axis': bn_axis} if bn_axis else {}))
  return FaceNet(backbone, num_classes, embed_dim, dropout, bn_axis, dtype, classifier, cosine_scale)


def build_classifier(name: str, num_classes: int = 1000, dtype: Any = jnp.float32, **overrides) -> Classifier:
  """Source-task classifier (the shape of an ImageNet checkpoint)."""
  return Classifier(build_backbone(name, dtype, **overrides), num_classes, dtype)


def default_image_size(name: str) -> int:
  return _spec(name).image_size


def count_params(tree) -> int:
  import jax
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
