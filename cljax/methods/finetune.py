"""Fine-tuning baselines: plain, at any learning rate, or with a frozen
backbone (only the head is trained; a linear probe on fixed features)."""

from __future__ import annotations

import jax
import optax

from cljax.methods._base import Method


def head_labels(params) -> dict:
  """``"head"`` for parameters under ``params["head"]``, else ``"backbone"``."""
  return {k: jax.tree.map(lambda _, k=k: "head" if k == "head" else "backbone",
                          v) for k, v in params.items()}


class FineTune(Method):
  """Plain fine-tuning on each new task (the lower bound; the learning rate
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
    return optax.multi_transform(
        {"head": base, "backbone": optax.set_to_zero()}, head_labels(params))
