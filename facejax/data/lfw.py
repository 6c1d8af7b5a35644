"""Verification pairs: the container shared by LFW and the synthetic pairs, and the LFW reader.

LFW: `lfw_dir/<Name>/<Name>_0001.jpg` (plain, funneled or deep-funneled trees) plus pairs.txt (View 2).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from facejax.data.decode import UnreadableImage, decode_image


@dataclasses.dataclass
class VerificationPairs:
  """P pairs over a random-access image collection.

  images: len(images), images[k] -> uint8 [H, W, 3] RGB (any H, W). names: one per image.
  left, right: int32 [P] indices into images; issame: bool [P]; fold: int32 [P] in [0, num_folds), consecutive
  blocks as in LFW pairs.txt.
  """
  images: Any
  names: list[str]
  left: np.ndarray
  right: np.ndarray
  issame: np.ndarray
  fold: np.ndarray

  def __len__(self) -> int:
    return len(self.issame)

  @property
  def num_folds(self) -> int:
    return int(self.fold.max()) + 1 if len(self.fold) else 0


class ImageFiles:
  """Random-access decoded image files: files[k] -> uint8 [H, W, 3] RGB (errors name the file)."""

  def __init__(self, paths: list[str]):
    self.paths = list(paths)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, k) -> np.ndarray:
    path = self.paths[int(k)]
    with open(path, 'rb') as f:
      data = f.read()
    try:
      return decode_image(data)
    except UnreadableImage as e:
      raise UnreadableImage(e.category, f'{path}: {e.detail}') from None


@dataclasses.dataclass(frozen=True)
class PairLine:
  """One parsed pairs.txt line: (name1, i1) vs (name2, i2), 1-based image numbers as in the file."""
  line: int
  name1: str
  index1: int
  name2: str
  index2: int
  fold: int

  @property
  def issame(self) -> bool:
    return self.name1 == self.name2


def _image_number(token: str, where: str) -> int:
  try:
    value = int(token)
  except ValueError:
    raise ValueError(f'{where}: expected an image number, got {token!r}') from None
  if value < 1:
    raise ValueError(f'{where}: expected an image number >= 1, got {value}')
  return value


def read_pairs(path: str) -> list[PairLine]:
  """Parse LFW pairs.txt (View 2: header `10 300`, then per fold 300 lines `name i j` and 300 `name1 i name2 j`;
  pairsDevTrain/Test: header `N`, one fold). Errors name the line."""
  name = os.path.basename(path)
  with open(path) as f:
    lines = [(n, line.split()) for n, line in enumerate(f, start=1)]
  lines = [(n, fields) for n, fields in lines if fields]  # tolerate blank lines (e.g. a trailing one)
  if not lines:
    raise ValueError(f'{name}: empty file, expected a header `num_folds pairs_per_half`')
  n, header = lines[0]
  try:
    num_folds, half = (1, int(header[0])) if len(header) == 1 else (int(header[0]), int(header[1]))
    if len(header) > 2 or num_folds < 1 or half < 1:
      raise ValueError
  except ValueError:
    raise ValueError(f'{name} line {n}: expected a header `num_folds pairs_per_half` (e.g. `10 300`), got '
                     f'{" ".join(header)!r}') from None
  body = lines[1:]
  if len(body) != num_folds * 2 * half:
    raise ValueError(f'{name}: header `{" ".join(header)}` promises {num_folds} x 2 x {half} = '
                     f'{num_folds * 2 * half} pair lines, found {len(body)}')
  pairs = []
  for k, (n, fields) in enumerate(body):
    where = f'{name} line {n}'
    fold, within = divmod(k, 2 * half)
    matched = within < half
    if len(fields) not in (3, 4):
      raise ValueError(f'{where}: expected 3 or 4 fields, got {len(fields)}')
    if len(fields) != (3 if matched else 4):
      kind = 'matched `name i j`' if matched else 'mismatched `name1 i name2 j`'
      raise ValueError(f'{where}: expected a {kind} pair here (fold {fold}: {half} matched then {half} '
                       f'mismatched), got {len(fields)} fields')
    if matched:
      pairs.append(PairLine(n, fields[0], _image_number(fields[1], where), fields[0],
                            _image_number(fields[2], where), fold))
    else:
      pairs.append(PairLine(n, fields[0], _image_number(fields[1], where), fields[2],
                            _image_number(fields[3], where), fold))
  return pairs


_LFW_SUBDIRS = ('', 'lfw', 'lfw-deepfunneled', 'lfw_funneled', 'lfw-funneled')
_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.JPG')


def _person_root(lfw_dir: str, some_name: str) -> str:
  """The folder that holds the <Name>/ folders: lfw_dir itself or one nested lfw*/ folder (archives unpack as
  lfw/lfw/... or lfw-deepfunneled/lfw-deepfunneled/...)."""
  for sub in _LFW_SUBDIRS:
    root = os.path.join(lfw_dir, sub)
    if os.path.isdir(os.path.join(root, some_name)):
      return root
  return lfw_dir


def lfw_image_path(root: str, name: str, number: int) -> str | None:
  """<root>/<Name>/<Name>_<number:04d>.jpg (or .jpeg/.png), None if absent."""
  stem = os.path.join(root, name, f'{name}_{number:04d}')
  for ext in _EXTENSIONS:
    if os.path.isfile(stem + ext):
      return stem + ext
  return None


def lfw_pairs(lfw_dir: str, pairs_path: str) -> VerificationPairs:
  """LFW tree (lfw/ or lfw-deepfunneled/: <Name>/<Name>_0001.jpg) + pairs.txt -> VerificationPairs.

  Images are decoded on access (uint8 [250, 250, 3] for LFW); a missing image is an error naming the line.
  """
  parsed = read_pairs(pairs_path)
  if not os.path.isdir(lfw_dir):
    raise FileNotFoundError(f'LFW directory {lfw_dir} does not exist (expected <dir>/<Name>/<Name>_0001.jpg)')
  root = _person_root(lfw_dir, parsed[0].name1)
  paths, position = [], {}
  left, right = [], []
  base = os.path.basename(pairs_path)
  for p in parsed:
    for name, number, out in ((p.name1, p.index1, left), (p.name2, p.index2, right)):
      path = lfw_image_path(root, name, number)
      if path is None:
        why = 'unknown name' if not os.path.isdir(os.path.join(root, name)) else 'no such image'
        raise FileNotFoundError(f'{base} line {p.line}: {why}: expected '
                                f'{os.path.join(root, name, f"{name}_{number:04d}.jpg")}')
      if path not in position:
        position[path] = len(paths)
        paths.append(path)
      out.append(position[path])
  names = [os.path.relpath(path, root) for path in paths]
  return VerificationPairs(images=ImageFiles(paths), names=names, left=np.asarray(left, np.int32),
                           right=np.asarray(right, np.int32), issame=np.array([p.issame for p in parsed]),
                           fold=np.asarray([p.fold for p in parsed], np.int32))
