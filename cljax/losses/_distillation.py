"""Knowledge-distillation losses on logits.

All are written with log-softmax, so they are finite for any finite logits
and any temperature, and restrict to a class mask when given (masked classes
have probability exactly 0 in both distributions and contribute nothing).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cljax import _validate
from cljax.losses._cross_entropy import masked_cross_entropy
from cljax.models._heads import mask_logits


def _check(student_logits, teacher_logits, temperature, mask,
           teacher_name="teacher_logits"):
  """Logits ``(B, C)`` of exactly equal shapes (nothing broadcast), a mask
  ``(C,)`` or ``(B, C)``, ``temperature > 0``."""
  _validate.check_shape("student_logits", student_logits, (None, None))
  _validate.check_same_shape(student_logits=student_logits,
                             **{teacher_name: teacher_logits})
  if mask is not None:
    _validate.check_mask("mask", mask, *np.shape(student_logits))
  _validate.check_shape("temperature", temperature, ())
  _validate.check_positive("temperature", temperature)


def _soft(logits, temperature, mask):
  z = jnp.asarray(logits) / temperature
  if mask is not None:
    z = mask_logits(z, mask)
  return jax.nn.log_softmax(z, axis=-1)


def soft_cross_entropy(student_logits: jax.Array, teacher_logits: jax.Array,
                       temperature=1.0, mask: jax.Array | None = None
                       ) -> jax.Array:
  """Per-example ``-sum_c p_c log q_c`` with ``p = softmax(teacher/T)`` and
  ``q = softmax(student/T)`` over the masked classes. Shapes ``(B, C)`` ->
  ``(B,)``. This is LwF's "modified cross-entropy" (Li & Hoiem 2018, eq. 2)."""
  _check(student_logits, teacher_logits, temperature, mask)
  logp = _soft(teacher_logits, temperature, mask)
  logq = _soft(student_logits, temperature, mask)
  return -jnp.sum(jnp.exp(logp) * logq, axis=-1)


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array,
            temperature=1.0, mask: jax.Array | None = None) -> jax.Array:
  """Hinton knowledge distillation (Hinton, Vinyals & Dean 2015, sec. 2).

  ``mean_i T^2 KL(softmax(t_i / T) || softmax(s_i / T))``

  The ``T^2`` keeps gradient magnitudes comparable across temperatures
  (Hinton et al. 2015, end of sec. 2).

  Args:
    student_logits: ``(B, C)``.
    teacher_logits: ``(B, C)``; treated as a constant (stop_gradient).
    temperature: ``T > 0``.
    mask: optional bool ``(C,)`` or ``(B, C)``: distil only over these classes.
  Returns:
    A scalar.
  Raises:
    ValueError: shapes that differ (nothing is broadcast), a bad mask shape,
      or a concrete ``temperature <= 0`` (of any type: Python, NumPy or JAX;
      a traced temperature is not checked).
  """
  _check(student_logits, teacher_logits, temperature, mask)
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  logp = _soft(teacher_logits, temperature, mask)
  logq = _soft(student_logits, temperature, mask)
  p = jnp.exp(logp)
  # (0 log 0 = 0 on masked classes; a NaN or inf teacher stays NaN)
  kl = jnp.sum(jnp.where(p == 0, 0.0, p * (logp - logq)), axis=-1)
  return temperature ** 2 * jnp.mean(kl)


def hinton_distillation_loss(student_logits, teacher_logits, labels,
                             temperature=2.0, soft_weight=0.9,
                             mask=None) -> jax.Array:
  """Hard + soft targets (Hinton et al. 2015, sec. 2.1): a weighted average
  of ``kd_loss`` at temperature ``T`` (with its ``T^2`` factor) and the
  cross-entropy with the hard labels at ``T = 1``:

  ``soft_weight * kd_loss(s, t, T) + (1 - soft_weight) * mean_i CE(s_i, y_i)``

  The paper puts "a considerably lower weight on the second objective";
  ``soft_weight`` in [0, 1].
  """
  _validate.check_unit_interval("soft_weight", soft_weight)
  hard = jnp.mean(masked_cross_entropy(student_logits, labels, mask))
  soft = kd_loss(student_logits, teacher_logits, temperature, mask)
  return soft_weight * soft + (1 - soft_weight) * hard


def lwf_loss(student_logits: jax.Array, recorded_logits: jax.Array,
             group_masks: jax.Array, temperature=2.0) -> jax.Array:
  """Learning without Forgetting's old-task loss (Li & Hoiem 2018, eq. 2).

  ``L_old = sum_g mean_i -sum_{c in g} y'_ic log yhat'_ic`` with
  ``y' = softmax(recorded / T)`` and ``yhat' = softmax(student / T)`` taken
  within each old head (class group) ``g``; the paper uses ``T = 2``. Its
  gradient equals that of the KL form (``kd_loss`` without ``T^2``).

  Args:
    student_logits: ``(B, C)`` current outputs.
    recorded_logits: ``(B, C)`` the old model's outputs on the same inputs.
    group_masks: bool ``(G, C)``: one row per old head; rows with no class set
      contribute nothing (so ``G`` can be a fixed maximum).
    temperature: ``T > 0``.
  Returns:
    A scalar.
  """
  _check(student_logits, recorded_logits, temperature, None,
         "recorded_logits")
  _validate.check_shape("group_masks", group_masks,
                        (None, np.shape(student_logits)[1]))
  _validate.check_bool("group_masks", group_masks)
  recorded_logits = jax.lax.stop_gradient(recorded_logits)
  active = jnp.any(group_masks, axis=-1)

  def one(mask):
    return jnp.mean(soft_cross_entropy(student_logits, recorded_logits,
                                       temperature, mask))

  per_group = jax.vmap(one)(group_masks)
  return jnp.sum(jnp.where(active, per_group, 0.0))


def sigmoid_distillation(student_logits, teacher_logits, mask, weights=None):
  """iCaRL's distillation term (Rebuffi et al. 2017, Alg. 3; LwF.MC, sec.
  4): binary cross-entropy of the student's sigmoid outputs against the
  teacher's, over the old classes: ``sum_i w_i sum_{y in old}
  BCE(sigmoid(z_iy), sigmoid(z*_iy)) / sum_i w_i``.

  Args:
    student_logits, teacher_logits: ``(B, C)``.
    mask: ``(C,)`` or ``(B, C)`` bool, the (old) classes to distil.
    weights: ``(B,)`` (default ones).
  """
  _check(student_logits, teacher_logits, 1.0, mask)
  targets = jax.nn.sigmoid(jax.lax.stop_gradient(teacher_logits))
  return _weighted_sum_bce(student_logits, targets, mask, weights)


def sigmoid_classification(logits, labels, active, weights=None):
  """iCaRL's classification term: binary cross-entropy with one-hot
  targets over the ``active`` classes (``(B, C)`` bool): ``sum_i w_i
  sum_{y active} BCE(sigmoid(z_iy), [y == y_i]) / sum_i w_i``."""
  _validate.check_shape("logits", logits, (None, None))
  b, c = np.shape(logits)
  _validate.check_shape("labels", labels, (b,))
  _validate.check_labels("labels", labels, c)
  _validate.check_mask("active", active, b, c)
  onehot = jax.nn.one_hot(labels, c)
  return _weighted_sum_bce(logits, onehot, active, weights)


def icarl_loss(logits, labels, teacher_logits, active, old, weights=None):
  """iCaRL's representation loss (Rebuffi et al. 2017, Alg. 3): sigmoid
  binary cross-entropy over the active classes with targets one-hot for the
  new classes and the previous model's sigmoid outputs for the old ones:
  ``sigmoid_classification`` over the active classes that are not old plus
  ``sigmoid_distillation`` over the old ones.

  Args:
    logits, teacher_logits: ``(B, C)``.
    labels: ``(B,)``.
    active: ``(B, C)`` bool, the classes seen.
    old: ``(C,)`` bool, the classes of earlier tasks.
    weights: ``(B,)`` (default ones).
  """
  active, old = jnp.asarray(active), jnp.asarray(old)
  return (sigmoid_classification(logits, labels, active & ~old, weights) +
          sigmoid_distillation(logits, teacher_logits, active & old, weights))


def _weighted_sum_bce(logits, targets, mask, weights):
  """``sum_i w_i sum_y mask BCE_iy / sum_i w_i`` (0 where every ``w_i`` is
  0, e.g. a batch of padding rows)."""
  import optax
  bce = optax.sigmoid_binary_cross_entropy(logits, targets)
  per_example = jnp.sum(jnp.where(mask, bce, 0.0), axis=-1)
  if weights is None:
    return jnp.mean(per_example)
  _validate.check_shape("weights", weights, (np.shape(logits)[0],))
  _validate.check_nonnegative("weights", weights)
  total = jnp.sum(weights)
  return jnp.sum(weights * per_example) / jnp.where(total > 0, total, 1.0)
