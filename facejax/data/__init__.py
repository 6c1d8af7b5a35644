"""Data: synthetic faces/objects, identity folders and LFW via TFDS (no TensorFlow), grain loaders.

Record sources (len(source), source[i] -> {'image', 'label', 'identity', 'index'}) feed `train_loader`;
`make_source(name, **kwargs)` builds one from a config.
"""
from facejax.data.lfw import VerificationPairs, lfw_pairs, read_pairs
from facejax.data.loader import eval_batches, train_loader
from facejax.data.synthetic import SourceImages, SyntheticFaces, SyntheticObjects, synthetic_pairs

SOURCES = ('synthetic', 'synthetic_objects', 'synthetic_tfds', 'folders', 'tfds')


def make_source(name: str, /, **kwargs):
  """Record source by name:
    'synthetic'          SyntheticFaces(num_identities, images_per_identity, image_size, difficulty, seed, ...)
    'synthetic_objects'  SyntheticObjects(num_classes, images_per_class, image_size, seed)
    'synthetic_tfds'     the synthetic faces prepared as ArrayRecord under data_dir (prepared on first use);
                         kwargs: data_dir, split='train', and prepare_synthetic's arguments
    'folders'            identity folders prepared by `launch.prepare_data --dataset=folders`;
                         kwargs: data_dir, name='default' (the --name used there), split='train'
    'tfds'               any prepared dataset directory: kwargs: path (.../<dataset>/<config>/<version>), split
  """
  if name == 'synthetic':
    return SyntheticFaces(**kwargs)
  if name == 'synthetic_objects':
    return SyntheticObjects(**kwargs)
  # TFDS-backed sources import tensorflow_datasets lazily: the in-memory path stays light.
  from facejax.data.tfds_source import TfdsSource  # pylint: disable=g-import-not-at-top
  if name == 'synthetic_tfds':
    from facejax.data.synthetic_tfds import prepare_synthetic  # pylint: disable=g-import-not-at-top
    split = kwargs.pop('split', 'train')
    return TfdsSource(prepare_synthetic(**kwargs), split)
  if name == 'folders':
    from facejax.data.folders import prepared_dir  # pylint: disable=g-import-not-at-top
    return TfdsSource(prepared_dir(kwargs['data_dir'], kwargs.get('name', 'default')), kwargs.get('split', 'train'))
  if name == 'tfds':
    return TfdsSource(kwargs['path'], kwargs.get('split', 'train'))
  raise ValueError(f'unknown data source {name!r}; expected one of: {", ".join(SOURCES)}')
