"""Cross-entropy over the active (unmasked) classes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax import _validate
from cljax.models._heads import mask_logits


def masked_cross_entropy(logits: jax.Array, labels: jax.Array,
                         mask: jax.Array | None = None) -> jax.Array:
  """Per-example softmax cross-entropy restricted to the active classes.

  ``l_i = -log softmax(z_i[mask_i])[y_i] = logsumexp_{c in mask_i} z_ic - z_iy``
  (``optax.losses.softmax_cross_entropy_with_integer_labels`` on logits
  masked by ``cljax.models.mask_logits``; inactive logits get zero
  gradient).

  Args:
    logits: ``(B, C)``.
    labels: ``(B,)`` int, each an active class of its row.
    mask: bool ``(C,)`` or ``(B, C)``; ``None`` means all classes.
  Returns:
    ``(B,)`` losses.
  Raises:
    ValueError: shapes other than the above, or (when concrete) a label
      outside ``[0, C)`` or not active in its row of ``mask``.
  """
  _validate.check_shape("logits", logits, (None, None))
  b, c = np.shape(logits)
  _validate.check_shape("labels", labels, (b,))
  _validate.check_labels("labels", labels, c)
  if mask is not None:
    _validate.check_mask("mask", mask, b, c)
    lab, m = _validate.concrete(labels), _validate.concrete(mask)
    if lab is not None and m is not None:
      active = np.broadcast_to(m, (b, c))[np.arange(b), lab]
      if not active.all():
        i = int(np.argmin(active))
        raise ValueError(f"labels[{i}] = {lab[i]} is not an active class of "
                         "its row of mask")
    # Masked logits, not optax's ``where``: with ``where`` a label outside
    # the mask gets a finite loss as if it were possible, while here its
    # probability is 0 (a loss of ~1e38). Estimators that read a model's
    # distribution as exp(-loss) over all labels (the sampled, expected and
    # predicted Fisher) rely on that.
    logits = mask_logits(logits, mask)
  return optax.losses.softmax_cross_entropy_with_integer_labels(
      jnp.asarray(logits), jnp.asarray(labels, jnp.int32))
