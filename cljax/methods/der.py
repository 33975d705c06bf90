"""Dark Experience Replay and DER++ (Buzzega et al. 2020, "Dark Experience
for General Continual Learning: a Strong, Simple Baseline")."""

from __future__ import annotations

import jax.numpy as jnp

from cljax.losses._cross_entropy import masked_cross_entropy
from cljax.methods._rehearsal import Rehearsal, weighted_cross_entropy
from cljax.models._heads import example_masks
from cljax.regularizers import check_strength


def logit_matching(logits, stored, weights):
  """DER's replay term (Buzzega et al. 2020, eq. 6): the mean squared
  difference between the network's logits and those stored with the
  examples, ``mean_i w_i mean_c (z_ic - h_ic)^2 / mean_i w_i``.

  Args:
    logits, stored: ``(N, C)``.
    weights: ``(N,)`` (0 for a replay slot of an empty memory).
  """
  per_example = jnp.mean(jnp.square(logits - stored), axis=-1)
  return jnp.sum(weights * per_example) / jnp.maximum(jnp.sum(weights), 1.0)


class DER(Rehearsal):
  """Dark Experience Replay: ``CE(current) + alpha * MSE(h(x'), z')`` on a
  memory batch whose logits ``z'`` were stored when the examples entered
  the memory (reservoir sampling, online: the paper's).

  Args: ``alpha >= 0`` (the paper's ``alpha``; 0.3 for seq-CIFAR-10 with
  500 memories), and the memory's as ``Rehearsal`` (``selection`` defaults
  to ``"reservoir"``). One forward pass over the concatenated batches (so
  BatchNorm sees them together).
  """

  name = "der"
  data_hparams = ("alpha",)
  num_logits = 1

  def __init__(self, alpha: float = 0.3, memory_size: int = 2000,
               selection: str = "reservoir", replay_size: int = 0):
    super().__init__(memory_size, selection, replay_size=replay_size)
    check_strength("alpha", alpha)
    self.alpha = float(alpha)

  def terms(self, logits, batch, masks, n):
    """Over the concatenated batch's logits: the CE of the current
    examples, and the logit matching of the first ``n`` replayed. Returns
    the current batch's size and the terms."""
    b = logits.shape[0] - batch["memory_logits"].shape[0]
    cur = {k: batch[k][:b] for k in ("y", "t")}
    ce = jnp.mean(masked_cross_entropy(logits[:b], cur["y"], example_masks(
        masks, cur["t"])))
    mse = logit_matching(logits[b:b + n], batch["memory_logits"][:n],
                         batch["w"][b:b + n])
    return b, {"ce": ce, "der": mse}

  def loss_fn(self, model):

    def loss(params, batch_stats, s, batch, masks, rng):
      (logits, _), new_stats = model.apply(params, batch_stats, batch["x"],
                                           train=True)
      n = batch["memory_logits"].shape[0] // self.replay_batches
      b, terms = self.terms(logits, batch, masks, n)
      total = terms["ce"] + self.alpha * terms["der"]
      if self.replay_batches == 2:  # DER++'s second replay batch: labels
        rest = {k: batch[k][b + n:] for k in ("y", "t", "w")}
        terms["der_ce"] = weighted_cross_entropy(logits[b + n:], rest, masks)
        total = total + self.beta * terms["der_ce"]
      return total, (terms, new_stats, {"logits": logits[:b]})

    return loss


class DERpp(DER):
  """DER++: DER plus ``beta * CE(f(x''), y'')`` on a second, independent
  memory batch (its labels).

  Args: ``alpha`` (0.1) and ``beta`` (0.5), the paper's seq-CIFAR-10 values
  with 500 memories; the rest as ``DER``.
  """

  name = "derpp"
  data_hparams = ("alpha", "beta")
  replay_batches = 2

  def __init__(self, alpha: float = 0.1, beta: float = 0.5,
               memory_size: int = 2000, selection: str = "reservoir",
               replay_size: int = 0):
    super().__init__(alpha, memory_size, selection, replay_size)
    check_strength("beta", beta)
    self.beta = float(beta)
