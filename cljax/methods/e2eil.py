"""End-to-End Incremental Learning (Castro et al. 2018)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from cljax import _validate
from cljax.losses import lwf_loss
from cljax.methods._base import Phase
from cljax.methods._rehearsal import Rehearsal, weighted_cross_entropy
from cljax.regularizers import check_strength


class E2EIL(Rehearsal):
  """End-to-End IL: the cross-distilled loss on new data and a herding
  memory, then class-balanced fine-tuning.

  Training (Castro et al. 2018, sec. 4.1, eq. 3-4), on the current batch plus
  an equally sized replay batch from the memory:
  ``L = CE over the classes seen + sum_{old groups g} L_D(g)``, ``L_D`` the
  soft cross-entropy between the previous model's and the current model's
  softmax over group ``g``'s logits at temperature ``T`` (one group per old
  task: the paper's old classification layers).

  Balanced fine-tuning (sec. 4.3), from the second task on: the memory is
  updated first (old classes shrunk, the new classes' exemplars chosen by
  herding: ``m`` of each class, so the memory is the class-balanced set),
  then training continues on memory samples only, at ``balanced_lr_scale``
  of the learning rate, with the cross-entropy plus a distillation of the
  new classes from the model at the start of the phase, for
  ``balanced_passes`` passes over the memory's worth of examples (the
  paper: 30 epochs over the balanced set).

  Args: ``temperature`` (2), ``balanced_passes`` (30), ``balanced_lr_scale``
  (0.1); the memory's as ``Rehearsal`` (herding, a fixed total: the paper's
  representative memory). Castro et al. also augment the images
  (``train.augment``).
  """

  name = "e2eil"
  exemplars_only = True
  data_hparams = ("temperature",)

  def __init__(self, memory_size: int = 2000, temperature: float = 2.0,
               balanced_passes: int = 30, balanced_lr_scale: float = 0.1,
               selection: str = "herding", replay_size: int = 0,
               budget: str = "total", per_class: int = 0):
    super().__init__(memory_size, selection, budget, per_class,
                     replay_size=replay_size)
    _validate.check_positive("temperature", temperature)
    _validate.check_integer("balanced_passes", balanced_passes, 0)
    check_strength("balanced_lr_scale", balanced_lr_scale)
    self.temperature = float(temperature)
    self.balanced_passes = int(balanced_passes)
    self.balanced_lr_scale = float(balanced_lr_scale)

  def init_state(self, model, stream):
    t, c = stream.num_tasks, stream.num_classes
    return {**super().init_state(model, stream), "teacher": model.params,
            "teacher_stats": model.batch_stats,
            "groups": jnp.zeros((t, c), bool),  # old tasks' classes
            "new": jnp.zeros((1, c), bool)}     # the task's, in fine-tuning

  def phases(self, index):
    if index == 0 or self.balanced_passes == 0:
      return (Phase(),)
    # balanced_passes over the memory's worth of examples.
    return (Phase(), Phase("balanced", lr_scale=self.balanced_lr_scale,
                           examples=self.balanced_passes * self.memory_size))

  def loss_fn(self, model):
    return self._loss(model, balanced=False)

  def phase_loss_fn(self, model, name):
    return (self._loss(model, balanced=True) if name == "balanced" else
            self.loss_fn(model))

  def _loss(self, model, balanced: bool):

    def loss(params, batch_stats, s, batch, masks, rng):
      b = batch["y"].shape[0] - batch["memory_logits"].shape[0]
      if balanced:  # memory samples only: drop the current examples
        batch = {k: batch[k][b:] for k in ("x", "y", "t", "w")}
      (logits, _), new_stats = model.apply(params, batch_stats, batch["x"],
                                           train=True)
      (teacher, _), _ = model.apply(s["teacher"], s["teacher_stats"],
                                    batch["x"])
      ce = weighted_cross_entropy(logits, batch, masks)
      groups = s["new"] if balanced else s["groups"]
      kd = lwf_loss(logits, teacher, groups, self.temperature)
      return ce + kd, ({"ce": ce, "distill": kd}, new_stats)

    return loss

  def on_phase_start(self, ctx, phase):
    s = ctx.method_state
    if phase.name != "balanced":
      return s
    # The memory as the balanced set, and the teacher of the new classes:
    # the model as the first phase left it.
    s = super().on_task_end(ctx)
    new = np.zeros(s["new"].shape, bool)
    new[0, ctx.stream.tasks[ctx.index].classes] = True
    return {**s, "teacher": ctx.params, "teacher_stats": ctx.batch_stats,
            "new": jnp.asarray(new)}

  def on_task_end(self, ctx):
    s = ctx.method_state
    if len(self.phases(ctx.index)) == 1:  # no fine-tuning: update it now
      s = super().on_task_end(ctx)
    groups = np.asarray(s["groups"]).copy()
    groups[ctx.index, ctx.stream.tasks[ctx.index].classes] = True
    return {**s, "teacher": ctx.params, "teacher_stats": ctx.batch_stats,
            "groups": jnp.asarray(groups),
            "new": jnp.zeros_like(s["new"])}
