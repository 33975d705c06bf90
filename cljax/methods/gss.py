"""Gradient-based Sample Selection, greedy (Aljundi, Lin, Goujaud & Bengio
2019, "Gradient based sample selection for online continual learning")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from cljax import _validate
from cljax import memory as mem
from cljax.losses._cross_entropy import masked_cross_entropy
from cljax.methods.er import ER
from cljax.models._heads import example_masks


class GSS(ER):
  """Experience replay whose memory is filled by GSS-greedy (Aljundi et al.
  2019).

  Training is ER's (the current batch plus an equally large random batch
  from the memory, one step; the authors' code takes a current step and a
  replay step, three times per batch). After each step the incoming examples are offered to
  the memory (``cljax.memory.gss_insert``): their gradients, each an exact
  per-example gradient of the cross-entropy at the updated parameters
  (eval mode), are compared by cosine with ``mem_strength`` gradients of
  random memory batches of ``mem_batch_size`` examples; a full memory takes
  examples only from a batch whose gradient's largest cosine is negative,
  in place of slots drawn by their own (normalised) scores.

  Args:
    memory_size: ``K``, the memory's slots.
    mem_strength: memory gradients sampled per step (the authors' ``n``:
      10).
    mem_batch_size: examples per memory gradient (10).
    replay_size: replay examples per step (0: as many as the batch).
  """

  name = "gss"

  def __init__(self, memory_size: int = 2000, mem_strength: int = 10,
               mem_batch_size: int = 10, replay_size: int = 0):
    # An online memory (filled every step): the reservoir's buffer, with
    # GSS's rule in place of Algorithm R.
    super().__init__(memory_size, "reservoir", replay_size=replay_size)
    _validate.check_integer("mem_strength", mem_strength, 1)
    _validate.check_integer("mem_batch_size", mem_batch_size, 1)
    self.mem_strength, self.mem_batch_size = int(mem_strength), int(
        mem_batch_size)

  def init_state(self, model, stream):
    s = super().init_state(model, stream)
    return {**s, "scores": jnp.zeros((self.capacity,), jnp.float32)}

  def _grads(self, params, batch_stats, x, y, t, masks, w):
    """``(N, P)`` flat gradients of the weighted mean cross-entropy of each
    row's examples (``x (N, M, ...)``, weights ``w (N, M)``)."""
    def loss(p, x, y, t, w):
      logits = self._model.apply(p, batch_stats, x)[0][0]
      ce = masked_cross_entropy(logits, y, example_masks(jnp.asarray(masks), t))
      return jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1.0)
    flat = lambda g: ravel_pytree(g)[0]
    return jax.vmap(lambda *a: flat(jax.grad(loss)(params, *a)))(x, y, t, w)

  def update_method_state(self, s, old_params, new_params, grads, info):
    b = info.batch
    n = b["y"].shape[0] - b["memory_logits"].shape[0]  # current examples
    x, y, t = (info.gather(b[k][:n]) for k in ("x", "y", "t"))
    memory, masks = s["memory"], info.masks
    filled = memory.seen
    # mem_strength random batches of the stored examples (without
    # replacement; while few are stored, fewer, the last one smaller, as
    # the authors' code takes the shuffled buffer's last, partial chunk).
    m, bs = self.mem_strength, self.mem_batch_size
    total = min(m * bs, self.capacity)
    valid = jnp.arange(self.capacity) < filled
    k_mem, k_insert = jax.random.split(info.rng)
    order = jax.lax.top_k(jax.random.gumbel(k_mem, valid.shape) +
                          jnp.where(valid, 0.0, -jnp.inf), total)[1]
    order = jnp.resize(order, (m * bs,))
    w = (jnp.arange(m * bs) < jnp.minimum(filled, total)).astype(jnp.float32)
    batches = jnp.maximum(1, (jnp.minimum(filled, total) + bs - 1) // bs)
    mem_valid = (jnp.arange(m) < batches) & (filled > 0)
    rows = lambda a: a[order].reshape(m, bs, *a.shape[1:])
    mem_grads = self._grads(new_params, info.batch_stats, rows(memory.x),
                            rows(memory.y), rows(memory.t), masks,
                            w.reshape(m, bs))
    grads_of = lambda rows, w: self._grads(new_params, info.batch_stats,
                                           x[rows], y[rows], t[rows], masks, w)
    batch_sim = mem.cosine_max(  # the whole batch's gradient: one backward
        grads_of(None, jnp.ones((1, len(y)))), mem_grads, mem_valid)[0]
    # Each example's gradient only where the insertion reads it: a memory
    # filling (not empty) or full with an interfering batch (the authors'
    # code skips them otherwise too).
    full = filled >= self.capacity
    item_sims = jax.lax.cond(
        (filled > 0) & (~full | (batch_sim < 0)),
        lambda: mem.cosine_max(grads_of((slice(None), None),
                                        jnp.ones((len(y), 1))),
                               mem_grads, mem_valid),
        lambda: jnp.zeros(len(y), jnp.float32))
    memory, scores = mem.gss_insert(memory, s["scores"], x, y, t, batch_sim,
                                    item_sims, k_insert)
    return {**s, "memory": memory, "scores": scores}
