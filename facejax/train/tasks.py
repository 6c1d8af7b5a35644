"""The three tasks. Each is a pure `loss_fn(params, batch_stats, batch, frozen, rng) -> (loss, (metrics, batch_stats))`
plus what it needs from outside the step (`frozen`: e.g. the teacher's variables, passed replicated).
Adding a task means adding a class here and a name in TASKS; the step and the loop stay untouched.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from facejax import losses, runs
from facejax.models import FaceNet, Preprocessing


def model_input(images, preprocessing: Preprocessing, image_size: int, frame: tuple[float, float, float] | None = None):
  """uint8 [B, H, W, 3] RGB -> normalised float32 [B, S, S, 3], resized in-graph when H != S. `frame` (a, bx, by):
  the images are another alignment's chips, placed so that relative position v lands on output pixel a * v + b
  (facejax.data.chip_frames.chip_frame; black outside them)."""
  x = preprocessing.apply(images)
  if frame is not None:
    a, bx, by = frame
    scale = jnp.array([a / x.shape[1], a / x.shape[2]], jnp.float32)
    return jax.image.scale_and_translate(x, (x.shape[0], image_size, image_size, 3), (1, 2), scale,
                                         jnp.array([by, bx], jnp.float32), 'linear', antialias=True)
  if x.shape[1] != image_size or x.shape[2] != image_size:
    x = jax.image.resize(x, (x.shape[0], image_size, image_size, 3), 'linear', antialias=True)
  return x


@dataclasses.dataclass(frozen=True)
class ModelIO:
  """A model with how it reads pixels: what a task calls, and what a run directory describes."""
  model: FaceNet
  preprocessing: Preprocessing
  image_size: int
  frame: tuple[float, float, float] | None = None  # it reads another alignment's chips (model_input)

  def __call__(self, params, batch_stats, images, *, train: bool, rng=None, update_stats: bool = True,
               stages: bool = False):
    """-> (outputs dict from FaceNet.forward, new batch_stats). `stages`: the outputs also hold 'stages', the
    backbone's stage outputs (a tuple of [B, h, w, C], from the input up) where the backbone sows them."""
    variables = {'params': params, 'batch_stats': batch_stats}
    x = model_input(images, self.preprocessing, self.image_size, self.frame)
    mutable = (['batch_stats'] if train else []) + (['intermediates'] if stages else [])
    if not mutable:
      return self.model.apply(variables, x, train=False, method='forward'), batch_stats
    out, mutated = self.model.apply(variables, x, train=train, method='forward', mutable=mutable,
                                    rngs={'dropout': rng} if train else {})
    if stages:
      sown = mutated.get('intermediates', {}).get('backbone', {}).get('stages')
      if sown is None:
        raise ValueError(f'{type(self.model.backbone).__name__} does not expose its stage outputs (distillation '
                         'hints need a backbone that sows them, e.g. dlib_resnet)')
      out = dict(out, stages=tuple(sown))
    return out, (mutated['batch_stats'] if train and update_stats else batch_stats)


def _accuracy(logits, labels):
  return jnp.mean(jnp.argmax(logits, -1) == labels)


@dataclasses.dataclass(frozen=True)
class Classify:
  """Identity classification (fine-tuning): softmax CE with optional label smoothing, on the model's logits or,
  with `margin` > 0 (a cosine classifier), on ArcFace's margin logits (`losses.arcface_logits`).
  `bn='frozen'` keeps BatchNorm running statistics fixed (and uses them), as is common for small-data transfer."""
  student: ModelIO
  label_smoothing: float = 0.0
  bn: str = 'train'
  margin: float = 0.0

  def frozen(self) -> dict:
    return {}

  def loss_fn(self, params, batch_stats, batch, frozen, rng):
    out, batch_stats = self.student(params, batch_stats, batch['image'], train=self.bn == 'train', rng=rng)
    logits = out['logits']
    if self.margin:
      logits = losses.arcface_logits(logits, batch['label'], self.student.model.cosine_scale, self.margin)
    loss = losses.softmax_cross_entropy(logits, batch['label'], self.label_smoothing)
    return loss, ({'loss': loss, 'accuracy': _accuracy(out['logits'], batch['label'])}, batch_stats)


def select_stages(stages: tuple, channels: tuple) -> tuple:
  """Stage outputs -> the channels hints compare (`channels`: per stage, teacher channel indices; () = all)."""
  if not channels:
    return tuple(stages)
  if len(channels) != len(stages):
    raise ValueError(f'hint channels name {len(channels)} stages, the teacher has {len(stages)}')
  return tuple(s[..., jnp.asarray(c)] for s, c in zip(stages, channels))


def mixup(images, rng, concentration: float = 1.0):
  """uint8 or float [B, H, W, 3] pixels in [0, 255] -> (float32 [B, H, W, 3], a): every image mixed with its
  neighbour in the batch, a * x[i] + (1 - a) * x[i - 1], with one a ~ Beta(c, c) for the batch folded to
  max(a, 1 - a) >= 0.5, so each mixed image is mostly its own chip (big_vision's `u.mixup` with n=2, p=c). Mixing
  raw pixels serves models with different preprocessing and input sizes alike: both are affine or linear."""
  a = jax.random.beta(rng, concentration, concentration)
  a = jnp.maximum(a, 1.0 - a)
  x = jnp.asarray(images, jnp.float32)
  return a * x + (1.0 - a) * jnp.roll(x, 1, axis=0), a


def _teacher_outputs(teacher: ModelIO, frozen: dict, batch: dict, hint_channels: tuple | None = None) -> dict:
  """The frozen teacher's outputs for `batch`: looked up by record index in `frozen['cache']`, or computed (with
  `hint_channels`, also its selected stage outputs)."""
  if 'cache' in frozen:
    return jax.tree_util.tree_map(lambda table: table[batch['index']], frozen['cache'])
  t = frozen['teacher']
  out = teacher(t['params'], t['batch_stats'], batch['image'], train=False, stages=hint_channels is not None)[0]
  if hint_channels is not None:
    out = dict(out, stages=select_stages(out['stages'], hint_channels))
  return out


@dataclasses.dataclass(frozen=True)
class Distill:
  """Teacher -> student: w_embed * mimic(student emb, teacher emb) + w_soft * KL_T(teacher || student) + w_hard * CE
  + w_hint * hints (FitNets-style: each backbone stage's output regresses the teacher's, on `hint_channels`, the
  teacher channels each student stage holds; () = all).
  The teacher is frozen (eval mode) and its variables arrive through `frozen`; with `teacher_cache`
  ({'embedding': [N, D], 'logits': [N, C], 'stages' with hints} per source record, from `teacher_outputs`) the
  teacher is not run at all and its outputs are looked up by `batch['index']`."""
  student: ModelIO
  teacher: ModelIO
  teacher_variables: Any = dataclasses.field(repr=False, default=None)
  embed_weight: float = 1.0
  embed_kind: str = 'l2'
  soft_weight: float = 0.0
  temperature: float = 4.0
  hard_weight: float = 0.0
  teacher_cache: Any = dataclasses.field(repr=False, default=None)
  hint_weight: float = 0.0
  hint_channels: tuple = ()
  mode: str = 'plain'
  mixup: float = 1.0
  # function matching without hints or soft targets: the teacher's embedding through its BN-folded oneDNN forward
  # (`_folded_teacher`: 4x its flax forward for dlib's net on 2 cores), its folded weights in frozen['folded']
  folded_teacher: FoldedTeacher | None = dataclasses.field(repr=False, default=None)

  def __post_init__(self):
    if self.mode not in DISTILL_MODES:
      raise ValueError(f'config.distill.mode={self.mode!r}: expected one of {DISTILL_MODES}')
    if self.mode == 'function_matching' and self.teacher_cache is not None:
      raise ValueError("config.distill.mode='function_matching' runs the teacher on every mixed batch: set "
                       'config.distill.cache_teacher=False')

  def frozen(self) -> dict:
    if self.teacher_cache is not None:
      return {'cache': self.teacher_cache}
    if self.folded_teacher is not None:
      return {'folded': self.folded_teacher.params}
    return {'teacher': self.teacher_variables}

  def inputs_and_targets(self, batch: dict, frozen: dict, rng) -> tuple[Any, dict, Any, Any]:
    """-> (the images the student reads, the teacher's outputs for them, the mixup coefficient or None, the rng
    left for the student). 'plain': the batch's images, and the teacher's outputs looked up in the cache or
    computed on them. 'function_matching' (Beyer et al. 2022): the batch's (augmented) images mixed (`mixup`),
    and the teacher run here on exactly those (FaceNet.forward's 'embedding': L2-normalised, float32)."""
    hints = self.hint_channels if self.hint_weight else None
    if self.mode == 'plain':
      return batch['image'], _teacher_outputs(self.teacher, frozen, batch, hints), None, rng
    mix_rng, rng = jax.random.split(rng)
    images, a = mixup(batch['image'], mix_rng, self.mixup)
    if self.folded_teacher is not None:
      return images, self.folded_teacher(frozen['folded'], images), a, rng
    return images, _teacher_outputs(self.teacher, frozen, {'image': images}, hints), a, rng

  def loss_fn(self, params, batch_stats, batch, frozen, rng):
    hints = bool(self.hint_weight)
    images, t_out, a, rng = self.inputs_and_targets(batch, frozen, rng)
    t_out = jax.lax.stop_gradient(t_out)
    out, batch_stats = self.student(params, batch_stats, images, train=True, rng=rng, stages=hints)
    metrics = {} if a is None else {'mixup': a}
    loss = 0.0
    if hints:
      metrics['hint_loss'] = losses.stage_hints(out['stages'], t_out['stages'])
      loss += self.hint_weight * metrics['hint_loss']
    if self.embed_weight:
      metrics['embed_loss'] = losses.embedding_mimic(out['embedding'], t_out['embedding'], self.embed_kind)
      loss += self.embed_weight * metrics['embed_loss']
    if self.soft_weight:
      metrics['soft_loss'] = losses.soft_target_kl(out['logits'], t_out['logits'], self.temperature)
      loss += self.soft_weight * metrics['soft_loss']
    if self.hard_weight:  # mixed images: their labels mixed alike
      metrics['hard_loss'] = losses.softmax_cross_entropy(out['logits'], batch['label'])
      if a is not None:
        metrics['hard_loss'] = a * metrics['hard_loss'] + (1.0 - a) * losses.softmax_cross_entropy(
            out['logits'], jnp.roll(batch['label'], 1, axis=0))
      loss += self.hard_weight * metrics['hard_loss']
    if 'logits' in out:
      metrics['accuracy'] = _accuracy(out['logits'], batch['label'])
    metrics['loss'] = loss
    return loss, (metrics, batch_stats)


@dataclasses.dataclass(frozen=True)
class Siamese:
  """Metric learning on P x K identity batches: balanced contrastive loss (margin) or batch-hard triplet, plus
  (mimic_weight > 0) the distillation teacher's embedding mimic as an anchor, so a few identities do not pull
  the student away from the geometry it learnt from the teacher. The teacher arrives like Distill's."""
  student: ModelIO
  loss: str = 'contrastive'
  margin: float = 1.0
  mimic_weight: float = 0.0
  teacher: ModelIO | None = None
  teacher_variables: Any = dataclasses.field(repr=False, default=None)
  teacher_cache: Any = dataclasses.field(repr=False, default=None)

  def frozen(self) -> dict:
    if not self.mimic_weight:
      return {}
    return {'cache': self.teacher_cache} if self.teacher_cache is not None else {'teacher': self.teacher_variables}

  def loss_fn(self, params, batch_stats, batch, frozen, rng):
    out, batch_stats = self.student(params, batch_stats, batch['image'], train=True, rng=rng)
    if self.loss == 'contrastive':
      loss, metrics = losses.contrastive(out['embedding'], batch['label'], self.margin)
    elif self.loss == 'triplet':
      loss, metrics = losses.batch_hard_triplet(out['embedding'], batch['label'], self.margin)
    else:
      raise ValueError(f"config.siamese.loss={self.loss!r}: expected 'contrastive' or 'triplet'")
    if self.mimic_weight:
      t_out = jax.lax.stop_gradient(_teacher_outputs(self.teacher, frozen, batch))
      metrics['embed_loss'] = losses.embedding_mimic(out['embedding'], t_out['embedding'])
      loss = loss + self.mimic_weight * metrics['embed_loss']
    return loss, (dict(metrics, loss=loss), batch_stats)


TASKS = ('classify', 'distill', 'siamese')
# 'plain': the teacher's outputs for the batch as loaded (cached with distill.cache_teacher, or computed in the
# step); 'function_matching': computed in the step on the augmented batch after mixup (Distill.inputs_and_targets).
DISTILL_MODES = ('plain', 'function_matching')


class TaskNeeds(NamedTuple):
  """What a task reads besides its batches, so the trainer and the throughput benchmark prepare the same."""
  teacher: bool  # a frozen teacher: config.distill.teacher_workdir (the benchmark: also config.bench.teacher)
  cache: bool  # its outputs computed once per record before training (config.distill.cache_teacher)


def task_needs(config: ml_collections.ConfigDict) -> TaskNeeds:
  """config.task 'distill', and 'siamese' with a mimic anchor (siamese.mimic_weight > 0), read a teacher; with
  config.distill.cache_teacher its outputs come from a cache instead of the step."""
  teacher = config.task == 'distill' or (config.task == 'siamese' and bool(config.siamese.get('mimic_weight', 0.0)))
  return TaskNeeds(teacher=teacher, cache=teacher and bool(config.distill.cache_teacher))


def teacher_outputs(teacher: ModelIO, variables: dict, source, image_size: int, batch_size: int = 256,
                    hint_channels: tuple | None = None) -> dict:
  """The frozen teacher's {'embedding', 'logits'} (float32 [N, ...]) for every record of `source`, centre-cropped
  at `image_size` (what an un-augmented training batch holds), in record order. `hint_channels` (see Distill):
  also 'stages', its stage outputs on those channels.

  A teacher whose only output is its embedding runs its BN-folded inference forward with oneDNN's convolutions
  where they are built (facejax.inference.optimize: 4x the flax forward for dlib's net on the CPU, equal within
  1e-6); otherwise, and with hints, the flax forward."""
  import numpy as np
  from facejax.data import eval_batches
  from facejax.data.synthetic import SourceImages

  folded = _folded_teacher(teacher, variables) if hint_channels is None and not teacher.model.num_classes else None
  if folded is not None:
    fn = jax.jit(lambda images: folded(folded.params, images), compiler_options=folded.compiler_options or None)
  else:
    @jax.jit
    def fn(images):
      out = _teacher_outputs(teacher, {'teacher': variables}, {'image': images}, hint_channels)
      return {k: v for k, v in out.items() if k in ('embedding', 'logits', 'stages')}

  outs = [jax.device_get(fn(b)) for b in eval_batches(SourceImages(source), batch_size, image_size)]
  return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts).astype(np.float32), *outs)


@dataclasses.dataclass(frozen=True)
class FoldedTeacher:
  """A teacher's BN-folded inference forward with oneDNN's float32 convolutions (facejax.inference.optimize):
  `(params, uint8 or float pixels [B, H, W, 3]) -> {'embedding'}` (L2-normalised), read through the teacher's own
  preprocessing, input size and frame; equal to its flax forward within 1e-5."""
  teacher: ModelIO
  forward_fn: Any  # an InferenceFn built with weights='args'

  @property
  def params(self):
    """The folded weights: an argument of the forward (the step's frozen inputs), not constants in it."""
    return self.forward_fn.params

  @property
  def compiler_options(self) -> dict:
    return self.forward_fn.compiler_options

  def __call__(self, params, images) -> dict:
    x = model_input(images, self.teacher.preprocessing, self.teacher.image_size, self.teacher.frame)
    return {'embedding': self.forward_fn.forward(params, x)}


def _folded_teacher(teacher: ModelIO, variables: dict) -> FoldedTeacher | None:
  """The teacher's FoldedTeacher where oneDNN's convolutions are built (`optimize.onednn_options`), else
  None: the teacher cache's forward, and function matching's teacher in the step (`Distill.folded_teacher`)."""
  from facejax.inference import optimize
  options = optimize.onednn_options()
  if not options:
    return None
  fn = optimize.optimize_for_inference(teacher.model, variables, image_size=teacher.image_size, weights='args',
                                       **options)
  return FoldedTeacher(teacher, fn)


def hint_channels(config: ml_collections.ConfigDict) -> tuple | None:
  """The teacher channels each student stage regresses with config.distill.hint_weight > 0 (None: no hints):
  config.init.path's 'stage_channels' for a student cut from its teacher (facejax.convert.prune), else () (every
  channel: the student's stages are as wide as the teacher's)."""
  if config.task != 'distill' or not config.distill.get('hint_weight', 0.0):
    return None
  meta = os.path.join(config.init.path, runs.CONVERTED_METADATA) if config.init.path else ''
  if not os.path.isfile(meta):
    return ()
  with open(meta) as f:
    channels = json.load(f).get('stage_channels') or ()
  return tuple(tuple(int(i) for i in c) for c in channels)


def make_task(config: ml_collections.ConfigDict, student: ModelIO, teacher: ModelIO | None = None,
              teacher_variables=None, teacher_cache=None):
  """Build the task named by `config.task` from its config section."""
  if config.task == 'classify':
    c = config.classify
    if c.get('margin', 0.0) and student.model.classifier_kind != 'cosine':
      raise ValueError(f"config.classify.margin={c.margin} (ArcFace) needs config.model.classifier='cosine', got "
                       f'{student.model.classifier_kind!r}')
    return Classify(student, c.label_smoothing, c.bn, c.get('margin', 0.0))
  if config.task == 'distill':
    c = config.distill
    if teacher is None:
      raise ValueError('config.task=distill needs config.distill.teacher_workdir (a finished classify run)')
    mode, hint_weight = c.get('mode', 'plain'), c.get('hint_weight', 0.0)
    folded = None
    if (mode == 'function_matching' and not hint_weight and not c.soft_weight and teacher_cache is None
        and not config.get('half_precision', False)):  # bf16: the flax forward computes in it
      folded = _folded_teacher(teacher, teacher_variables)
    return Distill(student, teacher, teacher_variables, c.embed_weight, c.embed_kind, c.soft_weight, c.temperature,
                   c.hard_weight, teacher_cache, hint_weight, hint_channels(config) or (), mode, c.get('mixup', 1.0),
                   folded)
  if config.task == 'siamese':
    c = config.siamese
    if c.get('mimic_weight', 0.0) and teacher is None:
      raise ValueError('config.siamese.mimic_weight > 0 needs config.distill.teacher_workdir (the teacher to mimic)')
    return Siamese(student, c.loss, c.margin, c.get('mimic_weight', 0.0), teacher, teacher_variables, teacher_cache)
  raise ValueError(f'config.task={config.task!r}: expected one of {TASKS}')
