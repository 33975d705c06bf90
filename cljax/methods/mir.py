"""Maximally Interfered Retrieval (Aljundi, Caccia, Belilovsky, Caccia,
Lin, Charlin & Tuytelaars 2019, "Online Continual Learning with Maximal
Interfered Retrieval", NeurIPS)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax import _validate
from cljax.losses._cross_entropy import masked_cross_entropy
from cljax.methods._rehearsal import Rehearsal, weighted_mean
from cljax.models._heads import example_masks


def interference(loss_fn, params, virtual_params, candidates):
  """MIR's score of each candidate (Algorithm 1):
  ``s(x, y) = l(f_{theta_v}(x), y) - l(f_theta(x), y)``, how much the
  virtual step ``theta_v = theta - lr grad L_in(theta)`` on the incoming
  batch would increase its loss; ``loss_fn(params, candidates) -> (C,)``
  per-example losses."""
  return loss_fn(virtual_params, candidates) - loss_fn(params, candidates)


class MIR(Rehearsal):
  """ER with Maximally Interfered Retrieval (ER-MIR, Aljundi et al. 2019).

  Each step draws ``subsample`` candidates from the memory (the slots of
  earlier tasks, as in the authors' task-aware runs), takes a virtual SGD
  step of rate ``virtual_lr`` on the incoming batch, and replays the
  ``replay_size`` candidates whose loss that step would increase most
  (``interference``; top-k over the fixed candidate set, in the jitted
  step). The update is ``grad [L_in + L_MIR]``, the sum of the incoming
  batch's mean cross-entropy and the retrieved batch's (the authors' two
  backward passes before one optimizer step). Candidates are scored with
  the network in eval mode (the authors' code scores them in train mode,
  where BatchNorm normalises them by their own statistics and updates its
  running ones; the scores are the same for a network without BatchNorm).
  The memory is a reservoir by default, as in the paper's single pass.
  The incoming and retrieved examples share one forward pass (the authors
  take two: BatchNorm sees their union here).

  Args:
    subsample: candidates drawn per step (the paper's ``C``: 50 on MNIST,
      the authors' ``--subsample``).
    virtual_lr: the virtual step's learning rate (the paper uses the
      training rate: 0.1 on MNIST).
    replay_size: examples replayed per step (0: as many as the batch; the
      paper's 10 for a batch of 10), at most ``subsample``.
    memory_size, selection, budget, per_class: as ``Rehearsal``
      (``selection="reservoir"`` by default).
  Runs on one device (its selection needs the whole incoming batch's
  gradient).
  """

  name = "mir"
  data_hparams = ("virtual_lr",)

  def __init__(self, memory_size: int = 2000, subsample: int = 50,
               virtual_lr: float = 0.1, replay_size: int = 0,
               selection: str = "reservoir", budget: str = "total",
               per_class: int = 0):
    super().__init__(memory_size, selection, budget, per_class, replay_size)
    _validate.check_integer("subsample", subsample, 1)
    _validate.check_positive("virtual_lr", virtual_lr)
    if subsample > memory_size:
      raise ValueError(f"subsample={subsample} exceeds memory_size="
                       f"{memory_size}: candidates would repeat")
    if self.replay_size > subsample:
      raise ValueError(f"replay_size={self.replay_size} exceeds subsample="
                       f"{subsample}: it replays the best of the candidates")
    self.subsample, self.virtual_lr = int(subsample), float(virtual_lr)

  def batch_fn(self, s, batch, rng, shard):
    """The current batch and ``subsample`` candidates (``cand_*``, weight 0
    for a slot left over when fewer are stored) from the slots of other
    tasks than the current one."""
    if shard[1] > 1:
      raise ValueError("mir runs on one device: set parallel.data=1")
    t = self._slots(s["memory"])[2]
    cand = self.draw(s["memory"], rng, self.subsample, shard, batch,
                     allowed=t != batch["t"][0])
    b = batch["y"].shape[0]
    return {**{k: batch[k] for k in ("x", "y", "t")},
            "w": jnp.ones((b,), jnp.float32),
            "memory_logits": jnp.zeros((0, 1), jnp.float32),
            **{f"cand_{k}": cand[k] for k in ("x", "y", "t", "w")}}

  def loss_fn(self, model):

    def per_example(params, batch_stats, x, y, t, masks, train=False):
      (logits, _), stats = model.apply(params, batch_stats, x, train=train)
      return masked_cross_entropy(logits, y, example_masks(masks, t)), stats

    def loss(params, batch_stats, s, batch, masks, rng):
      n = min(self.replay_size or batch["y"].shape[0], self.subsample)
      current = (batch["x"], batch["y"], batch["t"])
      grad = jax.grad(lambda p: jnp.mean(per_example(
          p, batch_stats, *current, masks, train=True)[0]))(params)
      virtual = jax.tree.map(lambda p, g: p - self.virtual_lr * g, params,
                             grad)
      cand = (batch["cand_x"], batch["cand_y"], batch["cand_t"])
      score = jax.lax.stop_gradient(interference(
          lambda p, c: per_example(p, batch_stats, *c, masks)[0], params,
          virtual, cand))
      score = jnp.where(batch["cand_w"] > 0, score, -jnp.inf)
      top = jax.lax.top_k(score, n)[1]
      x = jnp.concatenate([batch["x"], cand[0][top]])
      y = jnp.concatenate([batch["y"], cand[1][top]])
      t = jnp.concatenate([batch["t"], cand[2][top]])
      ce, new_stats = per_example(params, batch_stats, x, y, t, masks,
                                  train=True)
      b = batch["y"].shape[0]
      ce_in = jnp.mean(ce[:b])
      ce_mir = weighted_mean(ce[b:], batch["cand_w"][top])
      return ce_in + ce_mir, ({"ce": ce_in, "ce_mir": ce_mir}, new_stats)

    return loss
