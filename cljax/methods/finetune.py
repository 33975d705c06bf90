"""Fine-tuning baselines: plain, at any learning rate, or with a frozen
backbone (only the head is trained; a linear probe on fixed features)."""

from __future__ import annotations

from cljax.methods._base import Method, head_only


class FineTune(Method):
  """Fine-tuning: cross-entropy on each new task (the lower bound).

  Plain fine-tuning on each new task (the lower bound; the learning rate
  is the optimizer's, so low-lr fine-tuning is a config value).

  Args:
    freeze_backbone: train only the head; the backbone keeps its initial
      (or previously trained) weights.
  """

  name = "finetune"

  def __init__(self, freeze_backbone: bool = False):
    self.freeze_backbone = bool(freeze_backbone)

  def optimizer(self, base, params):
    if not self.freeze_backbone:
      return base
    return head_only(base, params)
