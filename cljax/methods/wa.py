"""Weight aligning (Zhao et al. 2020, "Maintaining Discrimination and
Fairness in Class Incremental Learning")."""

from __future__ import annotations

import numpy as np

from cljax.methods._distilled_rehearsal import DistilledRehearsal
from cljax.models import align_weights


class WA(DistilledRehearsal):
  """WA: exemplars and knowledge distillation, then the new classes' head
  weights rescaled to the old classes' mean norm.

  Stage 1: ``(1 - lambda) L_CE + lambda L_KD`` with
  ``lambda = n / (n + m)`` and ``T = 2`` (``DistilledRehearsal``). Stage 2
  after each task but the first:
  ``cljax.models.align_weights`` on the head's kernel, so the model that is
  evaluated, distilled from and trained on next is the aligned one. Needs
  the linear head.

  Args: as ``DistilledRehearsal``.
  """

  name = "wa"

  def end_params(self, ctx):
    if ctx.index == 0:
      return None
    old = np.asarray(ctx.method_state["old"])
    new = np.zeros_like(old)
    new[ctx.stream.tasks[ctx.index].classes] = True
    head = ctx.params["head"]
    kernel, _ = align_weights(head["kernel"], old, new)
    return {**ctx.params, "head": {**head, "kernel": kernel}}, ctx.batch_stats
