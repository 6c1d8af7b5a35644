"""Defaults for one training run. Config files start from `base_config()` and change what they need;
`benchmark_config()` is the start of the throughput benchmark's (`facejax.train.throughput`), with its `bench`
section (`bench_section()`)."""
from __future__ import annotations

import ml_collections

from facejax.data.pairs import pairs_config


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = 'classify'  # 'classify' | 'distill' | 'siamese'
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 64  # global, split over processes and local devices
  c.half_precision = False  # bf16 compute, fp32 params and optimizer state
  c.resume = 'auto'  # 'auto': a workdir holding a different config is refused; 'override': resume anyway
  c.log_every = 50
  c.checkpoint_every = 200
  c.keep_checkpoints = 2
  c.eval_every = 0  # verification on config.val pairs every N steps (0: never)
  c.max_nonfinite_streak = 20  # consecutive skipped (non-finite) steps before the run stops
  c.progress = True
  c.prefetch = 'thread'  # host->device copies ahead of the step: 'thread' | 'device_put' | 'none'

  c.model = ml_collections.ConfigDict(dict(
      name='vgg_small', embed_dim=128, dropout=0.0, image_size=64,
      preprocessing='facejax',  # facejax.models.preprocessing.PREPROCESSING key (or taken from the init checkpoint)
      align='',  # 'dlib_5pt': the model reads dlib 5-point chips (model.json "align"; evaluate/verify align photos)
      classifier='softmax', cosine_scale=64.0,  # 'cosine': normalised classifier, logits = scale * cos (ArcFace)
      kwargs=ml_collections.ConfigDict()))  # module field overrides, e.g. width=0.25

  c.data = ml_collections.ConfigDict(dict(
      source='synthetic',  # facejax.data.make_source name
      kwargs=ml_collections.ConfigDict(dict(num_identities=100, images_per_identity=30, image_size=64)),
      augment=True, sampler='random', images_per_identity=4,  # sampler 'identity': P x K batches
      augment_on='host',  # 'device': the host decodes, the accelerator crops, flips and jitters (same draws)
      # True: the whole source decoded once into device memory; every batch drawn and augmented on the devices
      # (facejax.train.resident), no loader
      resident=False))

  # Where the weights start: '' (random), a facejax run dir, or a converted checkpoint dir (launch.convert).
  # mode 'backbone' copies the backbone only (transfer: new embedding + classifier); 'all' copies every matching tensor.
  c.init = ml_collections.ConfigDict(dict(path='', mode='backbone'))

  c.optim = ml_collections.ConfigDict(dict(
      name='sgd', learning_rate=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4,
      schedule='cosine', warmup_steps=50, decay_boundaries=(0.5, 0.75), decay_factor=0.1, clip_norm=5.0,
      lr_mult=ml_collections.ConfigDict(),  # path prefix -> multiplier, e.g. {'backbone': 0.1}
      freeze=()))  # path prefixes with zero updates, e.g. ('backbone/conv1_', 'backbone/conv2_')

  # bn: 'train' | 'frozen'; margin: ArcFace's additive angular margin in radians (model.classifier='cosine'; 0: none)
  c.classify = ml_collections.ConfigDict(dict(label_smoothing=0.0, bn='train', margin=0.0))
  c.distill = ml_collections.ConfigDict(dict(
      teacher_workdir='', embed_weight=1.0, embed_kind='l2', soft_weight=0.0, temperature=4.0, hard_weight=0.0,
      cache_teacher=False,  # True: run the teacher once over the data (needs data.augment=False), then look up
      hint_weight=0.0,  # > 0: each backbone stage also regresses the teacher's (train.tasks.Distill)
      # 'plain': the teacher's outputs for the batch as loaded (from the cache with cache_teacher); 'function_matching'
      # (Beyer et al. 2022): the teacher runs in the step on the augmented batch after mixup, as the student sees it
      mode='plain',
      mixup=1.0))  # function matching's mixup: a ~ Beta(mixup, mixup), folded to max(a, 1 - a)
  # mimic_weight > 0: also mimic config.distill.teacher_workdir's embeddings (cached with distill.cache_teacher).
  c.siamese = ml_collections.ConfigDict(dict(loss='contrastive', margin=1.0, mimic_weight=0.0))

  # Held-out verification pairs for periodic validation: the pair-set schema of launch.evaluate's config.data
  # (facejax.data.pairs.pairs_config); synthetic by default, LFW with --config.val.lfw_dir=DIR.
  c.val = pairs_config(num_identities=40, images_per_identity=10, image_size=64, identity_offset=100000,
                       num_folds=10, pairs_per_fold=60)
  return c


def stage_config(task: str, model: str, image_size: int, steps: int, lr: float, batch: int) -> ml_collections.ConfigDict:
  """One pipeline stage (configs/demo.py, configs/real_faces.py): base_config() with its task, model, length,
  learning rate and batch; it logs 10 times, checkpoints twice and warms up over the first tenth."""
  c = base_config()
  c.task = task
  c.total_steps = steps
  c.batch_size = batch
  c.log_every = max(1, steps // 10)
  c.checkpoint_every = max(1, steps // 2)
  c.model.name = model
  c.model.image_size = image_size
  c.optim.learning_rate = lr
  c.optim.warmup_steps = max(1, steps // 10)
  return c


def bench_section() -> ml_collections.ConfigDict:
  """The `config.bench` defaults (benchmark-only fields; `train` never reads them)."""
  return ml_collections.ConfigDict(dict(
      # Classifier size; 0: from the data source, as `train` does. Fixed, the device and pipeline runs compile
      # the same step (and share the persistent compilation cache) whatever the prepared dataset holds.
      num_classes=0,
      # Distillation teacher with random weights when config.distill.teacher_workdir is '' (speed does not
      # depend on the weights): a registry name, its embedding size, input size and preprocessing.
      teacher=ml_collections.ConfigDict(dict(name='', embed_dim=128, image_size=224, preprocessing='facejax',
                                             kwargs=ml_collections.ConfigDict())),
      # 'numpy': random variables drawn on the host (facejax.inference.benchmark.random_variables), no init
      # compile; 'trainer': the trainer's own initialisation (jitted init, config.init.path honoured).
      init='numpy',
      window=5,  # steps dispatched between two host syncs
      peak_tflops=0.0,  # per chip; 0: throughput.PEAK_BF16_TFLOPS by device kind
      # Input pipeline (data='loader').
      prefetch='thread',  # 'thread' | 'device_put' | 'none' (see DeviceFeed)
      prefetch_depth=2,  # batches on the devices ahead of the step
      num_workers=-1,  # grain worker processes; -1: cpu_count - 4 (at least 0)
      num_threads=2,  # grain read threads per process
      grain_prefetch=2,  # grain prefetch buffer (batches) per process
      cache='none',  # 'none' | 'decoded': decode every record once into memory first (threads only)
      loader_seconds=3.0,  # loader-only throughput timed this long after its warm-up (0: skip)
  ))


# Models shrunk for CPU smoke runs (`:tiny`): same registry names and code paths, 1/16-1/8 of the width.
TINY_KWARGS = {'resnet50': dict(width=0.0625), 'vgg16': dict(width=0.0625, fc_dims=(32, 32)),
               'mobilefacenet': dict(width=0.125, out_dim=32), 'resnet18': dict(width=0.125)}
TINY_FIELDS = {k for kwargs in TINY_KWARGS.values() for k in kwargs}


def benchmark_config(task: str, model: str, *, image_size: int, batch_size: int = 256, num_classes: int = 10575,
                     data_dir: str = '', teacher: str = '', teacher_image_size: int = 224,
                     tiny: bool = False, model_kwargs: dict | None = None) -> ml_collections.ConfigDict:
  """A training config for `throughput.benchmark_training`: bf16 compute, the trainer's default optimizer, a fixed class
  count (CASIA-WebFace's 10,575 by default) and data from the bench folders prepared under `data_dir`
  (`throughput_input.prepare_bench_folders`), else the on-the-fly synthetic faces at 250x250.

  tiny: the same models (and dtype) at a fraction of their width, 32x32 inputs, batch 8, 16 classes: a CPU
  smoke run of the same code paths. model_kwargs: module fields of the student (config.model.kwargs)."""
  c = base_config()
  c.task = task
  c.half_precision = True
  c.batch_size = batch_size
  c.total_steps = 10_000  # the schedule's length only; the benchmark runs what it is told
  c.progress = False
  c.model.name = model
  c.model.image_size = image_size
  c.bench = bench_section()
  c.bench.num_classes = num_classes
  if data_dir:
    c.data.source = 'folders'
    c.data.kwargs = ml_collections.ConfigDict(dict(data_dir=data_dir, name='bench'))
  else:
    c.data.kwargs = ml_collections.ConfigDict(dict(num_identities=200, images_per_identity=8, image_size=250))
  if teacher:
    c.bench.teacher.name = teacher
    c.bench.teacher.image_size = teacher_image_size
  if tiny:
    c.batch_size = 8
    c.model.image_size = 32
    c.model.kwargs = ml_collections.ConfigDict(TINY_KWARGS.get(model, {}))
    c.bench.num_classes = 16
    c.bench.teacher.image_size = 32
    c.bench.teacher.kwargs = ml_collections.ConfigDict(TINY_KWARGS.get(teacher, {}))
    c.bench.num_workers = 0
    c.bench.loader_seconds = 0.5
    if not data_dir:
      c.data.kwargs = ml_collections.ConfigDict(dict(num_identities=8, images_per_identity=4, image_size=40))
  c.model.kwargs.update(model_kwargs or {})
  return c


def set_data(c: ml_collections.ConfigDict, kind: str, image_size: int) -> ml_collections.ConfigDict:
  """Point a run at its training data by `get_config` arg: 'synthetic' (default, runs anywhere) or 'folders'
  (identity folders prepared by `launch.prepare_data --dataset=folders --data_dir=D --name=N`; then pass
  `--config.data.kwargs.data_dir=D --config.data.kwargs.name=N`)."""
  if kind in ('', 'synthetic'):
    c.data.source = 'synthetic'
    c.data.kwargs = ml_collections.ConfigDict(dict(num_identities=500, images_per_identity=40, image_size=image_size))
  elif kind == 'folders':
    c.data.source = 'folders'
    c.data.kwargs = ml_collections.ConfigDict(dict(data_dir='', name='default', split='train'))
  else:
    raise ValueError(f"config arg data={kind!r}: expected 'synthetic' or 'folders'")
  c.val.synthetic.image_size = image_size
  return c


def parse_arg(arg: str | None, where: str = 'config', bare: str | None = None, **defaults) -> ml_collections.ConfigDict:
  """A config file's `:arg`, big_vision style ('key=value,key2=value2') -> ConfigDict over `defaults`, each value
  cast to its default's type. A bare word sets a bool key to True, or else (with `bare`) becomes the value of
  key `bare` (`configs/x.py:folders` -> data='folders'). Unknown keys and words are refused, naming `where`."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, eq, value = item.partition('=')
    if not eq and not isinstance(defaults.get(key), bool):
      if bare is None:
        raise ValueError(f'{where}:{arg}: unknown switch {key!r}; expected key=value or one of '
                         f'{sorted(k for k, v in defaults.items() if isinstance(v, bool))}')
      key, value, eq = bare, key, '='
    if key not in defaults:
      raise ValueError(f'{where}:{arg}: unknown key {key!r}; expected one of {sorted(defaults)}')
    kind = type(defaults[key])
    if kind is bool:
      out[key] = (value.lower() in ('1', 'true', 'yes')) if eq else True
    else:
      try:
        out[key] = kind(value)
      except ValueError:
        raise ValueError(f'{where}:{arg}: {key}={value!r}: expected type {kind.__name__}') from None
  return out
