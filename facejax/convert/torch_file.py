"""PyTorch checkpoint files (`torch.save`: the zip format and the legacy pre-1.6 one) -> numpy, without torch.

Like `torch.load(weights_only=True)`, the pickle may only hold containers, numbers, strings and tensors: any other
class is refused with its name. Tensors come back as numpy arrays (bfloat16 as float32, exactly); a tensor that
is a strided view of a larger storage reads just its view.
"""
from __future__ import annotations

import collections
import pickle
import struct
import zipfile

import numpy as np

_STORAGES = {'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
             'BFloat16Storage': 'bfloat16', 'LongStorage': np.int64, 'IntStorage': np.int32,
             'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


class _Storage:
  """A storage named in the pickle; its bytes are read after the whole pickle (the legacy format stores them
  after it)."""

  def __init__(self, kind: str):
    self.kind, self.array = kind, None

  def fill(self, raw: bytes) -> None:
    if self.kind == 'BFloat16Storage':  # the upper half of a float32
      self.array = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
      self.array = np.frombuffer(raw, _STORAGES[self.kind])

  @property
  def itemsize(self) -> int:
    return 2 if self.kind == 'BFloat16Storage' else np.dtype(_STORAGES[self.kind]).itemsize


class _Tensor:
  def __init__(self, storage: _Storage, offset: int, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def numpy(self) -> np.ndarray:
    a = self.storage.array
    view = np.lib.stride_tricks.as_strided(a[self.offset:], self.size, [s * a.itemsize for s in self.stride])
    return np.array(view)


def _rebuild_tensor(storage, offset, size, stride, *_):
  return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, *_):
  return data


_ALLOWED = {('collections', 'OrderedDict'): collections.OrderedDict,
            ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
            ('torch._utils', '_rebuild_parameter'): _rebuild_parameter}


class _Unpickler(pickle.Unpickler):

  def __init__(self, file, path: str, storages: dict):
    super().__init__(file)
    self.path, self.storages = path, storages

  def find_class(self, module: str, name: str):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == 'torch' and name in _STORAGES:
      return name
    raise pickle.UnpicklingError(f'{self.path}: holds a {module}.{name}; expected only tensors, containers and '
                                 'numbers (a state dict)')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid[0] == 'storage') or pid[1] not in _STORAGES:
      raise pickle.UnpicklingError(f'{self.path}: unsupported storage record {pid[:2]!r}')
    if len(pid) > 5 and pid[5] is not None:
      raise pickle.UnpicklingError(f'{self.path}: storage views (torch < 0.4 files) are not supported')
    return self.storages.setdefault(str(pid[2]), _Storage(pid[1]))


def _materialize(obj):
  if isinstance(obj, _Tensor):
    return obj.numpy()
  if isinstance(obj, dict):
    return type(obj)((k, _materialize(v)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialize(v) for v in obj)
  return obj


def load(path: str):
  """A `torch.save` file -> the same object with every tensor a numpy array."""
  storages: dict[str, _Storage] = {}
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as z:
      names = z.namelist()
      pkl = next((n for n in names if n.endswith('data.pkl')), None)
      if pkl is None:
        raise ValueError(f'{path}: a zip file without data.pkl (expected a torch.save checkpoint)')
      prefix = pkl[:-len('data.pkl')]
      if (z.read(prefix + 'byteorder') if prefix + 'byteorder' in names else b'little') != b'little':
        raise ValueError(f'{path}: a big-endian torch checkpoint; expected little-endian')
      with z.open(pkl) as f:
        obj = _Unpickler(f, path, storages).load()
      for key, storage in storages.items():
        storage.fill(z.read(f'{prefix}data/{key}'))
    return _materialize(obj)
  with open(path, 'rb') as f:
    try:
      magic = pickle.load(f)
    except Exception as e:
      raise ValueError(f'{path}: not a torch.save file (neither a zip archive nor a legacy pickle)') from e
    if magic != _LEGACY_MAGIC:
      raise ValueError(f'{path}: not a torch.save file (no legacy magic number)')
    pickle.load(f), pickle.load(f)  # protocol version, system info
    obj = _Unpickler(f, path, storages).load()
    for key in pickle.load(f):
      storage = storages[str(key)]
      (numel,) = struct.unpack('<q', f.read(8))
      storage.fill(f.read(numel * storage.itemsize))
  return _materialize(obj)
