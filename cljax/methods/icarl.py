"""iCaRL: incremental classifier and representation learning (Rebuffi et al.
2017)."""

from __future__ import annotations

from cljax.losses import icarl_loss
from cljax.methods._rehearsal import (nme_predictors, Rehearsal,
                                      teacher_state, with_teacher)
from cljax.models._heads import example_masks


class ICaRL(Rehearsal):
  """iCaRL: a sigmoid classifier trained on new data and exemplars with
  distillation from the previous model, a herding exemplar memory, and
  classification by the nearest mean of exemplars.

  Alg. 2-5 of the paper: each task trains with ``icarl_loss`` (by default
  on the current batch plus an equally sized replay batch of exemplars;
  ``replay="union"``: the paper's union of the two sets), then shrinks
  every old class to ``m = K / classes seen`` exemplars and selects ``m``
  for each new class by herding, on the new model's features. Evaluation
  reports both the nearest mean of exemplars (``accuracy_matrix_nme``, the
  paper's classifier) and the network's argmax (``accuracy_matrix``).

  Args: as ``Rehearsal``; ``nme_flip``: class means also over the
  exemplars' horizontal flips (when training flips images).
  """

  name = "icarl"
  classifier = "nme"

  def __init__(self, memory_size: int = 2000, selection: str = "herding",
               budget: str = "total", per_class: int = 0,
               replay_size: int = 0, nme_flip: bool = False,
               replay: str = "equal"):
    super().__init__(memory_size, selection, budget, per_class, replay_size,
                     replay)
    self.nme_flip = bool(nme_flip)

  def init_state(self, model, stream):
    return {**super().init_state(model, stream),
            **teacher_state(model, stream.num_classes)}

  def loss_fn(self, model):

    def loss(params, batch_stats, s, batch, masks, rng):
      (logits, _), new_stats = model.apply(params, batch_stats, batch["x"],
                                           train=True)
      (teacher, _), _ = model.apply(s["teacher"], s["teacher_stats"],
                                    batch["x"])
      bce = icarl_loss(logits, batch["y"], teacher,
                       example_masks(masks, batch["t"]), s["old"], batch["w"])
      return bce, ({"bce": bce}, new_stats)

    return loss

  def on_task_end(self, ctx):
    s = super().on_task_end(ctx)  # the exemplars, with the new model
    return with_teacher(s, ctx)

  def predictors(self, model):
    return nme_predictors(model, self.nme_flip)
