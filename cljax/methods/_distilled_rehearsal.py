"""The first stage the bias-correction methods share (BiC, Wu et al. 2019;
WA, Zhao et al. 2020): cross-entropy over every class seen plus
distillation of the old classes from the previous model, on new data and
exemplars, weighted by the share of old classes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cljax import _validate
from cljax.losses import soft_cross_entropy
from cljax.methods._rehearsal import (Rehearsal, teacher_state,
                                      weighted_cross_entropy, weighted_mean,
                                      with_teacher)


class DistilledRehearsal(Rehearsal):
  """``L = (1 - lambda) L_CE + lambda L_KD`` with ``lambda = n / (n + m)``
  (``n`` old classes, ``m`` new ones) and ``L_KD = -sum_{c old}
  softmax(o_hat / T)_c log softmax(o / T)_c`` (over the old classes, the
  previous model's outputs ``o_hat``), on the current batch plus an equally
  sized replay batch of exemplars.

  Args: ``temperature`` (``T``, 2 in both papers); the memory's as
  ``Rehearsal`` (herding, a fixed total), replaying in the proportion of the
  union of new data and exemplars (``replay="union"``), as the papers
  train.
  """

  data_hparams = ("temperature",)
  exemplars_only = True

  def __init__(self, memory_size: int = 2000, temperature: float = 2.0,
               selection: str = "herding", replay_size: int = 0,
               replay: str = "union", budget: str = "total",
               per_class: int = 0):
    super().__init__(memory_size, selection, budget, per_class,
                     replay_size=replay_size, replay=replay)
    _validate.check_positive("temperature", temperature)
    self.temperature = float(temperature)

  def init_state(self, model, stream):
    return {**super().init_state(model, stream),
            **teacher_state(model, stream.num_classes), "lam": jnp.zeros(())}

  def outputs(self, model, params, batch_stats, s, x, train: bool):
    """``((logits, features), new_batch_stats)`` as the losses see them
    (BiC applies its bias layers here)."""
    return model.apply(params, batch_stats, x, train=train)

  def loss_fn(self, model):

    def loss(params, batch_stats, s, batch, masks, rng):
      (logits, _), new_stats = self.outputs(model, params, batch_stats,
                                            s, batch["x"], True)
      (teacher, _), _ = self.outputs(model, s["teacher"],
                                     s["teacher_stats"], s, batch["x"], False)
      ce = weighted_cross_entropy(logits, batch, masks)
      kd = weighted_mean(soft_cross_entropy(
          logits, jax.lax.stop_gradient(teacher), self.temperature,
          s["old"]), batch["w"])
      lam = s["lam"]
      return (1 - lam) * ce + lam * kd, ({"ce": ce, "distill": kd},
                                         new_stats)

    return loss

  def on_task_start(self, ctx):
    s = ctx.method_state
    n = int(np.sum(np.asarray(s["old"])))
    m = len(ctx.stream.tasks[ctx.index].classes)
    return {**s, "lam": jnp.asarray(n / (n + m), jnp.float32)}

  def on_task_end(self, ctx):
    s = super().on_task_end(ctx)
    return with_teacher(s, ctx)
