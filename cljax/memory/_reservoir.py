"""Reservoir sampling buffer (Vitter 1985, Algorithm R), jittable.

After ``n`` examples have streamed through a buffer of capacity ``K``, it
holds a uniform random sample of ``min(n, K)`` of them: example ``i``
(0-based) is stored at slot ``i`` while the buffer fills, afterwards at a
slot drawn uniformly from ``0..i`` if that slot is below ``K`` (else it is
dropped). Used by A-GEM's "reservoir" memory (Chaudhry et al. 2019, "On Tiny
Episodic Memories in Continual Learning").
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class ReservoirBuffer(NamedTuple):
  """``x`` ``(K, ...)``, ``y``/``t`` ``(K,)``, ``logits`` ``(K, L)`` (the
  model's outputs when stored; ``L = 1``, unused, if none are: checkpoints
  cannot hold empty arrays); ``seen``: examples streamed so far (scalar
  int). Slots ``>= min(seen, K)`` are empty."""
  x: jnp.ndarray
  y: jnp.ndarray
  t: jnp.ndarray
  seen: jnp.ndarray
  logits: jnp.ndarray


def reservoir_buffer(capacity: int, example_shape, dtype=jnp.float32,
                     num_logits: int = 0) -> ReservoirBuffer:
  if capacity < 1:
    raise ValueError(f"capacity must be >= 1, got {capacity}")
  return ReservoirBuffer(jnp.zeros((capacity, *example_shape), dtype),
                         jnp.zeros((capacity,), jnp.int32),
                         jnp.zeros((capacity,), jnp.int32),
                         jnp.zeros((), jnp.int32),
                         jnp.zeros((capacity, max(num_logits, 1)),
                                   jnp.float32))


def reservoir_add(buffer: ReservoirBuffer, x, y, t, key: jax.Array,
                  valid=None, logits=None) -> ReservoirBuffer:
  """Streams the examples ``x (N, ...)``, ``y (N,)``, ``t (N,)`` (and their
  ``logits (N, L)``) through the buffer in order, as Algorithm R does one
  by one, but in one vectorised write (jittable). ``valid`` ``(N,)`` bool
  marks examples to skip (padding, so fixed-size chunks compile once)."""
  capacity = buffer.y.shape[0]
  n = len(y)
  valid = jnp.ones(n, bool) if valid is None else jnp.asarray(valid)
  if logits is None:
    logits = jnp.zeros((n, buffer.logits.shape[1]), jnp.float32)
  # Example i is the (seen + rank_i)-th of the stream, rank_i counting the
  # valid ones before it; Algorithm R gives it slot j_i = that count while
  # the buffer fills, else a slot drawn from 0..count (kept if < K).
  count = buffer.seen + jnp.cumsum(valid) - valid
  keys = jax.random.split(key, n)
  draw = jax.vmap(lambda k, c: jax.random.randint(k, (), 0, c + 1))(keys,
                                                                     count)
  j = jnp.where(count < capacity, count, draw)
  keep = valid & (j < capacity)
  # Sequentially a later example overwrites an earlier one at the same
  # slot: only the last writer of each slot is written (all at once).
  later = jnp.triu(jnp.ones((n, n), bool), k=1)
  overwritten = jnp.any(later & keep[None, :] & (j[None, :] == j[:, None]),
                        axis=1)
  slot = jnp.where(keep & ~overwritten, j, capacity)  # out of range: dropped
  put = lambda a, v: a.at[slot].set(jnp.asarray(v, a.dtype), mode="drop")
  return ReservoirBuffer(put(buffer.x, x), put(buffer.y, y), put(buffer.t, t),
                         buffer.seen + jnp.sum(valid).astype(jnp.int32),
                         put(buffer.logits, logits))