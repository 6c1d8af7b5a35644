"""Robust image decoding: any Pillow-readable file -> uint8 [H, W, 3] RGB, or `UnreadableImage` with a reason.

Real face folders contain grayscale, CMYK, palette and RGBA images, 16-bit PNGs, truncated or empty files,
non-images with a .jpg name and the occasional enormous scan. Readable ones are converted; the rest raise
`UnreadableImage` so preparation can skip and count them (see `DecodeSummary`).

Plain JPEGs (YCbCr or greyscale, the bulk of any face dataset) are decoded by libjpeg-turbo through simplejpeg:
the same pixels as Pillow (both run libjpeg-turbo's accurate DCT and fancy upsampling) in under half the time,
which is most of the training loader's work per image. Everything else, and any JPEG simplejpeg refuses, goes
through Pillow, which also names what is wrong.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import warnings

import numpy as np
import simplejpeg
from PIL import Image

# Decompression-bomb guard: refuse images above this many pixels before decoding them (about 8k x 8k).
MAX_PIXELS = 64_000_000


class UnreadableImage(ValueError):
  """An image that cannot be used; str(e) is the reason (first word is the category)."""

  def __init__(self, category: str, detail: str):
    super().__init__(f'{category}: {detail}')
    self.category, self.detail = category, detail


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS, min_side: int = 1, reduce_to: int = 0) -> np.ndarray:
  """Encoded image bytes -> uint8 [H, W, 3] RGB. Raises UnreadableImage (empty, not-an-image, truncated,
  too-large, too-small).

  reduce_to > 0: a plain JPEG at least twice that size on both sides decodes scaled by 1/2, 3/8, 1/4 or 1/8
  in the DCT domain (libjpeg-turbo), the smallest scale that keeps both sides >= reduce_to: a large photo decodes
  faster and leaves less to resize. Smaller images, and other formats, decode at full size."""
  if not data:
    raise UnreadableImage('empty', 'zero-byte file')
  fast = _decode_plain_jpeg(data, max_pixels, min_side, reduce_to)
  if fast is not None:
    return fast
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      img = Image.open(io.BytesIO(data))
  except Image.DecompressionBombError as e:
    raise UnreadableImage('too-large', str(e)) from None
  except Image.UnidentifiedImageError:
    raise UnreadableImage('not-an-image', f'no known image format (starts with {data[:12]!r})') from None
  except Exception as e:  # OSError, SyntaxError, ... from a recognised but broken header
    raise UnreadableImage('not-an-image', f'{type(e).__name__}: {e}') from None
  w, h = img.size
  if w * h > max_pixels:  # checked from the header, before any pixel is decoded
    raise UnreadableImage('too-large', f'{w}x{h} = {w * h} pixels > {max_pixels} (decompression-bomb guard)')
  if min(w, h) < min_side:
    raise UnreadableImage('too-small', f'{w}x{h}, expected both sides >= {min_side}')
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', Image.DecompressionBombWarning)
      img.load()
  except Exception as e:  # truncated JPEG/PNG data, broken streams
    raise UnreadableImage('truncated', f'{type(e).__name__}: {e}') from None
  return to_rgb(img)


def _decode_plain_jpeg(data: bytes, max_pixels: int, min_side: int, reduce_to: int) -> np.ndarray | None:
  """uint8 [H, W, 3] of a YCbCr/greyscale JPEG within the size limits, via simplejpeg; None for anything else
  (other formats, CMYK/YCCK, corrupt or truncated data, out-of-limit sizes: Pillow decides and explains)."""
  if data[:2] != b'\xff\xd8':
    return None
  try:
    h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    if colorspace not in ('YCbCr', 'Gray') or w * h > max_pixels or min(w, h) < min_side:
      return None
    return simplejpeg.decode_jpeg(data, colorspace='RGB', strict=True, min_height=reduce_to, min_width=reduce_to,
                                  min_factor=2)
  except ValueError:
    return None


def to_rgb(img: Image.Image) -> np.ndarray:
  """Any Pillow mode -> uint8 [H, W, 3] RGB (16-bit and 32-bit integer scaled to 8 bits, alpha over white)."""
  if img.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):
    x = np.asarray(img, np.float64)
    top = 65535.0 if img.mode.startswith('I;16') or x.max() > 255 else 255.0
    x = np.clip(x / top * 255 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(x[..., None], 3, axis=-1))
  if img.mode in ('RGBA', 'LA', 'PA') or (img.mode == 'P' and 'transparency' in img.info):
    img = img.convert('RGBA')
    background = Image.new('RGBA', img.size, (255, 255, 255, 255))
    img = Image.alpha_composite(background, img)
  if img.mode != 'RGB':
    img = img.convert('RGB')  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGBA (composited above)
  return np.asarray(img, np.uint8)


@dataclasses.dataclass
class DecodeSummary:
  """Counts of what preparation did with each file: converted modes and skipped files by reason."""
  total: int = 0
  ok: int = 0
  converted: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  examples: dict = dataclasses.field(default_factory=dict)  # category -> first (path, reason)

  def add_ok(self, mode: str | None = None):
    self.total += 1
    self.ok += 1
    if mode and mode != 'RGB':
      self.converted[mode] += 1

  def add_skipped(self, path: str, error: UnreadableImage):
    self.total += 1
    self.skipped[error.category] += 1
    self.examples.setdefault(error.category, (path, error.detail))

  def to_dict(self) -> dict:
    return {'total': self.total, 'ok': self.ok, 'skipped': sum(self.skipped.values()),
            'converted_from': dict(self.converted), 'skipped_by_reason': dict(self.skipped)}

  def format(self) -> str:
    lines = [f'images: {self.total} seen, {self.ok} usable, {sum(self.skipped.values())} skipped']
    for mode, n in sorted(self.converted.items()):
      lines.append(f'  converted {n} from {mode} to RGB')
    for cat, n in sorted(self.skipped.items()):
      path, reason = self.examples[cat]
      lines.append(f'  skipped {n} {cat} (e.g. {path}: {reason})')
    return '\n'.join(lines)
