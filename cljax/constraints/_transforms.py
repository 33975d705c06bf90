"""GEM and A-GEM as optax gradient transformations.

Chained before any optimizer (``optax.chain(gem(0.5), optax.sgd(0.1))``),
they project the incoming gradient; the memory (or reference) gradients come
as extra arguments of ``update`` (``optax.GradientTransformationExtraArgs``).
"""

from __future__ import annotations

import optax

from cljax import _validate
from cljax.constraints._project import agem_project, gem_project


def gem(margin: float = 0.0) -> optax.GradientTransformationExtraArgs:
  """``update(updates, state, params=None, *, memory_grads, memory_mask=None)``
  returns ``gem_project(updates, memory_grads, margin, memory_mask)``."""
  _validate.check_nonnegative("margin", margin)

  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None, *, memory_grads=None,
             memory_mask=None, **extra):
    del params, extra
    if memory_grads is None:
      raise ValueError("gem: update needs memory_grads")
    return gem_project(updates, memory_grads, margin, memory_mask), state

  return optax.GradientTransformationExtraArgs(init, update)


def agem() -> optax.GradientTransformationExtraArgs:
  """``update(updates, state, params=None, *, ref_grad)`` returns
  ``agem_project(updates, ref_grad)``."""

  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None, *, ref_grad=None, **extra):
    del params, extra
    if ref_grad is None:
      raise ValueError("agem: update needs ref_grad")
    return agem_project(updates, ref_grad), state

  return optax.GradientTransformationExtraArgs(init, update)
