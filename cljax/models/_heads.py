"""Head masking: one head at the stream's total class count, masked per task.

Allocating the head once at its final size keeps every shape fixed across
tasks (so nothing recompiles when a task arrives); which logits take part is
decided by a boolean mask instead: the classes seen so far (class-incremental),
the example's own task's classes (task-incremental, i.e. multi-head), or all
classes (domain-incremental). See ``cljax.data.Stream.logit_masks``.
"""

import jax
import jax.numpy as jnp


def masked_fill_value(dtype) -> jax.Array:
  """A large negative finite logit: ``exp`` of it is 0, arithmetic stays finite.

  Half of the dtype's most negative value, so subtracting the row maximum in a
  log-softmax cannot overflow to ``-inf`` and ``0 * (masked - masked)`` terms in
  distillation losses stay 0 instead of NaN.
  """
  return jnp.asarray(0.5 * jnp.finfo(dtype).min, dtype)


def mask_logits(logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Replaces inactive logits by ``masked_fill_value``.

  Args:
    logits: ``(..., C)``.
    mask: bool, broadcastable to ``logits``: ``(C,)`` or ``(B, C)``.
  Returns:
    ``(..., C)`` logits; inactive ones get zero gradient.
  """
  logits = jnp.asarray(logits)  # numpy float64 becomes JAX's default float
  return jnp.where(mask, logits, masked_fill_value(logits.dtype))


def example_masks(masks: jax.Array, task_ids: jax.Array) -> jax.Array:
  """Per-example masks ``(B, C)`` from the stream's ``(T, C)`` table."""
  return masks[task_ids]
