"""Riemannian Walk's pieces (Chaudhry, Dokania, Ajanthan & Torr 2018,
"Riemannian Walk for Incremental Learning: Understanding Forgetting and
Intransigence", ECCV): the online Fisher, the KL-normalised path score, and
the normalisation that makes the two commensurate. Pure functions on
pytrees like the parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax import _validate


def rwalk_fisher(fisher, window_fisher, steps, alpha):
  """The online empirical Fisher (EWC++, eq. 6), updated once per window of
  ``steps`` train steps (the paper's ``Delta t``):
  ``F <- alpha * mean_window(F_b) + (1 - alpha) * F``, where
  ``window_fisher`` sums the window's per-batch Fisher estimates ``F_b``
  (``RWalk``'s ``fisher``: the batches' mean squared per-example gradients,
  or the authors' squared batch gradients); ``F`` starts at 0, as in the
  authors' code.
  """
  _validate.check_tree_like("window_fisher", window_fisher, fisher, "fisher")
  _validate.check_positive("steps", steps)
  _validate.check_value("alpha", alpha, lambda v: (v > 0) & (v <= 1),
                        "in (0, 1]")
  return jax.tree.map(lambda f, w: alpha * w / steps + (1.0 - alpha) * f,
                      fisher, window_fisher)


def rwalk_score_step(score, omega, fisher, params, window_start, eps):
  """One window's contribution to the path score (eq. 7):
  ``s += max(0, omega / (0.5 * F * (theta - theta_w)^2 + eps))``, where
  ``omega = sum_t -g_t * (theta(t+1) - theta(t))`` over the window (the loss
  decrease the parameter's moves account for, ``g`` the task loss's
  gradient), ``theta_w`` the parameters at the window's start, and ``F``
  the online Fisher: the loss decrease per unit of KL divergence the moves
  cost. Negative scores are set to 0, as the paper says."""
  for name, tree in (("omega", omega), ("fisher", fisher),
                     ("params", params), ("window_start", window_start)):
    _validate.check_tree_like(name, tree, score, "score")
  _validate.check_positive("eps", eps)
  return jax.tree.map(
      lambda s, w, f, p, p0: s + jax.nn.relu(
          w / (0.5 * f * jnp.square(p - p0) + eps)),
      score, omega, fisher, params, window_start)


def minmax_normalise(tree):
  """The tree rescaled to [0, 1] by its minimum and maximum over every leaf
  together (the authors' code normalises the Fisher and the scores so
  before adding them, eq. 8); a constant tree becomes 0."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    raise ValueError("minmax_normalise needs a tree with at least one array")
  lo = jnp.min(jnp.stack([jnp.min(a) for a in leaves]))
  hi = jnp.max(jnp.stack([jnp.max(a) for a in leaves]))
  span = jnp.where(hi > lo, hi - lo, 1.0)
  return jax.tree.map(lambda a: jnp.where(hi > lo, (a - lo) / span, 0.0),
                      tree)
