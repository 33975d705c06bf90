"""EWC (Kirkpatrick et al. 2017), online EWC (Schwarz et al. 2018) and the
L2 anchor, all as fine-tuning plus a quadratic penalty."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax import _validate
from cljax.methods._regularized import (PenalisedFineTune,
                                        check_importance_options,
                                        importance_function, task_importance,
                                        zeros_like_tree)
from cljax.regularizers import check_strength, ewc_merge, online_ewc_update


class L2(PenalisedFineTune):
  """L2 anchor to the previous task's parameters (the seeds' baseline).

  L2 anchor (the seeds' naive constraint): ``CE + lam * 0.5 *
  ||theta - theta*||^2`` with ``theta*`` the parameters at the end of the
  previous task (no penalty during the first task).

  Args: ``lam >= 0``; ``form`` as in ``PenalisedFineTune``.
  """

  name, term = "l2", "l2"
  data_hparams = ("lam",)
  strength = property(lambda self: self.lam)

  def __init__(self, lam: float = 1.0, form: str = "transform"):
    super().__init__(form)
    check_strength("lam", lam)
    self.lam = float(lam)

  def init_state(self, model, stream):
    return {"anchor": model.params,
            "importance": zeros_like_tree(model.params)}

  def on_task_end(self, ctx):
    return {"anchor": ctx.params,
            "importance": jax.tree.map(jnp.ones_like, ctx.params)}


class EWC(PenalisedFineTune):
  """EWC: a Fisher-weighted penalty per past task (Kirkpatrick et al. 2017).

  Elastic weight consolidation, one penalty per past task (Kirkpatrick et
  al. 2017, eq. 3 and sec. 2.1):

  ``L = CE_t + sum_{k<t} (lam / 2) sum_i F_{k,i} (theta_i - theta*_{k,i})^2``

  At the end of task k: ``F_k`` = the Fisher diagonal from exact per-example
  gradients on (up to ``fisher_samples``) examples of task k, ``theta*_k`` =
  the current parameters. The sum over tasks is kept as one exactly equal
  quadratic (``cljax.regularizers.ewc_merge``: summed Fisher,
  Fisher-weighted anchor, constant), so a step costs one penalty however
  many tasks have passed, and shapes never change.

  Args:
    lam: ``lambda >= 0``.
    fisher_samples: examples per task for the Fisher (``None``: all).
    estimator: ``"empirical"``, ``"sampled"`` (true Fisher),
      ``"expected"`` or ``"predicted"`` (see
      ``cljax.regularizers.fisher_diagonal``).
    chunk_size: examples per backward pass (bounds memory).
    path: ``"layerwise"`` (one backward pass per chunk, from the model's
      layer taps; the default) or ``"vmap"`` (``vmap(grad)`` over the
      network). Both are exact per-example Fishers.
    form: ``"transform"`` or ``"loss"`` (see ``PenalisedFineTune``).
  """

  name, term = "ewc", "ewc"
  data_hparams = ("lam",)
  strength = property(lambda self: self.lam)

  def __init__(self, lam: float = 100.0, fisher_samples: int | None = 1024,
               estimator: str = "empirical", chunk_size: int = 128,
               path: str = "layerwise", form: str = "transform"):
    super().__init__(form)
    check_strength("lam", lam)
    check_importance_options(path, estimator)
    self.lam = float(lam)
    self.fisher_samples = None if fisher_samples is None else (
        _validate.as_int("fisher_samples", fisher_samples, 1))
    self.estimator = estimator
    self.chunk_size = _validate.as_int("chunk_size", chunk_size, 1)
    self.path = path

  def build_fisher(self, model):
    self._fisher = importance_function(model, "fisher",
                                       chunk_size=self.chunk_size,
                                       path=self.path, estimator=self.estimator)

  def fisher(self, ctx):
    return task_importance(self._fisher, ctx, self.fisher_samples)

  def init_state(self, model, stream):
    self.build_fisher(model)
    return {"anchor": model.params,
            "importance": zeros_like_tree(model.params),
            "const": jnp.zeros(())}

  def on_task_end(self, ctx):
    s = ctx.method_state
    f, m, c = ewc_merge(s["importance"], s["anchor"], s["const"],
                        self.fisher(ctx), ctx.params)
    return {"anchor": m, "importance": f, "const": c}


class OnlineEWC(EWC):
  """Online EWC: one running Fisher and one anchor (Schwarz et al. 2018).

  Online EWC (Schwarz et al. 2018, sec. 4, eq. 8): one running Fisher
  ``F* <- gamma F* + F_k`` and one anchor (the latest parameters):

  ``L = CE_t + (lam / 2) sum_i F*_i (theta_i - theta*_i)^2``

  Args: as ``EWC``, plus ``gamma`` in [0, 1], the decay of old Fishers.
  """

  name, term = "online_ewc", "ewc"
  data_hparams = ("lam", "gamma")

  def __init__(self, lam: float = 100.0, gamma: float = 1.0, **kwargs):
    super().__init__(lam, **kwargs)
    _validate.check_unit_interval("gamma", gamma)
    self.gamma = float(gamma)

  def init_state(self, model, stream):
    self.build_fisher(model)
    return {"anchor": model.params,
            "importance": zeros_like_tree(model.params)}

  def on_task_end(self, ctx):
    f = online_ewc_update(ctx.method_state["importance"], self.fisher(ctx),
                          self.gamma)
    return {"anchor": ctx.params, "importance": f}
