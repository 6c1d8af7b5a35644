"""TrainState and the optimizer built from `config.optim` (schedules, layer-wise LR, freezing, decay masks)."""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray  # int32 []
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jnp.ndarray  # uint32 [2], folded with step and device index inside the step
  nonfinite_total: jnp.ndarray  # int32 [], steps skipped because loss/grads were not finite
  nonfinite_streak: jnp.ndarray  # int32 [], consecutive skipped steps up to now

  def to_checkpoint(self) -> dict:
    return {k: getattr(self, k) for k in ('step', 'params', 'batch_stats', 'opt_state', 'rng', 'nonfinite_total',
                                          'nonfinite_streak')}


def path_str(path) -> str:
  """Key path -> 'backbone/conv1_1/kernel'."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> Callable[[Any], Any]:
  """'cosine' (linear warmup then cosine to 0), 'step' (x decay_factor at each of decay_boundaries, given as
  fractions of total_steps) or 'constant'."""
  lr, warmup = cfg.learning_rate, min(cfg.warmup_steps, max(total_steps - 1, 0))
  if cfg.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1))
  if cfg.schedule == 'step':
    main = optax.piecewise_constant_schedule(
        lr, {int(b * total_steps) - warmup: cfg.decay_factor for b in cfg.decay_boundaries})
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup]) if warmup else main
  if cfg.schedule == 'constant':
    return optax.constant_schedule(lr)
  raise ValueError(f"config.optim.schedule={cfg.schedule!r}: expected 'cosine', 'step' or 'constant'")


def param_labels(params, freeze: tuple[str, ...], lr_mult: dict[str, float]):
  """Label every leaf 'frozen' or 'lr_<mult>' by the longest matching path prefix."""

  def label(path, _):
    p = path_str(path)
    if any(p.startswith(f) for f in freeze):
      return 'frozen'
    matches = [k for k in lr_mult if p.startswith(k)]
    return f'lr_{lr_mult[max(matches, key=len)] if matches else 1.0}'

  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int, params) -> tuple[optax.GradientTransformation,
                                                                                     Callable]:
  """Global-norm clipping, then per-label (sgd|adamw with decoupled/L2 weight decay on kernels only, x lr_mult)
  transforms; frozen prefixes get zero updates. Returns (tx, lr_schedule)."""
  schedule = learning_rate_schedule(cfg, total_steps)
  lr_mult = dict(cfg.get('lr_mult', {}) or {})
  labels = param_labels(params, tuple(cfg.get('freeze', ()) or ()), lr_mult)
  decay_mask = jax.tree_util.tree_map(lambda x: x.ndim > 1, params)  # no decay on biases, BN, PReLU

  def base(mult: float) -> optax.GradientTransformation:
    lr = lambda step: schedule(step) * mult
    if cfg.name == 'sgd':
      return optax.chain(optax.add_decayed_weights(cfg.weight_decay, decay_mask),
                         optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    if cfg.name == 'adamw':
      return optax.adamw(lr, weight_decay=cfg.weight_decay, mask=decay_mask)
    raise ValueError(f"config.optim.name={cfg.name!r}: expected 'sgd' or 'adamw'")

  used = set(jax.tree_util.tree_leaves(labels))
  transforms = {l: optax.set_to_zero() if l == 'frozen' else base(float(l[3:])) for l in used}
  parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
  return optax.chain(*parts, optax.multi_transform(transforms, labels)), schedule


def create_train_state(rng, model, tx, image_size: int, variables: dict | None = None) -> TrainState:
  """Initialise (or adopt `variables`) on the host; `model` must be the non-pmapped twin (bn_axis=None)."""
  init_rng, state_rng = jax.random.split(rng)
  if variables is None:
    variables = jax.jit(lambda r: model.init({'params': r, 'dropout': r}, jnp.zeros((1, image_size, image_size, 3)),
                                             train=False, method='forward'))(init_rng)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  zero = jnp.zeros((), jnp.int32)
  # One compiled call: optax's init run eagerly would compile one tiny program per parameter shape.
  return TrainState(step=zero, params=params, batch_stats=batch_stats, opt_state=jax.jit(tx.init)(params),
                    rng=state_rng, nonfinite_total=zero, nonfinite_streak=zero)
