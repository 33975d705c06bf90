"""Gradient-based Sample Selection, the greedy variant (Aljundi, Lin,
Goujaud & Bengio 2019, "Gradient based sample selection for online
continual learning", NeurIPS, Alg. 2 as in the authors' code): a buffer
that keeps the examples whose gradients point in diverse directions.
Jittable, fixed shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax import _validate
from cljax.memory._reservoir import ReservoirBuffer


def cosine_max(grads, reference, valid):
  """``max_j cos(g_i, G_j)`` over the valid rows ``j`` of ``reference``
  ``(n, P)`` for each row of ``grads`` ``(B, P)`` (``valid`` ``(n,)``
  bool; the product of the norms clamped at 1e-8, so a zero gradient has
  cosine 0); ``(B,)``."""
  _validate.check_shape("reference", reference, (None, grads.shape[-1]))
  _validate.check_shape("valid", valid, (reference.shape[0],))
  dots = grads @ reference.T
  norms = jnp.linalg.norm(grads, axis=1)[:, None] * jnp.linalg.norm(
      reference, axis=1)[None]
  cos = dots / jnp.maximum(norms, 1e-8)
  return jnp.max(jnp.where(valid[None], cos, -jnp.inf), axis=1)


def gss_insert(buffer: ReservoirBuffer, scores, x, y, t, batch_sim,
               item_sims, key):
  """One GSS-greedy update with the batch ``x (B, ...)``, ``y``, ``t``.

  ``buffer.seen`` counts the filled slots (at most ``K``); ``scores``
  ``(K,)`` each stored example's similarity score; ``batch_sim`` the
  largest cosine between the batch's gradient and the memory's sampled
  gradients, ``item_sims (B,)`` each example's.

  * Not full: the first ``K - seen`` examples take the next slots, with
    their ``item_sims`` as scores (0.1 each into an empty buffer); the rest
    of the batch is dropped.
  * Full, and ``batch_sim < 0`` (the batch's gradient interferes with the
    memory's): ``B`` slots are drawn without replacement with probability
    proportional to ``(score - min) / (max - min + 0.01)``, and example
    ``i`` replaces its slot ``c_i`` with probability
    ``b / (a + b)``, ``a = (item_sims_i + 1) / 2``,
    ``b = (scores_{c_i} + 1) / 2``: a redundant stored example (high
    score) gives way to a diverse new one (low score).

  Returns ``(buffer, scores)``.
  """
  _validate.check_shape("y", y, (None,))
  k, b = buffer.y.shape[0], y.shape[0]
  for name, a, shape in (("scores", scores, (k,)),
                         ("x", x, (b, *buffer.x.shape[1:])), ("t", t, (b,)),
                         ("item_sims", item_sims, (b,)),
                         ("batch_sim", batch_sim, ())):
    _validate.check_shape(name, a, shape)
  scores = jnp.asarray(scores)
  seen = buffer.seen
  k_draw, k_keep = jax.random.split(key)

  def fill():
    slots = seen + jnp.arange(b)
    slots = jnp.where(slots < k, slots, k)  # past the end: dropped
    new = jnp.where(seen == 0, 0.1, item_sims)
    put = lambda a, v: a.at[slots].set(v.astype(a.dtype), mode="drop")
    return (buffer._replace(x=put(buffer.x, x), y=put(buffer.y, y),
                            t=put(buffer.t, t),
                            seen=jnp.minimum(seen + b, k)),
            put(scores, new))

  def replace():
    n = min(b, k)
    p = (scores - scores.min()) / (scores.max() - scores.min() + 0.01)
    gumbel = jax.random.gumbel(k_draw, (k,))
    # (slots at the minimum score stay drawable, last: fewer than n with a
    # positive weight are completed uniformly among them)
    slots = jax.lax.top_k(jnp.log(jnp.maximum(p, 1e-12)) + gumbel, n)[1]
    a, keep = (item_sims[:n] + 1) / 2, (scores[slots] + 1) / 2
    swap = jax.random.uniform(k_keep, (n,)) < keep / (a + keep)
    slots = jnp.where(swap & (batch_sim < 0), slots, k)
    put = lambda arr, v: arr.at[slots].set(v[:n].astype(arr.dtype),
                                           mode="drop")
    return (buffer._replace(x=put(buffer.x, x), y=put(buffer.y, y),
                            t=put(buffer.t, t)),
            put(scores, item_sims))

  return jax.lax.cond(seen < k, fill, replace)
