"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017)."""

from __future__ import annotations

import jax

from cljax import _validate
from cljax.methods._regularized import (PenalisedFineTune, step_delta,
                                        zeros_like_tree)
from cljax.regularizers import check_strength, si_accumulate, si_consolidate


class SI(PenalisedFineTune):
  """Synaptic Intelligence: path-integral importances (Zenke et al. 2017).

  ``L = CE_t + c sum_k Omega_k (theta_k - theta~_k)^2`` (eq. 4), with
  ``theta~`` the parameters at the end of the previous task.

  During a task, every step adds ``-g_k * delta theta_k`` to ``omega``
  (eq. 3), where ``g`` is the gradient of the task loss alone, as in the
  paper (in the ``"loss"`` form the penalty's own gradient is subtracted in
  closed form, so no second backward pass is needed). At the end of a task
  ``Omega += omega / (Delta^2 + xi)`` (eq. 5) and ``omega`` restarts from 0.

  Args:
    c: strength ``c >= 0`` (the paper's ``c``; 0.1 on split MNIST).
    xi: damping ``xi > 0`` (paper: 1e-3).
    form: ``"transform"`` or ``"loss"`` (see ``PenalisedFineTune``).
  """

  name, term = "si", "si"
  data_hparams = ("c", "xi")
  # c * sum Omega d^2 = 2c * (0.5 sum Omega d^2)
  strength = property(lambda self: 2.0 * self.c)

  def __init__(self, c: float = 0.1, xi: float = 1e-3,
               form: str = "transform"):
    super().__init__(form)
    check_strength("c", c)
    _validate.check_positive("xi", xi)
    self.c, self.xi = float(c), float(xi)

  def init_state(self, model, stream):
    z = zeros_like_tree(model.params)
    return {"omega": z, "importance": z, "anchor": model.params}

  def update_method_state(self, s, old_params, new_params, grads, info):
    """``omega += -g * delta`` with ``delta = info.updates`` (the step's
    parameter change). Nothing here reads ``old_params`` after the update
    (the loss form's penalty gradient is taken at ``new - delta``), which
    lets XLA update the parameters in place where the updates themselves
    do not read them (Adam, momentum SGD; plain SGD's and AdamW's are
    recomputed from the parameters, and then they are copied)."""
    delta = step_delta(info, "SI")
    task_grads = grads
    if self.form == "loss":
      old = jax.tree.map(jax.numpy.subtract, new_params, delta)
      task_grads = jax.tree.map(jax.numpy.subtract, grads,
                                self.penalty_grad(old, s))
    return {**s, "omega": si_accumulate(s["omega"], task_grads, delta)}

  def on_task_end(self, ctx):
    s = ctx.method_state
    big = si_consolidate(s["importance"], s["omega"], ctx.params, s["anchor"],
                         self.xi)
    return {"omega": zeros_like_tree(s["omega"]), "importance": big,
            "anchor": ctx.params}
