"""Verification of one trained run (10-fold protocol), and the threshold `launch.verify` applies.

  python -m launch.evaluate --config=configs/lfw_eval.py --workdir=RUN                  # synthetic pairs
  python -m launch.evaluate --config=configs/lfw_eval.py --workdir=RUN \
      --config.data.lfw_dir=data/lfw --config.data.pairs=data/lfw/pairs.txt          # LFW View 2
  python -m launch.evaluate --config=configs/lfw_eval.py:lfw,classic --workdir=RUN      # classic LFW numbers

`arg`: comma-separated switches. `lfw` sets data.source='lfw' (paths default to data/lfw and data/lfw/pairs.txt);
`synthetic` forces the synthetic pairs; `classic` searches the classic grid np.arange(0, 4, 0.01) instead of the
exact thresholds; `flip` turns on flip test-time augmentation (sum).

--workdir may also be an exported model (M.jaxexport): results go to M.jaxexport.eval/<name>/, the threshold to
M.jaxexport.threshold.json (what launch.verify --workdir=M.jaxexport reads).

Writes RUN/eval/<name>/{config.json, results.json, results.md, roc.png, threshold.json} (name: config.name, default
the data source) and, with --config.calibrate=True, RUN/threshold.json, the default threshold of launch.verify
(see facejax/evaluation/evaluator.py).
"""
from __future__ import annotations

import ml_collections

from facejax.data.pairs import pairs_config
from facejax.train.config import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, 'configs/lfw_eval.py', lfw=False, synthetic=False, classic=False, flip=False)

  c = ml_collections.ConfigDict()
  c.name = ''  # eval/<name>/ subdirectory of the run; '' -> the resolved data source ('lfw' or 'synthetic_pairs')
  # The pair set (facejax.data.pairs.pairs_config, the schema of a trainer's config.val too): 'auto' reads LFW
  # when data.lfw_dir is set, else synthetic identities disjoint from the training ones (offset), 10 folds of 60
  # pairs rendered at the run's input size (image_size=0).
  c.data = pairs_config(num_identities=300, images_per_identity=8, image_size=0, difficulty=1.0, seed=0,
                        identity_offset=100_000, num_folds=10, pairs_per_fold=60)
  c.batch_size = 64
  c.flip = ''  # '' | 'sum' | 'concat': flip test-time augmentation (an exported model: '' -> its baked mode)
  # 'auto': align LFW photos (facejax.data.align, needs dlib) when the model asks for it (model.json "align",
  # e.g. dlib's converted net); 'on' | 'off' force it.
  c.align = 'auto'
  c.detector = 'hog'  # 'hog' | 'cnn' | 'hog+cnn' (CNN only where HOG finds nothing): facejax.data.align
  c.upsample = 1  # detector upsampling (1 finds faces down to ~40 px)
  # A photo the detector finds no face in (facejax.data.no_face): 'detect' (dlib's MMOD CNN, then OpenCV's Haar
  # frontal and profile cascades, then the center crop) | 'mmod' | 'haar' | 'center' | 'lfw_box' (landmarks inside
  # align.FALLBACK_BOX, LFW's framing only).
  c.no_face = 'detect'
  c.cache_dir = ''  # aligned chips (and dlib's reference descriptors) computed once per pair set, kept here
  c.workers = 2  # processes for alignment and dlib's reference (dlib computes on one thread)
  # True: the BN-folded float32 forward through oneDNN's convolutions where they are built (equal to the flax
  # forward within 1e-5; ~4x faster for dlib's net on 2 cores); False: the flax forward (what launch.embed runs)
  c.optimize = True
  c.embedding = 'normalised'  # 'normalised' (L2) | 'raw' (the embedding head's output: dlib's descriptors)
  c.reference = ''  # 'dlib': also run dlib's own pipeline on the same photos and folds (results.md, 'reference')
  c.distance = 'euclidean'  # 'euclidean' (squared L2 of normalised embeddings) | 'cosine' (1 - cos)
  c.thresholds = 'exact'  # 'exact': every distinct split | 'classic': np.arange(0, 4, 0.01), the classic scripts'
  # Every evaluation keeps its calibration in RUN/eval/<name>/threshold.json; True also makes it the default that
  # launch.verify applies (RUN/threshold.json). Explicit, so a second pair set never silently replaces it.
  c.calibrate = False
  c.progress = True

  if a.lfw:
    c.data.source = 'lfw'
    c.data.lfw_dir = 'data/lfw'
  if a.synthetic:
    c.data.source = 'synthetic_pairs'
  if a.classic:
    c.thresholds = 'classic'
  if a.flip:
    c.flip = 'sum'
  return c
