"""Sweeps as one program: K members of one method that differ only in the
hyperparameters it reads as data (``Method.data_hparams``), or in their
seeds, train as one ``jax.vmap``ped step over states stacked on a leading
member axis.

A hyperparameter sweep feeds every member the same batches and step key (as
K runs with one seed would get); a seed sweep gives each member its own
batches and key (``batch_axis=0``, ``rng_axis=0``). Each member keeps its own
``TrainState.nonfinite_step``, so a member that goes NaN stops updating and
the others go on. Learning rates are data too: with an optimizer from
``optax.inject_hyperparams`` the rate lives in each member's optimizer state
(``set_learning_rate`` per member before stacking).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax.methods._base import Method, Phase, TaskContext
from cljax.methods._registry import hyperparameters
from cljax.models._functional import FunctionalModel
from cljax.train._phases import phase_parts
from cljax.train._step import TrainState, make_train_step


def stack(trees: Sequence):
  """Pytrees of equal structure and shapes stacked on a new leading axis."""
  return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]),
                      *trees)


def member(tree, k: int):
  """Member ``k`` of a stacked pytree."""
  return jax.tree.map(lambda x: x[k], tree)


def stack_hparams(method: Method, members: Sequence[Mapping]) -> dict:
  """``{name: (K,) float32}`` for ``members`` (each a dict of some of
  ``method.data_hparams``; a name a member leaves out takes ``method``'s
  value). Each member is validated as its constructor would (``ValueError``
  naming the hyperparameter): once traced, values are no longer checked."""
  if not members:
    raise ValueError("a sweep needs at least one member")
  base = method.hparams()
  settings = {k: getattr(method, k) for k in hyperparameters(type(method))
              if hasattr(method, k)}
  for hp in members:
    unknown = sorted(set(hp) - set(base))
    if unknown:
      raise ValueError(f"{method.name}: {unknown} not among the "
                       f"hyperparameters read as data {sorted(base)}")
    type(method)(**{**settings, **hp})  # the constructor's checks
  return {k: jnp.asarray([float(hp.get(k, v)) for hp in members],
                         jnp.float32) for k, v in base.items()}


def vmap_step(method: Method, model: FunctionalModel,
              optimizer: optax.GradientTransformation, *,
              phase: Phase = Phase(), batch_axis: int | None = None,
              rng_axis: int | None = None,
              augment: Callable | None = None) -> Callable:
  """``step(hparams, states, batch, rng) -> (states, terms)`` for K members,
  jitted, the states donated.

  Member k runs ``method.with_hparams(**hparams[k])``'s step of ``phase``
  (the one ``run_stream`` builds: the phase's loss, the method's optimizer
  around ``optimizer`` as the phase restricts and scales it, the per-step
  hooks) on ``states[k]``. A phase with an optimizer of its own (head-only,
  ``lr_scale``) needs states whose ``opt_state`` that optimizer made
  (``phase_parts``). Under ``vmap`` a method's ``lax.cond``/``switch`` on
  its state (GEM's memory buckets, A-GEM's empty-memory skip) computes every
  branch, so those savings are lost in a sweep.

  Args:
    method: the method, built with any valid hyperparameters.
    model: the functional model.
    optimizer: the base optax optimizer.
    phase: the training phase (default: the main one).
    batch_axis: ``None``: one batch for all members; 0: a batch per member
      (leading axis K).
    rng_axis: likewise for the key.
    augment: optional ``(rng, x) -> x`` on training inputs, as in
      ``run_stream``.
  """
  return jax.jit(jax.vmap(member_step(method, model, optimizer, phase,
                                     augment),
                         in_axes=(0, 0, batch_axis, rng_axis)),
                 donate_argnums=1)


def member_step(method: Method, model: FunctionalModel,
                optimizer: optax.GradientTransformation, phase: Phase,
                augment: Callable | None = None) -> Callable:
  """The unbatched ``(hparams, state, batch, rng) -> (state, terms)`` of one
  member: ``method.with_hparams(**hparams)``'s step of ``phase`` (what
  ``vmap_step`` vmaps)."""
  def one(hp, state: TrainState, batch, rng):
    m = method.with_hparams(**hp)
    loss_fn, o = phase_parts(m, model, m.optimizer(optimizer, model.params),
                             phase, augment)
    step = make_train_step(loss_fn, o,
                           update_method_state=m.update_method_state,
                           extra_args=m.extra_args, batch_fn=m.batch_fn)
    return step(state, batch, rng)

  return one


def vmap_task_end(method: Method, ctx: TaskContext, hparams: dict,
                  states: TrainState):
  """Every member's ``on_task_end`` as one vmapped call: the stacked method
  state after task ``ctx.index`` (``ctx`` gives the index, stream, model,
  masks and seed; parameters and method state come from ``states``). For
  hooks that are traceable in their arrays (the regularisers'
  importances, the distillers' teachers); host-side selection (herding)
  runs member by member (``with_hparams`` and ``member``)."""
  def one(hp, params, batch_stats, method_state):
    return method.with_hparams(**hp).on_task_end(ctx._replace(
        params=params, batch_stats=batch_stats, method_state=method_state))

  out = jax.vmap(one)(hparams, states.params, states.batch_stats,
                      states.method_state)
  # Buffers of its own: a hook may return the parameters themselves (an
  # anchor), and the step donates its state.
  return jax.tree.map(jnp.copy, out)


def diverged(states: TrainState) -> np.ndarray:
  """``(K,)`` bool: the members whose training stopped at a NaN/inf."""
  return np.asarray(jax.device_get(states.nonfinite_step)) >= 0
