"""Distillation methods: Hinton KD from the previous model, and Learning
without Forgetting."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cljax import _validate
from cljax.losses import (kd_loss, lwf_loss, sigmoid_classification,
                          sigmoid_distillation)
from cljax.losses._cross_entropy import masked_cross_entropy
from cljax.methods._base import Method, Phase, task_cross_entropy
from cljax.models._heads import example_masks
from cljax.regularizers import check_strength


class _FromPreviousModel(Method):
  """CE on the new task + ``lam * distill(student, teacher)``, where the
  teacher is the model at the end of the previous task (frozen, eval mode)."""

  term = "distill"
  data_hparams = ("lam", "temperature")

  def __init__(self, lam: float = 1.0, temperature: float = 2.0):
    check_strength("lam", lam)
    _validate.check_positive("temperature", temperature)
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
  """Distillation from the previous model's old classes (Hinton et al. 2015).

  ``CE_t + lam * kd_loss(s, t, T)`` over the old classes (the union
  of the previous tasks' classes: the old head(s)).

  Args: ``lam >= 0``, ``temperature > 0``.
  """

  name, term = "kd", "kd"

  def distill(self, student, teacher, s):
    return kd_loss(student, teacher, self.temperature,
                   jnp.any(s["groups"], axis=0))


class LwF(_FromPreviousModel):
  """Learning without Forgetting: old heads distilled (Li & Hoiem 2018).

  Learning without Forgetting (Li & Hoiem 2018, eq. 2 and Alg. 1):
  ``CE_new + lambda_o * sum_{old heads} CE(softmax(y_o/T), softmax(yhat_o/T))``
  with ``T = 2``. The old model's responses are computed on the fly from the
  frozen previous model, which is the same as recording them before training
  (no augmentation, eval mode). Weight decay ``lambda_r`` is the
  optimizer's (``train.weight_decay``).

  What an "old head" is depends on the scenario (``heads``):

  * ``"per_task"``: each old task's classes are one head, one soft
    cross-entropy each (the paper's multi-head setting: task-IL).
  * ``"joint"``: one soft cross-entropy over all old classes together, so
    they stay calibrated against each other (van de Ven & Tolias's 2019 LwF
    for class-IL); in a domain-IL stream (every task has all the classes)
    it distils once against the previous model, however many tasks came
    before.
  * ``"sigmoid"``: LwF.MC (Rebuffi et al. 2017, sec. 4), iCaRL's loss
    without exemplars: sigmoid binary cross-entropies, one-hot targets for
    the new classes (``losses.sigmoid_classification``) plus ``lam`` times
    the old model's sigmoid outputs as the old classes' targets
    (``losses.sigmoid_distillation``). Each old class's score is kept in
    absolute terms, not only relative to the other old classes, so old
    classes can still win against new ones in one head (on split
    Fashion-MNIST class-IL the softmax forms stay at fine-tuning's 20%).
  * ``"auto"`` (default): ``per_task`` in task-IL streams, ``sigmoid`` in
    class-IL streams, ``joint`` in domain-IL streams.

  From the second task on, Alg. 1's warm-up comes first: ``warmup_epochs``
  of training the new head only (shared layers and old heads frozen: only
  ``params["head"]`` moves, and the old classes' logits are held constant),
  on the new task's cross-entropy alone; then the joint optimisation.

  Args: ``lam`` (the paper's ``lambda_o``, 1 by default), ``temperature``,
  ``warmup_epochs >= 0`` (0: no warm-up), ``heads`` (above).
  """

  name, term = "lwf", "lwf"
  HEADS = ("auto", "per_task", "joint", "sigmoid")
  _form = "per_task"  # the resolved heads, set from the stream

  def __init__(self, lam: float = 1.0, temperature: float = 2.0,
               warmup_epochs: int = 1, heads: str = "auto"):
    super().__init__(lam, temperature)
    _validate.check_integer("warmup_epochs", warmup_epochs, 0)
    if heads not in self.HEADS:
      raise ValueError(f"heads must be one of {self.HEADS}, got {heads!r}")
    self.warmup_epochs, self.heads = int(warmup_epochs), heads

  def init_state(self, model, stream):
    auto = {"task": "per_task", "class": "sigmoid", "domain": "joint"}
    self._form = auto[stream.kind] if self.heads == "auto" else self.heads
    return super().init_state(model, stream)

  def loss_fn(self, model):
    if self._form != "sigmoid":
      return super().loss_fn(model)

    def loss(params, batch_stats, s, batch, masks, rng):
      (logits, _), new_stats = model.apply(params, batch_stats, batch["x"],
                                           train=True)
      (teacher, _), _ = model.apply(s["teacher"], s["teacher_stats"],
                                    batch["x"])
      active = example_masks(masks, batch["t"])
      old = s["groups"][0] & (s["on"] > 0)
      cls = sigmoid_classification(logits, batch["y"], active & ~old)
      d = sigmoid_distillation(logits, teacher, active & old)
      return cls + self.lam * d, ({"bce": cls, self.term: d}, new_stats)

    return loss

  def on_task_end(self, ctx):
    state = super().on_task_end(ctx)
    if self._form != "per_task":  # one head: every old class in row 0
      groups = state["groups"]
      state["groups"] = jnp.zeros_like(groups).at[0].set(jnp.any(groups, 0))
    return state

  def phases(self, index):
    if index == 0 or self.warmup_epochs == 0:
      return (Phase(),)
    return (Phase("warmup", self.warmup_epochs, head_only=True), Phase())

  def phase_loss_fn(self, model, name):
    if name != "warmup":
      return self.loss_fn(model)

    def warmup(params, batch_stats, s, batch, masks, rng):
      (logits, _), _ = model.apply(params, batch_stats, batch["x"],
                                   train=False)  # frozen layers: eval mode
      old = jnp.any(s["groups"], axis=0)
      logits = jnp.where(old, jax.lax.stop_gradient(logits), logits)
      ce = jnp.mean(masked_cross_entropy(
          logits, batch["y"], example_masks(masks, batch["t"])))
      return ce, ({"ce": ce}, batch_stats)

    return warmup

  def distill(self, student, teacher, s):
    return lwf_loss(student, teacher, s["groups"], self.temperature)
