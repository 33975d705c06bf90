"""Memory Aware Synapses (Aljundi et al. 2018)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax import _validate
from cljax.methods._regularized import (PenalisedFineTune,
                                        check_importance_options,
                                        importance_function, task_importance,
                                        zeros_like_tree)
from cljax.regularizers import check_strength


class MAS(PenalisedFineTune):
  """MAS: importances from output sensitivity (Aljundi et al. 2018).

  ``L = CE_t + lam sum_ij Omega_ij (theta_ij - theta*_ij)^2`` (eq. 4).

  At the end of each task, ``Omega`` accumulates (sec. 4) the mean absolute
  per-example gradient of the squared L2 norm of the network's (active)
  outputs on that task's data (eqs. 2-3; ``cljax.regularizers.mas_importance``)
  and ``theta*`` becomes the current parameters.

  Args:
    lam: ``lambda >= 0`` (paper: 1 on its object-recognition sequences).
    samples: examples per task for ``Omega`` (``None``: all).
    chunk_size: examples per backward pass.
    path: ``"layerwise"`` (default) or ``"vmap"``, as for ``EWC``.
    form: ``"transform"`` or ``"loss"`` (see ``PenalisedFineTune``).
  """

  name, term = "mas", "mas"
  data_hparams = ("lam",)
  # lam sum Omega d^2 = 2 lam (0.5 sum Omega d^2)
  strength = property(lambda self: 2.0 * self.lam)

  def __init__(self, lam: float = 1.0, samples: int | None = 1024,
               chunk_size: int = 128, path: str = "layerwise",
               form: str = "transform"):
    super().__init__(form)
    check_strength("lam", lam)
    check_importance_options(path)
    self.lam = float(lam)
    self.chunk_size = _validate.as_int("chunk_size", chunk_size, 1)
    self.samples = None if samples is None else _validate.as_int(
        "samples", samples, 1)
    self.path = path

  def init_state(self, model, stream):
    self._omega = importance_function(model, "mas", chunk_size=self.chunk_size,
                                      path=self.path)
    return {"importance": zeros_like_tree(model.params),
            "anchor": model.params}

  def on_task_end(self, ctx):
    new = task_importance(self._omega, ctx, self.samples)
    omega = jax.tree.map(jnp.add, ctx.method_state["importance"], new)
    return {"importance": omega, "anchor": ctx.params}
