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
  ``logits (N, L)``) through the buffer in order (a ``lax.scan``;
  jittable). ``valid`` ``(N,)`` bool marks examples to skip (padding, so
  fixed-size chunks compile once; replayed examples)."""
  capacity = buffer.y.shape[0]
  valid = jnp.ones(len(y), bool) if valid is None else jnp.asarray(valid)
  if logits is None:
    logits = jnp.zeros((len(y), buffer.logits.shape[1]), jnp.float32)

  def one(buf, ex):
    xi, yi, ti, li, k, ok = ex
    j = jnp.where(buf.seen < capacity, buf.seen,
                  jax.random.randint(k, (), 0, buf.seen + 1))
    keep = ok & (j < capacity)
    slot = jnp.where(keep, j, 0)
    put = lambda a, v: a.at[slot].set(jnp.where(keep, v, a[slot]))
    return ReservoirBuffer(put(buf.x, xi), put(buf.y, yi), put(buf.t, ti),
                           buf.seen + ok.astype(jnp.int32),
                           put(buf.logits, li)), None

  keys = jax.random.split(key, len(y))
  out, _ = jax.lax.scan(one, buffer, (jnp.asarray(x), jnp.asarray(y),
                                      jnp.asarray(t), jnp.asarray(logits),
                                      keys, valid))
  return out
