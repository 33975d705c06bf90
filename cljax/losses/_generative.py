"""Losses of generative replay: the generator's (a VAE's negative ELBO)
and the classifier's on replayed inputs labelled by the previous model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax import _validate
from cljax.losses._cross_entropy import masked_cross_entropy
from cljax.models._heads import mask_logits


def vae_loss(recon_logits: jax.Array, targets: jax.Array, mean: jax.Array,
             logvar: jax.Array) -> jax.Array:
  """A VAE's negative ELBO per input value (Kingma & Welling 2014, eq. 10,
  with the Gaussian KL in closed form, their App. B), normalised by the
  input size ``D`` as van de Ven & Tolias (2019) train their generator:

  ``l_i = (sum_d BCE(sigmoid(r_id), x_id) - 1/2 sum_j (1 + v_ij - m_ij^2
  - exp(v_ij))) / D``

  Args:
    recon_logits: ``(B, D)`` the decoder's Bernoulli logits ``r``.
    targets: ``(B, D)`` the inputs ``x`` in ``[0, 1]``.
    mean, logvar: ``(B, J)`` ``q(z|x)``'s mean ``m`` and log-variance ``v``.
  Returns:
    ``(B,)`` losses.
  """
  _validate.check_shape("recon_logits", recon_logits, (None, None))
  _validate.check_same_shape(recon_logits=recon_logits, targets=targets)
  _validate.check_shape("mean", mean, (np.shape(recon_logits)[0], None))
  _validate.check_same_shape(mean=mean, logvar=logvar)
  if np.shape(recon_logits)[-1] == 0:
    raise ValueError("recon_logits must have at least one input value (D "
                     "> 0), got shape " + str(np.shape(recon_logits)))
  _validate.check_unit_interval("targets", targets)
  recon = jnp.sum(optax.sigmoid_binary_cross_entropy(recon_logits, targets),
                  axis=-1)
  kl = -0.5 * jnp.sum(1 + logvar - mean ** 2 - jnp.exp(logvar), axis=-1)
  return (recon + kl) / np.shape(recon_logits)[-1]


def replay_loss(student_logits: jax.Array, teacher_logits: jax.Array,
                student_groups: jax.Array, teacher_groups: jax.Array,
                temperature=2.0, soft: bool = False) -> jax.Array:
  """The classifier's loss on replayed inputs labelled by the previous
  model (Shin et al. 2017's generative replay; van de Ven & Tolias 2019,
  sec. 3: hard labels for DGR, soft targets for DGR+distill), averaged over
  the groups ``g`` (rows with a teacher class):

  * hard: ``mean_i CE_{S_g}(s_i, argmax_{c in T_g} t_ic)``;
  * soft: ``T^2 mean_i -sum_{c in S_g} p_ic log q_ic`` with ``p =
    softmax(t / T)`` over ``T_g`` (0 on the other classes of ``S_g``) and
    ``q = softmax(s / T)`` over ``S_g``.

  ``S_g`` are the classes the student is trained over and ``T_g`` those the
  teacher had learned: in class-IL one group, all classes seen so far and
  the previous tasks' (the new classes get target 0); in task-IL one group
  per previous task, its own classes both; in domain-IL one group, the
  whole head.

  Args:
    student_logits, teacher_logits: ``(B, C)``.
    student_groups, teacher_groups: bool ``(G, C)``, each teacher row a
      subset of its student row; rows without teacher classes are ignored
      (``G`` can be a fixed maximum).
    temperature: ``T > 0`` (soft targets only).
    soft: soft targets (distillation) instead of hard labels.
  Returns:
    A scalar (0 when no row has a teacher class).
  """
  _validate.check_shape("student_logits", student_logits, (None, None))
  _validate.check_same_shape(student_logits=student_logits,
                             teacher_logits=teacher_logits)
  if np.shape(student_logits)[0] == 0:
    raise ValueError("student_logits must hold at least one example, got "
                     "shape " + str(np.shape(student_logits)))
  c = np.shape(student_logits)[1]
  _validate.check_shape("student_groups", student_groups, (None, c))
  _validate.check_same_shape(student_groups=student_groups,
                             teacher_groups=teacher_groups)
  _validate.check_bool("student_groups", student_groups)
  _validate.check_bool("teacher_groups", teacher_groups)
  s_g, t_g = (_validate.concrete(student_groups),
              _validate.concrete(teacher_groups))
  if s_g is not None and t_g is not None and np.any(t_g & ~s_g):
    raise ValueError("teacher_groups must be subsets of their rows of "
                     "student_groups")
  _validate.check_positive("temperature", temperature)
  teacher_logits = jax.lax.stop_gradient(teacher_logits)

  def one(s_mask, t_mask):
    if not soft:
      labels = jnp.argmax(mask_logits(teacher_logits, t_mask), axis=-1)
      return jnp.mean(masked_cross_entropy(student_logits, labels, s_mask))
    p = jax.nn.softmax(mask_logits(teacher_logits / temperature, t_mask))
    logq = jax.nn.log_softmax(mask_logits(student_logits / temperature,
                                          s_mask))
    ce = -jnp.sum(jnp.where(t_mask, p * logq, 0.0), axis=-1)
    return temperature ** 2 * jnp.mean(ce)

  per_group = jax.vmap(one)(student_groups, teacher_groups)
  used = jnp.any(teacher_groups, axis=-1)
  return jnp.sum(jnp.where(used, per_group, 0.0)) / jnp.maximum(
      jnp.sum(used), 1)
