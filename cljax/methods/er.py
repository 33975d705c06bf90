"""Experience replay (Chaudhry et al. 2019, "On Tiny Episodic Memories in
Continual Learning")."""

from __future__ import annotations

from cljax.methods._rehearsal import Rehearsal, weighted_cross_entropy


class ER(Rehearsal):
  """Experience replay: each step trains on the current batch plus an equally
  sized batch drawn from the memory.

  ``L = sum_{(x, y) in B_t + B_M} CE(f(x), y) / |B_t + B_M|`` (the two
  batches concatenated; a replay slot counts only once the memory holds
  something). The memory is filled at each task's end (``herding`` or
  ``random``, class-balanced) or online (``reservoir``, the paper's choice
  for a single pass). Args: as ``Rehearsal``.
  """

  name = "er"

  def loss_fn(self, model):

    def loss(params, batch_stats, s, batch, masks, rng):
      (logits, _), new_stats = model.apply(params, batch_stats, batch["x"],
                                           train=True)
      ce = weighted_cross_entropy(logits, batch, masks)
      return ce, ({"ce": ce}, new_stats)

    return loss
