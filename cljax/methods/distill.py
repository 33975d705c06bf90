"""Distillation methods: Hinton KD from the previous model, and Learning
without Forgetting."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cljax.losses import kd_loss, lwf_loss
from cljax.methods._base import Method, task_cross_entropy
from cljax.regularizers import check_strength


class _FromPreviousModel(Method):
  """CE on the new task + ``lam * distill(student, teacher)``, where the
  teacher is the model at the end of the previous task (frozen, eval mode)."""

  term = "distill"

  def __init__(self, lam: float = 1.0, temperature: float = 2.0):
    check_strength("lam", lam)
    if not temperature > 0:
      raise ValueError(f"temperature must be > 0, got {temperature}")
    self.lam, self.temperature = float(lam), float(temperature)

  def distill(self, student, teacher, s):
    raise NotImplementedError

  def init_state(self, model, stream):
    return {"teacher": model.params, "teacher_stats": model.batch_stats,
            "groups": jnp.zeros((stream.num_tasks, stream.num_classes), bool),
            "on": jnp.zeros(())}

  def loss_fn(self, model):

    def loss(params, batch_stats, s, batch, masks, rng):
      ce, logits, new_stats = task_cross_entropy(model, params, batch_stats,
                                                 batch, masks)
      (teacher, _), _ = model.apply(s["teacher"], s["teacher_stats"],
                                    batch["x"], train=False)
      d = s["on"] * self.distill(logits, jax.lax.stop_gradient(teacher), s)
      return ce + self.lam * d, ({"ce": ce, self.term: d}, new_stats)

    return loss

  def on_task_end(self, ctx):
    k = ctx.index
    classes = np.zeros(ctx.stream.num_classes, bool)
    classes[ctx.stream.tasks[k].classes] = True
    return {"teacher": ctx.params, "teacher_stats": ctx.batch_stats,
            "groups": ctx.method_state["groups"].at[k].set(classes),
            "on": jnp.ones(())}


class KD(_FromPreviousModel):
  """Hinton knowledge distillation from the previous model (Hinton et al.
  2015): ``CE_t + lam * kd_loss(s, t, T)`` over the old classes (the union
  of the previous tasks' classes: the old head(s)).

  Args: ``lam >= 0``, ``temperature > 0``.
  """

  name, term = "kd", "kd"

  def distill(self, student, teacher, s):
    return kd_loss(student, teacher, self.temperature,
                   jnp.any(s["groups"], axis=0))


class LwF(_FromPreviousModel):
  """Learning without Forgetting (Li & Hoiem 2018, eq. 2 and Alg. 1):
  ``CE_new + lambda_o * sum_{old heads} CE(softmax(y_o/T), softmax(yhat_o/T))``
  with ``T = 2``; each old task's classes are one head. The old model's
  responses are computed on the fly from the frozen previous model, which is
  the same as recording them before training (no augmentation, eval mode).
  Weight decay ``lambda_r`` is the optimizer's (``train.weight_decay``).

  Args: ``lam`` (the paper's ``lambda_o``, 1 by default), ``temperature``.
  """

  name, term = "lwf", "lwf"

  def distill(self, student, teacher, s):
    return lwf_loss(student, teacher, s["groups"], self.temperature)
