"""A prepared TFDS dataset (ArrayRecord) as a grain record source for `train_loader` / `eval_batches`."""
from __future__ import annotations

import json
import os

import numpy as np
import tensorflow_datasets as tfds


class TfdsSource:
  """Random access over one split of a prepared dataset directory (.../<name>/<config>/<version>).

  source[i] -> {'image': encoded bytes (the loader decodes it), 'label': int32, 'identity': str, 'index': int32}.
  Opened lazily and re-opened after pickling, so grain worker processes can use it.
  """

  def __init__(self, dataset_dir: str, split: str = 'train'):
    if not os.path.exists(os.path.join(dataset_dir, 'dataset_info.json')):
      raise FileNotFoundError(f'{dataset_dir}: not a prepared TFDS dataset (no dataset_info.json); run '
                              f'`python -m launch.prepare_data` first')
    self.dataset_dir, self.split = str(dataset_dir), split
    self._ds = None
    self._labels = None
    with open(os.path.join(dataset_dir, 'dataset_info.json')) as f:
      splits = [s['name'] for s in json.load(f).get('splits', [])]
    if split not in splits:
      raise ValueError(f'{dataset_dir}: no split {split!r}; expected one of {splits}')
    summary = {}
    if os.path.exists(os.path.join(dataset_dir, 'metadata.json')):
      with open(os.path.join(dataset_dir, 'metadata.json')) as f:
        summary = json.load(f).get('summary') or {}
    self.summary = summary
    self._num_classes = (summary.get('num_classes') or {}).get(split)

  @property
  def ds(self):
    if self._ds is None:
      builder = tfds.builder_from_directory(self.dataset_dir)
      self._ds = builder.as_data_source(split=self.split, decoders={'image': tfds.decode.SkipDecoding()})
      if self._num_classes is None:
        self._num_classes = builder.info.features['label'].num_classes
    return self._ds

  @property
  def num_classes(self) -> int:
    if self._num_classes is None:
      self.ds  # pylint: disable=pointless-statement
    return int(self._num_classes)

  def __len__(self) -> int:
    return len(self.ds)

  def _record(self, i: int, raw: dict) -> dict:
    ident = raw.get('identity', b'')
    return {'image': raw['image'], 'label': np.int32(raw['label']),
            'identity': ident.decode() if isinstance(ident, bytes) else str(ident), 'index': np.int32(i)}

  def __getitem__(self, i) -> dict:
    i = int(i)
    return self._record(i, self.ds[i])

  @property
  def labels(self) -> np.ndarray:
    """int32 [N], read once from every record (no image decoding)."""
    if self._labels is None:
      n, chunk = len(self), 1024
      out = np.empty(n, np.int32)
      for start in range(0, n, chunk):
        idx = list(range(start, min(start + chunk, n)))
        out[start:start + len(idx)] = [r['label'] for r in self.ds.__getitems__(idx)]
      self._labels = out
    return self._labels

  def __getstate__(self):
    return {'dataset_dir': self.dataset_dir, 'split': self.split, 'labels': self._labels}

  def __setstate__(self, state):
    self.__init__(state['dataset_dir'], state['split'])
    self._labels = state['labels']

  def __repr__(self) -> str:
    return f'TfdsSource({self.dataset_dir!r}, split={self.split!r})'
