"""Cross-entropy over the active (unmasked) classes."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax.models._heads import mask_logits


def masked_cross_entropy(logits: jax.Array, labels: jax.Array,
                         mask: jax.Array | None = None) -> jax.Array:
  """Per-example softmax cross-entropy restricted to the active classes.

  ``l_i = -log softmax(z_i[mask_i])[y_i] = logsumexp_{c in mask_i} z_ic - z_iy``

  Args:
    logits: ``(B, C)``.
    labels: ``(B,)`` int, each an active class of its row.
    mask: bool ``(C,)`` or ``(B, C)``; ``None`` means all classes.
  Returns:
    ``(B,)`` losses.
  """
  if mask is not None:
    logits = mask_logits(logits, mask)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32),
                              axis=-1)[:, 0]
