"""Jitted embedding functions: uint8 RGB images in, L2-normalised float32 embeddings out.

`make_embed_fn` closes the preprocessing, the model and (optionally) flip test-time augmentation into one
compiled function; `embed_images` streams a random-access image collection through it in fixed-size batches
(the last batch is padded, so a dataset of any length compiles exactly once).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from facejax.models.heads import l2_normalize

FLIP_MODES = (None, 'sum', 'concat')


def flip_mode(flip: str | None) -> str | None:
  """A flip setting as configs and flags spell it ('' / None / 'none' -> None; 'sum' / 'concat' unchanged)."""
  if flip in (None, '', 'none'):
    return None
  if flip not in FLIP_MODES:
    raise ValueError(f"flip={flip!r}: expected one of '', 'sum', 'concat'")
  return flip


def raw_embed_forward(model, variables) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """The reference (un-normalised) embedding forward of a FaceNet: float model input [B, H, W, 3] -> [B, D]."""

  def forward(x):
    return model.apply(variables, x, method=lambda m, x: m.embedding(m.backbone(x, train=False), train=False))

  return forward


def flip_tta(raw_fn: Callable[[jnp.ndarray], jnp.ndarray], x: jnp.ndarray, flip: str | None) -> jnp.ndarray:
  """[B, H, W, 3] -> [B, D] (flip None/'sum') or [B, 2D] ('concat'), L2-normalised.

  The original and the horizontally flipped images go through the network as one batch of 2B (one call, better
  matmul shapes); 'sum' adds the two un-normalised embeddings (the insightface/LFW convention), 'concat' joins
  the two normalised embeddings.
  """
  if flip not in FLIP_MODES:
    raise ValueError(f'flip={flip!r}: expected one of {FLIP_MODES}')
  if flip is None:
    return l2_normalize(raw_fn(x))
  # Stacked and split by reshapes, not concatenated and sliced at B: jax2onnx keeps a symbolic B through these.
  raw = raw_fn(jnp.stack([x, x[:, :, ::-1, :]]).reshape((-1,) + x.shape[1:])).astype(jnp.float32)
  a, f = raw.reshape((2, -1) + raw.shape[1:])
  if flip == 'sum':
    return l2_normalize(a + f)
  return l2_normalize(jnp.concatenate([l2_normalize(a), l2_normalize(f)], axis=-1))


def make_embed_fn(model, variables, preprocessing, image_size: int, flip: str | None = None, *,
                  optimize: bool | dict = False, raw: bool = False) -> Callable[[Any], jnp.ndarray]:
  """-> jitted fn(uint8 [B, image_size, image_size, 3] RGB) -> float32 [B, D] L2-normalised ([B, 2D] for
  flip='concat'); raw=True: the embedding head's output before L2 normalisation (dlib's descriptors for its
  converted net), single images only.

  `optimize=False` runs the reference flax forward (variables passed as arguments); `optimize=True` (or a dict
  of `optimize_for_inference` options, e.g. `optimize.onednn_options()`) runs the BN-folded, rewritten inference
  forward from `facejax.inference.optimize`, numerically equal within the tolerances stated there.
  """
  if flip not in FLIP_MODES:
    raise ValueError(f'flip={flip!r}: expected one of {FLIP_MODES}')
  if raw and flip:
    raise ValueError(f'flip={flip!r}: raw embeddings are single-image descriptors; expected no flip TTA')

  def head(raw_fn, x):
    return raw_fn(x).astype(jnp.float32) if raw else flip_tta(raw_fn, x, flip)

  def check(images):
    if images.ndim != 4 or images.shape[1:] != (image_size, image_size, 3):
      raise ValueError(f'images: expected [B, {image_size}, {image_size}, 3], got {tuple(images.shape)}')

  if isinstance(optimize, dict) or optimize:  # {} = the default options, not "off"
    from facejax.inference import optimize as opt
    options = dict(optimize) if isinstance(optimize, dict) else {}
    raw_fn = opt.inference_forward(model, variables, image_size=image_size, **options)
    fn = jax.jit(lambda images: head(raw_fn, preprocessing.apply(images)),
                 compiler_options=raw_fn.compiler_options or None)

    def embed(images):
      check(images)
      return fn(images)

    return embed

  @jax.jit
  def fn(variables, images):
    return head(raw_embed_forward(model, variables), preprocessing.apply(images))

  variables = jax.device_put(variables)  # once: numpy leaves would be copied to the device on every call

  def embed(images):
    check(images)
    return fn(variables, images)

  return embed


def resize_center_crop(image: np.ndarray, image_size: int) -> np.ndarray:
  """uint8 [H, W, 3] (or [H, W] grey) -> uint8 [image_size, image_size, 3]: shorter side to image_size
  (bilinear, PIL), then the central square."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'image: expected [H, W, 3] or [H, W], got {image.shape}')
  h, w = image.shape[:2]
  if (h, w) == (image_size, image_size):
    return image.astype(np.uint8)
  from PIL import Image
  scale = image_size / min(h, w)
  nh, nw = max(image_size, round(h * scale)), max(image_size, round(w * scale))
  image = np.asarray(Image.fromarray(image.astype(np.uint8)).resize((nw, nh), Image.BILINEAR))
  top, left = (nh - image_size) // 2, (nw - image_size) // 2
  return image[top:top + image_size, left:left + image_size]


def _batches(images, batch_size: int, image_size: int):
  try:  # the data pipeline's deterministic resize/center-crop (also decodes encoded bytes)
    from facejax.data.loader import eval_batches
  except ImportError:
    eval_batches = None
  if eval_batches is not None:
    yield from eval_batches(images, batch_size, image_size)
    return
  for start in range(0, len(images), batch_size):
    yield np.stack([resize_center_crop(images[k], image_size) for k in range(start, min(start + batch_size, len(images)))])


def embed_images(embed_fn: Callable[[Any], jnp.ndarray], images: Sequence[np.ndarray], image_size: int,
                 batch_size: int = 64, progress: bool = False) -> np.ndarray:
  """Random-access `images` (len(), [k] -> uint8 [H, W, 3], any size) -> float32 [N, D].

  Resizing/cropping is `facejax.data.loader.eval_batches`. Every call of `embed_fn` gets exactly
  `batch_size` rows (the tail batch is padded by repeating its last image, then cut off), so it compiles once.
  """
  n = len(images)
  if n == 0:
    raise ValueError('embed_images: got an empty image collection')
  batches = _batches(images, batch_size, image_size)
  if progress:
    try:
      from tqdm import tqdm
      batches = tqdm(batches, desc='embed', unit='batch', total=-(-n // batch_size))
    except ImportError:
      pass
  out = []
  for batch in batches:
    b = len(batch)
    if b < batch_size:
      batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - b, axis=0)])
    out.append(np.asarray(embed_fn(batch))[:b])
  return np.concatenate(out).astype(np.float32)
