"""dlib's face recognition ResNet (`dlib_face_recognition_resnet_model_v1`) in Flax.

dlib defines the net (examples/dnn_face_recognition_ex.cpp) as, from the input up:

  input_rgb_image_sized<150> -> con<32,7,7,2,2> -> affine -> relu -> max_pool<3,3,2,2>
  -> 3 x ares<32> -> ares_down<64> + 3 x ares<64> -> ares_down<128> + 2 x ares<128>
  -> ares_down<256> + 2 x ares<256> -> ares_down<256> -> avg_pool_everything -> fc_no_bias<128>

  ares<N>      = relu(x + affine(con3x3(relu(affine(con3x3(x))))))
  ares_down<N> = relu(avg_pool<2,2,2,2>(x) + affine(con3x3(relu(affine(con3x3_stride2(x))))))

29 convs, 5.6M parameters, `[B, 150, 150, 3] -> [B, 128]`. Details that matter for exactness:
- dlib pads a conv or pool by k // 2 only when its stride is 1; stride-2 layers are unpadded ('VALID').
- `add_prev` adds tensors of different shapes: the result has the larger of each dimension and each input is
  zero-extended at the end (channels, bottom rows, right columns). ares_down relies on it: at 8x8 the strided conv
  gives 3x3 while the pooled shortcut is 4x4 with half the channels.
- Input: RGB minus dlib's per-channel means (122.782, 117.001, 104.298), divided by 256 (`dlib_preprocessing()`).
- The inference model file holds `affine` layers (dlib's bn_con after training). Here each is a BatchNorm whose
  running mean is 0 and whose running variance makes var + eps exactly 1 in float32, so in eval mode it computes
  exactly `x * gamma + beta`, while the same module trains as a normal BatchNorm (as dlib trains with bn_con).

In facejax the net is a `FaceNet(DlibResNet(), num_classes=0, embed_dim=128)` (see `build_dlib_model`): the
backbone ends at the 256-d average pool and dlib's `fc_no_bias<128>` is the embedding head's dense layer (bias 0)
followed by an identity BatchNorm, so every facejax tool (run directories, `make_embed_fn`, the optimized
inference path, distillation teachers) takes it as is.

Descriptors. dlib does not L2-normalise: `compute_face_descriptor` returns the raw fc output and dlib's rule is
"same person if euclidean distance < 0.6" on those raw descriptors. facejax keeps both:
`forward(x)['raw_embedding']` (and `dlib_descriptors`) is dlib's descriptor, to which the 0.6 rule applies;
`embed(x)` / `forward(x)['embedding']`, what facejax's evaluation and `launch.verify` use, is its L2-normalised
version, with thresholds calibrated like any other run's.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from facejax.models.common import Dtype, ModuleDef, scaled
from facejax.models.heads import FaceNet
from facejax.models.preprocessing import DLIB_MEANS, dlib_preprocessing  # noqa: F401 (part of this module's API)

IMAGE_SIZE = 150
DESCRIPTOR_DIM = 128
BN_EPS = 1e-5  # dlib's DEFAULT_BATCH_NORM_EPS; also FaceNet's embedding-head BatchNorm epsilon
# (width, blocks, whether the first block downsamples), from the input up.
DLIB_STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


def identity_variance(eps: float = BN_EPS) -> np.float32:
  """The float32 v with v + float32(eps) == 1 exactly: a BatchNorm with mean 0 and variance v is then exactly
  `x * scale + bias` in eval mode."""
  eps32 = np.float32(eps)
  v = np.float32(1) - eps32
  for _ in range(4):  # at most a step or two of 1 ulp
    s = v + eps32
    if s == np.float32(1):
      return v
    v = np.nextafter(v, np.float32(0) if s > 1 else np.float32(2), dtype=np.float32)
  raise AssertionError(f'no float32 variance v with v + {eps} == 1')


def pad_add(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """dlib's add_prev: `[B, H, W, C]` tensors of possibly different H, W, C -> their sum over the larger shape,
  each zero-extended at the end of every axis."""
  shape = tuple(max(i, j) for i, j in zip(a.shape, b.shape))
  grow = lambda t: t if t.shape == shape else jnp.pad(t, [(0, s - d) for s, d in zip(shape, t.shape)])
  return grow(a) + grow(b)


def _conv_padding(k: int, stride: int):
  p = k // 2 if stride == 1 else 0  # dlib's default: pad only stride-1 layers
  return ((p, p), (p, p))


class DlibResidual(nn.Module):
  """ares / ares_down: `[B, H, W, C] -> [B, H', W', filters]` (H' = H // 2 for stride 2)."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    s = self.strides
    y = self.conv(self.filters, (3, 3), (s, s), padding=_conv_padding(3, s), name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.filters, (3, 3), padding=_conv_padding(3, 1), name='conv2')(y)
    y = self.norm(name='bn2')(y)
    shortcut = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding='VALID') if s != 1 else x
    return nn.relu(pad_add(y, shortcut))


class DlibResNet(nn.Module):
  """dlib's face ResNet trunk: `[B, 150, 150, 3]` (`dlib_preprocessing()`) -> `[B, 256]` average-pooled features.
  `width` scales every stage (1.0 is dlib's net); `channels` instead sets each residual stream's channels (the
  stem and first stage, then each stage that widens: 4 counts for dlib's net; see `stream_groups`); `stages` as
  DLIB_STAGES; `blocks` (one count per stage) replaces the stages' block counts (a shallower student)."""
  stages: tuple = DLIB_STAGES
  stem_filters: int = 32
  width: float = 1.0
  blocks: tuple | None = None
  channels: tuple | None = None
  bn_eps: float = BN_EPS
  bn_axis: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(nn.Conv, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=self.bn_eps,
                             dtype=self.dtype, axis_name=self.bn_axis)
    stages = with_blocks(self.stages, self.blocks)
    groups, _ = stream_groups(stages)
    counts = stream_channels(self.width, self.channels, stages)
    stem = counts[0] if self.channels is not None else scaled(self.stem_filters, self.width)
    x = conv(stem, (7, 7), (2, 2), padding=_conv_padding(7, 2), name='conv0')(x.astype(self.dtype))
    x = nn.relu(norm(name='bn0')(x))
    x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding='VALID')
    i = 0
    for filters, blocks, down in stages:
      for j in range(blocks):
        x = DlibResidual(counts[groups[i]], conv, norm, 2 if (down and j == 0) else 1, name=f'block{i}')(x)
        i += 1
      self.sow('intermediates', 'stages', x)  # each stage's output: distillation hints (a no-op unless asked)
    return jnp.mean(x, axis=(1, 2))


def with_blocks(stages=DLIB_STAGES, blocks=None) -> tuple:
  """`stages` with each stage's block count replaced by `blocks` (None: as they are)."""
  if blocks is None:
    return tuple(stages)
  if len(blocks) != len(stages) or any(int(b) < 1 for b in blocks):
    raise ValueError(f'blocks={tuple(blocks)}: expected {len(stages)} counts >= 1, one per stage of {stages}')
  return tuple((f, int(b), down) for (f, _, down), b in zip(stages, blocks))


def stream_groups(stages=DLIB_STAGES) -> tuple[list[int], list[int]]:
  """-> (the residual stream of every block's output, each stream's width in `stages`). The stem writes stream 0;
  a stage that keeps its input width (no downsampling, or 256 -> 256) continues its input's stream."""
  groups, widths, width = [], [stages[0][0]], stages[0][0]
  for filters, blocks, _ in stages:
    if filters != width:
      widths.append(filters)
      width = filters
    groups += [len(widths) - 1] * blocks
  return groups, widths


def stream_channels(width: float = 1.0, channels=None, stages=DLIB_STAGES) -> list[int]:
  """Each residual stream's channels: `channels` as given (one count per stream of `stream_groups`), else the
  stages' widths scaled by `width`."""
  widths = stream_groups(stages)[1]
  if channels is None:
    return [scaled(w, width) for w in widths]
  if width != 1.0:
    raise ValueError(f'width={width} and channels={tuple(channels)}: give one of them, not both')
  counts = [int(c) for c in channels]
  if len(counts) != len(widths) or min(counts) < 1:
    raise ValueError(f'channels={tuple(channels)}: expected {len(widths)} counts >= 1, one per residual stream '
                     f'(dlib: {tuple(widths)})')
  return counts


def block_strides(stages=DLIB_STAGES) -> list[tuple[int, int]]:
  """[(filters, stride)] of every residual block, from the input up."""
  return [(f, 2 if (down and j == 0) else 1) for f, n, down in stages for j in range(n)]


def build_dlib_model(dtype=jnp.float32, **overrides) -> FaceNet:
  """dlib's face recognition net as a facejax FaceNet (no classifier): `forward(x)['raw_embedding']` is dlib's
  128-d descriptor, `embed(x)` its L2-normalised version. `x`: `dlib_preprocessing().apply(uint8 chips)`."""
  return FaceNet(DlibResNet(dtype=dtype, **overrides), num_classes=0, embed_dim=DESCRIPTOR_DIM, dtype=dtype)


def dlib_descriptors(model: FaceNet, variables: dict, means=DLIB_MEANS):
  """-> jitted fn(uint8 [B, 150, 150, 3] aligned RGB chips) -> float32 [B, 128]: what dlib's
  `face_recognition_model_v1.compute_face_descriptor` returns for each chip (not normalised)."""

  means = jnp.asarray(means, jnp.float32)

  @jax.jit
  def fn(variables, chips):
    x = (chips.astype(jnp.float32) - means) / 256.0  # dlib's input_rgb_image, exactly
    return model.apply(variables, x, method=lambda m, x: m.embedding(m.backbone(x))).astype(jnp.float32)

  def descriptors(chips):
    chips = np.asarray(chips)
    if chips.ndim == 3:
      chips = chips[None]
    if chips.ndim != 4 or chips.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
      raise ValueError(f'chips: expected [B, {IMAGE_SIZE}, {IMAGE_SIZE}, 3] aligned face chips, got {chips.shape}')
    return fn(variables, chips)

  return descriptors
