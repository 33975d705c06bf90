"""A training phase's step parts: its loss (with on-device augmentation)
and its optimizer (restricted to the head and scaled as the phase says),
and the per-task learning rate kept in an injected optimizer state."""

from __future__ import annotations

from typing import Callable

import jax
import optax

from cljax.methods._base import Method, Phase, head_only
from cljax.models._functional import FunctionalModel


def _with_augmentation(loss_fn, augment):
  if augment is None:
    return loss_fn

  def loss(params, batch_stats, method_state, batch, masks, rng):
    k_aug, rng = jax.random.split(rng)
    batch = {**batch, "x": augment(k_aug, batch["x"])}
    return loss_fn(params, batch_stats, method_state, batch, masks, rng)

  return loss


def phase_parts(method: Method, model: FunctionalModel,
                optimizer: optax.GradientTransformation, phase: Phase,
                augment: Callable | None = None):
  """``(loss_fn, optimizer)`` of ``phase``'s train step: the phase's loss
  (with on-device augmentation) and ``optimizer`` (the method's own, around
  the base one) restricted to the head and scaled as the phase says."""
  loss_fn = _with_augmentation(method.phase_loss_fn(model, phase.name),
                               augment)
  o = head_only(optimizer, model.params) if phase.head_only else optimizer
  if phase.lr_scale != 1.0:
    o = optax.chain(o, optax.scale(phase.lr_scale))
  elif phase.fresh_optimizer and o is optimizer:
    o = optax.chain(o)  # another transformation: a state of its own
  return loss_fn, o


def set_learning_rate(opt_state, lr: float):
  """``opt_state`` with every ``optax.inject_hyperparams`` learning rate set
  to ``lr`` (a state value: nothing recompiles)."""
  found = optax.tree_utils.tree_get_all_with_path(opt_state, "learning_rate")
  if not found:
    raise ValueError("task_lrs needs an optimizer made with "
                     "optax.inject_hyperparams(...)(learning_rate=...)")
  # The state's own dtype (and a strong type): the step sees the same
  # abstract value for every task, so nothing recompiles.
  # (A sweep's stacked state has one rate per member.)
  old = found[0][1]
  return optax.tree_utils.tree_set(opt_state, learning_rate=jax.numpy.full(
      old.shape, lr, old.dtype))
