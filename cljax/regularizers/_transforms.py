"""Penalties as optax gradient transformations.

``add_quadratic_penalty(strength)`` adds ``strength * F * (theta - theta*)``
to the incoming gradients: the gradient of ``strength * 0.5 * sum F (theta -
theta*)^2``. Chained before any optimizer it gives the same trajectory as
adding the penalty to the loss. The anchor and importance come as extra
arguments of ``update`` (``optax.GradientTransformationExtraArgs``).
"""

from __future__ import annotations

import jax
import optax

from cljax.regularizers._penalties import check_strength, ewc_penalty_grad


def add_quadratic_penalty(strength: float
                          ) -> optax.GradientTransformationExtraArgs:
  """``updates + strength * importance * (params - anchor)``.

  With ``importance`` the Fisher diagonal this is EWC's gradient term; with
  ones, the L2 anchor's; with SI's/MAS's ``Omega`` and ``strength = 2c`` or
  ``2 lambda`` their penalties' gradients.

  ``update(updates, state, params, *, anchor, importance)``.
  """
  check_strength("strength", strength)

  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None, *, anchor=None, importance=None,
             **extra):
    del extra
    if params is None or anchor is None or importance is None:
      raise ValueError("add_quadratic_penalty needs params, anchor and "
                       "importance")
    new = jax.tree.map(lambda u, g: u + strength * g, updates,
                       ewc_penalty_grad(params, anchor, importance))
    return new, state

  return optax.GradientTransformationExtraArgs(init, update)
