"""The synthetic faces as a TFDS builder, so the demo can run through the same ArrayRecord path as real data.

Images are stored as PNG (lossless): a prepared record decodes to exactly `SyntheticFaces(...)[index]['image']`.
Split 'train' holds identities [identity_offset, identity_offset + num_identities); the optional 'val' split
the next num_val_identities (disjoint, labels from 0).
"""
from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from facejax.data.synthetic import SyntheticFaces


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  num_identities: int = 100
  images_per_identity: int = 10
  image_size: int = 64
  difficulty: float = 1.0
  seed: int = 0
  identity_offset: int = 0
  num_val_identities: int = 0


def synthetic_config_name(num_identities, images_per_identity, image_size, difficulty, seed, identity_offset,
                          num_val_identities) -> str:
  return (f'ids{num_identities}_imgs{images_per_identity}_s{image_size}_d{difficulty:g}_seed{seed}'
          f'_off{identity_offset}_val{num_val_identities}')


class FacejaxSynthetic(tfds.core.GeneratorBasedBuilder):
  """Procedural face identities (facejax.data.synthetic) -> ArrayRecord."""
  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [SyntheticConfig(name='default')]
  code_path = None  # no download checksums (see folders.FacejaxFolders)

  def _info(self):
    c = self.builder_config
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(c.image_size, c.image_size, 3), encoding_format='png'),
            'label': tfds.features.ClassLabel(num_classes=max(c.num_identities, c.num_val_identities)),
            'identity': tfds.features.Text(),
            'index': tfds.features.Scalar(dtype=np.int32),
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _sources(self):
    c = self.builder_config
    out = {'train': SyntheticFaces(c.num_identities, c.images_per_identity, c.image_size, c.difficulty, c.seed,
                                   c.identity_offset)}
    if c.num_val_identities:
      out['val'] = SyntheticFaces(c.num_val_identities, c.images_per_identity, c.image_size, c.difficulty, c.seed,
                                  c.identity_offset + c.num_identities)
    return out

  def _split_generators(self, dl_manager):
    sources = self._sources()
    self.info.metadata['summary'] = {
        'splits': {k: {'identities': s.num_identities, 'images': len(s)} for k, s in sources.items()},
        'num_classes': {k: s.num_identities for k, s in sources.items()}}
    return {k: self._generate_examples(s) for k, s in sources.items()}

  def _generate_examples(self, source):
    for i in range(len(source)):
      r = source[i]
      buf = io.BytesIO()
      Image.fromarray(r['image']).save(buf, format='PNG', compress_level=1)
      yield i, {'image': buf.getvalue(), 'label': int(r['label']), 'identity': r['identity'], 'index': i}


def prepare_synthetic(data_dir: str, *, num_identities: int = 100, images_per_identity: int = 10,
                      image_size: int = 64, difficulty: float = 1.0, seed: int = 0, identity_offset: int = 0,
                      num_val_identities: int = 0) -> str:
  """Write the synthetic faces as ArrayRecord once -> dataset dir for `TfdsSource` (reused if present)."""
  kw = dict(num_identities=num_identities, images_per_identity=images_per_identity, image_size=image_size,
            difficulty=difficulty, seed=seed, identity_offset=identity_offset,
            num_val_identities=num_val_identities)
  config = SyntheticConfig(name=synthetic_config_name(**kw), **kw)
  builder = FacejaxSynthetic(config=config, data_dir=data_dir, file_format='array_record')
  if not os.path.exists(os.path.join(str(builder.data_dir), 'dataset_info.json')):
    tfds.disable_progress_bar()
    builder.download_and_prepare()
  return str(builder.data_dir)
