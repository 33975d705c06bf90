"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax.methods._regularized import PenalisedFineTune, zeros_like_tree
from cljax.regularizers import check_strength, si_accumulate, si_consolidate


class SI(PenalisedFineTune):
  """``L = CE_t + c sum_k Omega_k (theta_k - theta~_k)^2`` (eq. 4), with
  ``theta~`` the parameters at the end of the previous task.

  During a task, every step adds ``-g_k * delta theta_k`` to ``omega``
  (eq. 3), where ``g`` is the gradient of the task loss alone, as in the
  paper: the penalty's own gradient ``2 c Omega (theta - theta~)`` is
  subtracted from the step's gradient in closed form, so no second backward
  pass is needed. At the end of a task ``Omega += omega / (Delta^2 + xi)``
  (eq. 5) and ``omega`` restarts from 0.

  Args:
    c: strength ``c >= 0`` (the paper's ``c``; 0.1 on split MNIST).
    xi: damping ``xi > 0`` (paper: 1e-3).
  """

  name, term = "si", "si"

  def __init__(self, c: float = 0.1, xi: float = 1e-3):
    check_strength("c", c)
    if not xi > 0:
      raise ValueError(f"xi must be > 0, got {xi}")
    self.c, self.xi = float(c), float(xi)

  def init_state(self, model, stream):
    z = zeros_like_tree(model.params)
    return {"omega": z, "big_omega": z, "anchor": model.params}

  def penalty(self, params, s):
    terms = jax.tree.map(lambda w, p, a: jnp.sum(w * jnp.square(p - a)),
                         s["big_omega"], params, s["anchor"])
    return self.c * sum(jax.tree.leaves(terms))

  def update_method_state(self, s, old_params, new_params, grads):
    task_grads = jax.tree.map(
        lambda g, w, p, a: g - 2 * self.c * w * (p - a),
        grads, s["big_omega"], old_params, s["anchor"])
    return {**s, "omega": si_accumulate(s["omega"], task_grads, old_params,
                                        new_params)}

  def on_task_end(self, ctx):
    s = ctx.method_state
    big = si_consolidate(s["big_omega"], s["omega"], ctx.params, s["anchor"],
                         self.xi)
    return {"omega": zeros_like_tree(s["omega"]), "big_omega": big,
            "anchor": ctx.params}
