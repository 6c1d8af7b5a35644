"""Identity folders (`root/<identity>/<image>`, FaceScrub / MSRA-CFW / CASIA-WebFace style) -> TFDS ArrayRecord.

Preparation decodes every file once (robustly, see decode.py), skips and counts unreadable ones, drops
identities with fewer than `min_images` usable images, splits train/val by identity or by image, and writes
records {'image': encoded JPEG/PNG, 'label', 'identity', 'filename'} with tensorflow-datasets (no TensorFlow).
Train labels are [0, num_train_identities); with split_by='identity' the val identities follow them.

With `align` ('hog', 'cnn' or 'hog+cnn', see align.py) the photos are first turned into aligned chips under
`aligned_dir(data_dir, name)/chips/` (once: a done marker there makes it resumable), and the chips are prepared;
photos without a face are skipped and counted in the summary's 'align' entry.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from facejax.data.align import CHIP_PADDING, CHIP_SIZE
from facejax.data.decode import MAX_PIXELS, DecodeSummary, UnreadableImage, decode_image

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm', '.pgm')
_KEEP_AS_IS = ('JPEG', 'PNG')  # formats stored with their original bytes when already RGB


@dataclasses.dataclass(frozen=True)
class ScannedImage:
  path: str  # relative to the root: <identity>/<file>
  identity: str
  reencode: bool  # True: store the converted RGB as PNG instead of the original bytes


def _check_file(root: str, rel: str, max_pixels: int, min_side: int):
  """-> (rel, source mode or None, reencode) or (rel, UnreadableImage)."""
  with open(os.path.join(root, rel), 'rb') as f:
    data = f.read()
  try:
    decode_image(data, max_pixels=max_pixels, min_side=min_side)
  except UnreadableImage as e:
    return rel, e
  img = Image.open(io.BytesIO(data))
  return rel, img.mode, not (img.format in _KEEP_AS_IS and img.mode == 'RGB')


def scan_identity_folders(root: str, *, min_images: int = 1, max_pixels: int = MAX_PIXELS, min_side: int = 16,
                          num_threads: int = 4) -> tuple[list[ScannedImage], dict, DecodeSummary]:
  """Walk root/<identity>/<image>, decode every image once; -> (usable images of kept identities, sorted;
  counts; decode summary). Files with other extensions or outside identity folders are counted as ignored."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f'identity-folder root {root} does not exist (expected {root}/<identity>/<image>.jpg)')
  candidates, ignored = [], 0
  for entry in sorted(os.scandir(root), key=lambda e: e.name):
    if entry.name.startswith('.'):
      continue
    if not entry.is_dir():
      ignored += 1
      continue
    for dirpath, dirnames, filenames in os.walk(entry.path):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
      for fn in sorted(filenames):
        if fn.startswith('.'):
          continue
        rel = os.path.relpath(os.path.join(dirpath, fn), root)
        if os.path.splitext(fn)[1].lower() in IMAGE_EXTENSIONS:
          candidates.append(rel)
        else:
          ignored += 1
  if not candidates:
    raise ValueError(f'{root}: no image files found; expected {root}/<identity>/<image>.jpg')
  summary = DecodeSummary()
  usable: dict[str, list[ScannedImage]] = {}
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:  # Pillow decodes without the GIL
    for result in pool.map(lambda rel: _check_file(root, rel, max_pixels, min_side), candidates):
      rel = result[0]
      if isinstance(result[1], UnreadableImage):
        summary.add_skipped(rel, result[1])
        continue
      summary.add_ok(result[1])
      identity = rel.split(os.sep)[0]
      usable.setdefault(identity, []).append(ScannedImage(rel, identity, result[2]))
  kept = {k: v for k, v in usable.items() if len(v) >= min_images}
  counts = {
      'identity_folders': sum(1 for e in os.scandir(root) if e.is_dir() and not e.name.startswith('.')),
      'identities_with_usable_images': len(usable),
      'identities_kept': len(kept),
      'identities_below_min_images': len(usable) - len(kept),
      'images_below_min_images': sum(len(v) for k, v in usable.items() if k not in kept),
      'files_ignored': ignored,
  }
  return [im for k in sorted(kept) for im in kept[k]], counts, summary


def split_images(images: list[ScannedImage], split_by: str, val_fraction: float, seed: int):
  """-> (identity names in label order, {'train': [...], 'val': [...]}); train identities come first."""
  identities = sorted({im.identity for im in images})
  by_identity = {k: [] for k in identities}
  for im in images:
    by_identity[im.identity].append(im)
  rng = np.random.default_rng(seed)
  if split_by == 'identity':
    n_val = int(round(val_fraction * len(identities)))
    if val_fraction > 0 and len(identities) >= 2:
      n_val = min(max(n_val, 1), len(identities) - 1)
    perm = rng.permutation(len(identities))
    val_ids = sorted(identities[i] for i in perm[:n_val])
    train_ids = sorted(set(identities) - set(val_ids))
    return train_ids + val_ids, {'train': [im for k in train_ids for im in by_identity[k]],
                                 'val': [im for k in val_ids for im in by_identity[k]]}
  if split_by == 'image':
    train, val = [], []
    for k in identities:
      group = by_identity[k]
      n_val = min(int(val_fraction * len(group)), len(group) - 1)  # every identity keeps >= 1 training image
      perm = rng.permutation(len(group))
      val += [group[i] for i in sorted(perm[:n_val])]
      train += [group[i] for i in sorted(perm[n_val:])]
    return identities, {'train': train, 'val': val}
  raise ValueError(f"split_by: expected 'identity' or 'image', got {split_by!r}")


@dataclasses.dataclass
class FoldersConfig(tfds.core.BuilderConfig):
  """How to turn a folder tree into splits; `name` names the prepared dataset (e.g. 'casia')."""
  split_by: str = 'identity'
  val_fraction: float = 0.1
  min_images: int = 2
  min_side: int = 16
  max_pixels: int = MAX_PIXELS
  seed: int = 0


class FacejaxFolders(tfds.core.GeneratorBasedBuilder):
  """Identity folders from --manual_dir -> ArrayRecord shards (see module docstring)."""
  VERSION = tfds.core.Version('1.0.0')
  # No registered configs: every FoldersConfig (the default name 'default' included) is a custom one, so any
  # --name works. tfds refuses a custom config that shares a registered config's name, and registering one
  # would pin its split settings. The path stays data_dir/facejax_folders/<name>/<version> (see prepared_dir).
  BUILDER_CONFIGS = []
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'Pass the identity-folder root (root/<identity>/<image>.jpg) as manual_dir.'

  # No download checksums to locate (tfds would look for them next to the code, which needs the optional
  # importlib_resources package).
  code_path = None

  def __init__(self, *, manual_dir: str | None = None, summary_extra: dict | None = None, **kwargs):
    self._facejax_manual_dir, self._summary_extra = manual_dir, summary_extra or {}
    super().__init__(**kwargs)

  def _info(self):
    self._scan()
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.ClassLabel(names=self._label_names or ['none']),
            'identity': tfds.features.Text(),
            'filename': tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _scan(self):
    """Scan manual_dir once (the label names are part of the features, so _info needs them)."""
    if getattr(self, '_split_images', None) is not None:
      return
    self._label_names, self._split_images, self.summary = None, None, None
    manual_dir = getattr(self, '_facejax_manual_dir', None)
    if manual_dir is None:
      return  # reading an existing dataset: features come from dataset_info.json
    c = self.builder_config
    images, counts, decode_summary = scan_identity_folders(manual_dir, min_images=c.min_images,
                                                           max_pixels=c.max_pixels, min_side=c.min_side)
    if not images:
      raise ValueError(f'{manual_dir}: no identity has >= {c.min_images} usable images ({counts})')
    self._label_names, self._split_images = split_images(images, c.split_by, c.val_fraction, c.seed)
    self._manual_dir = manual_dir
    splits = {name: {'identities': len({im.identity for im in ims}), 'images': len(ims)}
              for name, ims in self._split_images.items() if ims}
    self.summary = {'root': manual_dir, 'config': {k: getattr(c, k) for k in ('name', 'split_by', 'val_fraction', 'min_images', 'min_side',
                                                              'max_pixels', 'seed')}, **counts,
                    'decode': decode_summary.to_dict(), 'splits': splits,
                    'num_classes': {'train': splits['train']['identities'], 'val': len(self._label_names)},
                    **self._summary_extra}
    self.decode_summary = decode_summary

  def _split_generators(self, dl_manager):
    self.info.metadata['summary'] = self.summary
    return {name: self._generate_examples(ims) for name, ims in self._split_images.items() if ims}

  def _generate_examples(self, images):
    for im in images:
      path = os.path.join(self._manual_dir, im.path)
      with open(path, 'rb') as f:
        data = f.read()
      if im.reencode:
        buf = io.BytesIO()
        Image.fromarray(decode_image(data, max_pixels=self.builder_config.max_pixels)).save(buf, format='PNG')
        data = buf.getvalue()
      yield im.path, {'image': data, 'label': im.identity, 'identity': im.identity, 'filename': im.path}


def prepared_dir(data_dir: str, name: str = 'default') -> str:
  """Where `prepare_folders(..., name=name)` writes: data_dir/facejax_folders/<name>/<version>."""
  return os.path.join(data_dir, FacejaxFolders.name, name, str(FacejaxFolders.VERSION))


def read_summary(dataset_dir: str) -> dict | None:
  """The preparation summary stored with a prepared dataset (metadata.json), None if absent."""
  path = os.path.join(dataset_dir, 'metadata.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get('summary')


ALIGN_CHOICES = ('none', 'hog', 'cnn', 'hog+cnn')
ALIGN_DONE = 'done.json'  # written last: its presence means the chips tree is complete
ALIGN_REPORT = 'align_report.json'  # align_folder's report: every photo without a face or unreadable, by path


def aligned_dir(data_dir: str, name: str = 'default') -> str:
  """Where `prepare_folders(..., align=...)` writes chips (chips/<identity>/<image>.png) and its reports."""
  return os.path.join(data_dir, 'aligned', name)


def align_once(manual_dir: str, out_dir: str, *, detector: str, upsample: int = 1, size: int = CHIP_SIZE,
               padding: float = CHIP_PADDING) -> dict:
  """Align every photo under manual_dir into out_dir/chips (the same identity tree, PNG chips), unless out_dir
  holds a done marker for the same settings -> the marker: {'detector', 'upsample', 'size', 'padding', 'source',
  'chips', 'report', 'aligned', 'no_face', 'unreadable'} (the last two are counts; the paths are in the report).

  An interrupted run has no marker and aligns again (chips are overwritten); a marker for other settings is an
  error, not a silent re-alignment. The marker's paths are absolute, and read back as out_dir's own (markers
  once stored them relative to the working directory of the run that aligned, which another directory then
  misread as no chips).
  """
  from facejax.data.align import align_folder  # pylint: disable=g-import-not-at-top  (dlib is optional)
  source = os.path.abspath(manual_dir)
  settings = {'detector': detector, 'upsample': int(upsample), 'size': int(size), 'padding': float(padding)}
  out_dir = os.path.abspath(out_dir)
  done = os.path.join(out_dir, ALIGN_DONE)
  if os.path.exists(done):
    with open(done) as f:
      marker = json.load(f)
    stored = {k: marker.get(k) for k in ('source', *settings)}
    if stored != {'source': source, **settings}:
      raise ValueError(f'{out_dir}: already aligned with {stored}, asked for {settings} from {source}; delete it to '
                       f'align again, or choose another --name')
    return dict(marker, chips=os.path.join(out_dir, 'chips'), report=os.path.join(out_dir, ALIGN_REPORT))
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f'identity-folder root {manual_dir} does not exist (expected '
                            f'{manual_dir}/<identity>/<image>.jpg)')
  chips = os.path.join(out_dir, 'chips')
  report = align_folder(manual_dir, chips, extensions=IMAGE_EXTENSIONS, **settings)
  counts = {k: len(v) if isinstance(v, (list, tuple)) else v for k, v in report.items()}
  if not report.get('aligned'):
    raise ValueError(f'{manual_dir}: the {detector} detector (upsample={upsample}) found a face in none of its '
                     f'photos ({counts}); expected {manual_dir}/<identity>/<image>.jpg face photos')
  _write_json_atomic(os.path.join(out_dir, ALIGN_REPORT), {'source': source, **settings, **report})
  marker = {'source': source, **settings, 'chips': chips, 'report': os.path.join(out_dir, ALIGN_REPORT), **counts}
  _write_json_atomic(done, marker)
  return marker


def _write_json_atomic(path: str, payload: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(payload, f, indent=2)
  os.replace(path + '.tmp', path)


def prepare_folders(manual_dir: str, data_dir: str, *, name: str = 'default', split_by: str = 'identity',
                    val_fraction: float = 0.1, min_images: int = 2, min_side: int = 16,
                    max_pixels: int = MAX_PIXELS, seed: int = 0, align: str = 'none', align_upsample: int = 1,
                    align_size: int = CHIP_SIZE, align_padding: float = CHIP_PADDING
                    ) -> tuple[str, dict, DecodeSummary | None]:
  """Prepare identity folders once -> (dataset dir for `TfdsSource`, summary dict, decode summary).

  align: 'none' (the photos as they are) or a detector ('hog', 'cnn', 'hog+cnn'): `align_once` into
  `aligned_dir(data_dir, name)` first, then the chips are prepared; summary['align'] is its marker (counts of
  aligned photos, photos without a face and unreadable ones, all skipped).
  An already prepared dataset is reused (its stored summary is returned, decode summary None); one prepared with
  another `align` is an error.
  """
  if align not in ALIGN_CHOICES:
    raise ValueError(f'align={align!r}: expected one of {ALIGN_CHOICES}')
  out = prepared_dir(data_dir, name)
  if os.path.exists(os.path.join(out, 'dataset_info.json')):
    summary = read_summary(out)
    stored = ((summary or {}).get('align') or {}).get('detector', 'none')
    if stored != align:
      raise ValueError(f'{out}: already prepared with align={stored!r}, asked for align={align!r}; delete it to '
                       f'prepare again, or choose another --name')
    return out, summary, None
  extra = {}
  if align != 'none':
    extra['align'] = align_once(manual_dir, aligned_dir(data_dir, name), detector=align, upsample=align_upsample,
                                size=align_size, padding=align_padding)
    manual_dir = extra['align']['chips']
  config = FoldersConfig(name=name, split_by=split_by, val_fraction=val_fraction, min_images=min_images,
                         min_side=min_side, max_pixels=max_pixels, seed=seed)
  builder = FacejaxFolders(manual_dir=manual_dir, summary_extra=extra, config=config, data_dir=data_dir,
                           file_format='array_record')
  tfds.disable_progress_bar()
  with _split_in_memory(builder, manual_dir):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return str(builder.data_dir), builder.summary, builder.decode_summary


@contextlib.contextmanager
def _split_in_memory(builder: FacejaxFolders, manual_dir: str):
  """TFDS's writer spills a split of over 1 GB to disk through tf.io.gfile, i.e. TensorFlow, which facejax does
  not install (the preparation would fail there with "No module named 'tensorflow'"). Let it hold the largest
  split in memory instead (its encoded images, once), or say up front that this machine's memory cannot."""
  from tensorflow_datasets.core import shuffle  # pylint: disable=g-import-not-at-top
  builder.info  # pylint: disable=pointless-statement  (scans manual_dir)
  sizes = [sum(os.path.getsize(os.path.join(manual_dir, im.path)) * (3 if im.reencode else 1) for im in ims)
           for ims in builder._split_images.values()]  # pylint: disable=protected-access
  need = int(1.2 * max(sizes, default=0)) + (64 << 20)  # + the records' other fields and framing
  free = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_AVPHYS_PAGES')
  if need > shuffle.MAX_MEM_BUFFER_SIZE and need > free // 2:
    raise MemoryError(f'{manual_dir}: its largest split needs ~{need / 2**30:.1f} GiB in memory to be written '
                      f'(half of the {free / 2**30:.1f} GiB free here is the limit; TFDS spills larger splits to '
                      f'disk only through TensorFlow, which facejax does not install): split the folder into '
                      f'several datasets (--name) or prepare it on a machine with more memory')
  old = shuffle.MAX_MEM_BUFFER_SIZE
  shuffle.MAX_MEM_BUFFER_SIZE = max(old, need)
  try:
    yield
  finally:
    shuffle.MAX_MEM_BUFFER_SIZE = old
