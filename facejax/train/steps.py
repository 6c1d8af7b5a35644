"""The pmapped train step, built once from a task and an optimizer."""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from facejax.train.state import TrainState

AXIS = 'batch'


def _all_finite(tree) -> jnp.ndarray:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def train_step(state: TrainState, batch: dict, frozen: dict, *, loss_fn: Callable, tx: optax.GradientTransformation,
               schedule: Callable) -> tuple[TrainState, dict]:
  """One step on one device's shard; gradients, BN statistics and metrics are averaged over AXIS.

  A step whose loss or gradients are not finite on any device leaves params, BN stats and optimizer state
  unchanged (the batch is consumed, the step counter advances) and is counted in `nonfinite_*`."""
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), jax.lax.axis_index(AXIS))
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (metrics, batch_stats)), grads = grad_fn(state.params, state.batch_stats, batch, frozen, rng)
  grads = jax.lax.pmean(grads, AXIS)
  batch_stats = jax.lax.pmean(batch_stats, AXIS)
  metrics = jax.lax.pmean(metrics, AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = _all_finite((jax.lax.pmean(loss, AXIS), grads))
  keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
  skipped = (~finite).astype(jnp.int32)
  new_state = state.replace(
      step=state.step + 1,
      params=keep(params, state.params),
      batch_stats=keep(batch_stats, state.batch_stats),
      opt_state=keep(opt_state, state.opt_state),
      nonfinite_total=state.nonfinite_total + skipped,
      nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1))
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=schedule(state.step), skipped=skipped)
  return new_state, metrics


def make_p_train_step(loss_fn: Callable, tx: optax.GradientTransformation, schedule: Callable) -> Callable:
  """pmap over local devices (axis 'batch'); the state buffer is donated."""
  step = functools.partial(train_step, loss_fn=loss_fn, tx=tx, schedule=schedule)
  return jax.pmap(step, axis_name=AXIS, donate_argnums=(0,))
