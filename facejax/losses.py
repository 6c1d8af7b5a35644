"""Losses for the three tasks. All take float32 arrays and return scalars (means over the batch)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def softmax_cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """logits [B, C], labels int [B] -> scalar."""
  onehot = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    onehot = optax.smooth_labels(onehot, label_smoothing)
  return optax.softmax_cross_entropy(logits, onehot).mean()


def arcface_logits(logits, labels, scale: float, margin: float):
  """ArcFace (Deng et al., 2019): cosine logits [B, C] (`scale` * cos) -> the same with the target class's angle
  widened by `margin` radians, s * cos(theta + m); where theta + m would pass pi, insightface's fallback
  s * (cos - m sin(m)) keeps the logit decreasing in theta."""
  cos = jnp.clip(logits / scale, -1.0, 1.0)
  target = jnp.take_along_axis(cos, labels[:, None], axis=1)
  sin = jnp.sqrt(jnp.maximum(1.0 - target * target, 0.0))
  widened = target * jnp.cos(margin) - sin * jnp.sin(margin)
  widened = jnp.where(target > jnp.cos(jnp.pi - margin), widened, target - margin * jnp.sin(margin))
  return scale * jnp.where(jax.nn.one_hot(labels, cos.shape[-1], dtype=bool), widened, cos)


def embedding_mimic(student, teacher, kind: str = 'l2'):
  """Student embeddings [B, D] regress the teacher's (both L2-normalised): 'l2' = mean squared distance,
  'cosine' = mean (1 - cos)."""
  if student.shape != teacher.shape:
    raise ValueError(f'embedding mimic needs equal shapes, got student {student.shape} vs teacher {teacher.shape}; '
                     'set the student embed_dim to the teacher\'s')
  if kind == 'l2':
    return jnp.mean(jnp.sum((student - teacher) ** 2, axis=-1))
  if kind == 'cosine':
    return jnp.mean(1.0 - jnp.sum(student * teacher, axis=-1))
  raise ValueError(f"embedding mimic kind {kind!r}: expected 'l2' or 'cosine'")


def stage_hints(student_stages: tuple, teacher_stages: tuple):
  """Distillation hints (FitNets): student and teacher stage outputs (tuples of [B, h, w, C]) -> the mean over
  stages of the batch's relative squared error sum((s - t)^2) / sum(t^2), so each stage weighs the same whatever
  its activation scale."""
  if len(student_stages) != len(teacher_stages):
    raise ValueError(f'distillation hints: the student has {len(student_stages)} stages, the teacher '
                     f'{len(teacher_stages)}')
  errors = []
  for i, (s, t) in enumerate(zip(student_stages, teacher_stages)):
    if s.shape != t.shape:
      raise ValueError(f'distillation hints: stage {i} is {s.shape} in the student and {t.shape} in the teacher; '
                       "a narrower student needs the teacher channels it was cut from (config.init.path's "
                       "'stage_channels', written by facejax.convert.prune)")
    t = t.astype(jnp.float32)
    errors.append(jnp.sum((s.astype(jnp.float32) - t) ** 2) / (jnp.sum(t * t) + 1e-12))
  return jnp.mean(jnp.stack(errors))


def soft_target_kl(student_logits, teacher_logits, temperature: float = 4.0):
  """Hinton et al. soft targets: KL(teacher_T || student_T) * T^2, so gradients keep their scale across T."""
  t = temperature
  p_teacher = jax.nn.softmax(teacher_logits / t)
  kl = jnp.sum(p_teacher * (jax.nn.log_softmax(teacher_logits / t) - jax.nn.log_softmax(student_logits / t)), -1)
  return jnp.mean(kl) * t * t


def pairwise_sq_distances(emb):
  """[B, D] -> [B, B] squared euclidean distances (clipped at 0 against round-off)."""
  sq = jnp.sum(emb * emb, -1)
  return jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * emb @ emb.T, 0.0)


def contrastive(emb, labels, margin: float = 1.0):
  """Balanced contrastive loss over all pairs of a batch (Hadsell et al. 2006).

  emb [B, D] (L2-normalised), labels [B]. Positive pairs pull (d^2), negative pairs push
  (max(0, margin - d)^2); the positive and negative means are weighted equally, so the loss stays balanced
  whatever the P x K batch composition. Returns (loss, metrics)."""
  d2 = pairwise_sq_distances(emb)
  d = jnp.sqrt(d2 + 1e-12)
  same = labels[:, None] == labels[None, :]
  offdiag = ~jnp.eye(labels.shape[0], dtype=bool)
  pos, neg = same & offdiag, ~same
  pos_loss = jnp.sum(jnp.where(pos, d2, 0.0)) / jnp.maximum(pos.sum(), 1)
  neg_loss = jnp.sum(jnp.where(neg, jnp.maximum(margin - d, 0.0) ** 2, 0.0)) / jnp.maximum(neg.sum(), 1)
  metrics = {'pos_dist': jnp.sum(jnp.where(pos, d, 0.0)) / jnp.maximum(pos.sum(), 1),
             'neg_dist': jnp.sum(jnp.where(neg, d, 0.0)) / jnp.maximum(neg.sum(), 1)}
  return 0.5 * (pos_loss + neg_loss), metrics


def batch_hard_triplet(emb, labels, margin: float = 0.2):
  """Batch-hard triplet loss (Hermans et al. 2017): per anchor the farthest positive and the closest negative.
  Returns (loss, metrics)."""
  d = jnp.sqrt(pairwise_sq_distances(emb) + 1e-12)
  same = labels[:, None] == labels[None, :]
  offdiag = ~jnp.eye(labels.shape[0], dtype=bool)
  hardest_pos = jnp.max(jnp.where(same & offdiag, d, 0.0), axis=1)
  hardest_neg = jnp.min(jnp.where(same, jnp.inf, d), axis=1)
  valid = jnp.any(same & offdiag, axis=1) & jnp.isfinite(hardest_neg)
  per_anchor = jnp.maximum(hardest_pos - hardest_neg + margin, 0.0)
  loss = jnp.sum(jnp.where(valid, per_anchor, 0.0)) / jnp.maximum(valid.sum(), 1)
  return loss, {'active_triplets': jnp.sum(jnp.where(valid, per_anchor > 0, False)) / jnp.maximum(valid.sum(), 1)}
