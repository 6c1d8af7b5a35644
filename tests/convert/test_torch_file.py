"""facejax.convert.torch_file reads torch.save files without torch: equal to torch.load(weights_only=True)."""
import collections
import pickle

import numpy as np
import pytest

from facejax.convert import torch_file

torch = pytest.importorskip('torch')


class Thing:  # not a state-dict entry
  pass


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_load_equals_torch_load(tmp_path, legacy):
  g = torch.Generator().manual_seed(0)
  w = torch.randn(4, 6, generator=g)
  sd = collections.OrderedDict(
      w=w, transposed=w.t(), strided=w[1:3, ::2], half=torch.randn(3, generator=g).half(),
      bf16=torch.randn(5, generator=g).bfloat16(), scalar=torch.tensor(7), int8=torch.arange(-3, 3, dtype=torch.int8),
      bool=torch.tensor([True, False]), param=torch.nn.Parameter(torch.randn(2, generator=g)), empty=torch.zeros(0, 3))
  path = str(tmp_path / 'x.pth')
  torch.save({'epoch': 3, 'state_dict': sd, 'names': ['a', 'b']}, path, _use_new_zipfile_serialization=not legacy)
  got, ref = torch_file.load(path), torch.load(path, weights_only=True)
  assert got['epoch'] == 3 and got['names'] == ['a', 'b'] and list(got['state_dict']) == list(sd)
  for k, t in ref['state_dict'].items():
    want = (t.float() if t.dtype == torch.bfloat16 else t).detach().numpy()
    assert got['state_dict'][k].dtype == want.dtype and got['state_dict'][k].shape == want.shape, k
    np.testing.assert_array_equal(got['state_dict'][k], want, err_msg=k)


def test_refuses_what_is_not_a_state_dict(tmp_path):
  path = str(tmp_path / 'thing.pth')
  torch.save({'w': torch.ones(2), 'thing': Thing()}, path)
  with pytest.raises(pickle.UnpicklingError, match=r'thing.pth: holds a .*test_torch_file.Thing; expected only '
                                                   r'tensors, containers and numbers \(a state dict\)'):
    torch_file.load(path)
  (tmp_path / 'junk.pth').write_bytes(b'not a checkpoint')
  with pytest.raises(ValueError, match=r'junk.pth: not a torch.save file'):
    torch_file.load(str(tmp_path / 'junk.pth'))
