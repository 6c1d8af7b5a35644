"""align_once's done marker names its chips by absolute path, so a run started from another working directory
finds them (markers written with paths relative to the aligning run's directory still work)."""
import json
import os

from facejax.data import align, folders


def _fake_align_folder(src, dst, **settings):
  """One chip per identity, as align_folder lays them out -> its report."""
  for identity in sorted(os.listdir(src)):
    os.makedirs(os.path.join(dst, identity))
    open(os.path.join(dst, identity, 'a.png'), 'wb').close()
  return {'aligned': ['x/a.png'], 'no_face': [], 'unreadable': []}


def test_the_marker_paths_hold_from_any_working_directory(tmp_path, monkeypatch):
  os.makedirs(tmp_path / 'photos' / 'p1')
  os.makedirs(tmp_path / 'elsewhere')
  monkeypatch.setattr(align, 'align_folder', _fake_align_folder)
  monkeypatch.chdir(tmp_path)
  marker = folders.align_once('photos', os.path.join('prep', 'aligned'), detector='hog')
  chips = str(tmp_path / 'prep' / 'aligned' / 'chips')
  assert marker['chips'] == chips and marker['report'] == str(tmp_path / 'prep' / 'aligned' / folders.ALIGN_REPORT)
  done = tmp_path / 'prep' / 'aligned' / folders.ALIGN_DONE
  assert json.loads(done.read_text())['chips'] == chips
  # A marker from before: its paths relative to the directory the aligning run was started in.
  old = dict(json.loads(done.read_text()), chips=os.path.join('prep', 'aligned', 'chips'),
             report=os.path.join('prep', 'aligned', folders.ALIGN_REPORT))
  done.write_text(json.dumps(old))
  monkeypatch.setattr(align, 'align_folder', lambda *a, **kw: (_ for _ in ()).throw(AssertionError('aligned again')))
  monkeypatch.chdir(tmp_path / 'elsewhere')
  again = folders.align_once(str(tmp_path / 'photos'), str(tmp_path / 'prep' / 'aligned'), detector='hog')
  assert again['chips'] == chips and os.listdir(again['chips']) == ['p1']
