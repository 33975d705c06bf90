"""Corrections of a class-incremental classifier's bias toward new classes,
as pure functions of its weights or outputs: weight aligning (WA), the
bias-correction layer (BiC) and score rectification (IL2M)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cljax import _validate
from cljax.models._heads import mask_logits


def align_weights(kernel: jax.Array, old: jax.Array,
                  new: jax.Array) -> jax.Array:
  """Weight aligning (Zhao et al. 2020): the new classes' weight
  vectors rescaled so their mean norm equals the old classes'.

  ``gamma = mean_{c old} |w_c| / mean_{c new} |w_c|``, ``w_c <- gamma w_c``
  for every new class ``c``; other columns unchanged (the bias, if any, is
  left alone, as in the authors' and PyCIL's code).

  Args:
    kernel: ``(D, C)``, one column per class.
    old, new: ``(C,)`` bool, disjoint, each with at least one class.
  Returns:
    ``(kernel (D, C), gamma)``.
  """
  _validate.check_shape("kernel", kernel, (None, None))
  c = np.shape(kernel)[1]
  _validate.check_shape("old", old, (c,))
  _validate.check_shape("new", new, (c,))
  norms = jnp.linalg.norm(kernel, axis=0)
  mean = lambda m: jnp.sum(jnp.where(m, norms, 0.0)) / jnp.sum(m)
  gamma = mean(old) / mean(new)
  return jnp.where(new, gamma * kernel, kernel), gamma


def bias_correct(logits: jax.Array, alpha: jax.Array,
                 beta: jax.Array) -> jax.Array:
  """BiC's bias-correction layer (Wu et al. 2019): ``q_c = alpha_c
  o_c + beta_c``, one ``(alpha, beta)`` pair per incremental step shared by
  that step's classes (``alpha = 1, beta = 0`` leaves a class alone).

  Args:
    logits: ``(B, C)``.
    alpha, beta: ``(C,)``, each class's step's pair.
  Returns:
    ``(B, C)``.
  """
  _validate.check_shape("logits", logits, (None, None))
  c = np.shape(logits)[1]
  _validate.check_shape("alpha", alpha, (c,))
  _validate.check_shape("beta", beta, (c,))
  return logits * alpha + beta


def il2m_ratio(init_means, current_means, confidence, class_state,
               state: int, old) -> jax.Array:
  """IL2M's rectification factor of each old class (Belouadah & Popescu
  2019): ``(mu^P(c) / mu^N(c)) * (M(N) / M(P(c)))``.

  Args:
    init_means: ``(C,)`` each class's mean score on its training images in
      the state ``P(c)`` it was learned (``mu^P``).
    current_means: ``(C,)`` each old class's mean score on its exemplars in
      the current state ``N`` (``mu^N``).
    confidence: ``(S,)`` each state's mean top-1 score on its new classes'
      training images (``M``).
    class_state: ``(C,)`` int, ``P(c)``.
    state: ``N``.
    old: ``(C,)`` bool, the classes learned before state ``N``.
  Returns:
    ``(C,)``: the factor for old classes, 1 elsewhere.
  """
  ratio = (init_means / current_means) * (
      confidence[state] / confidence[class_state])
  return jnp.where(old, ratio, 1.0)


def il2m_rectify(scores: jax.Array, ratio: jax.Array, new: jax.Array,
                 mask: jax.Array) -> jax.Array:
  """IL2M's rectified scores (Belouadah & Popescu 2019): when the
  network's top-1 class among the active ones is new, every class's score
  is multiplied by ``ratio`` (``il2m_ratio``: 1 for the new classes);
  otherwise the scores are unchanged.

  Args:
    scores: ``(B, C)`` prediction scores (e.g. softmax probabilities).
    ratio: ``(C,)``.
    new: ``(C,)`` bool, the classes of the current state.
    mask: ``(B, C)`` or ``(C,)`` bool, the active classes.
  Returns:
    ``(B, C)`` scores, inactive ones masked.
  """
  _validate.check_shape("scores", scores, (None, None))
  c = np.shape(scores)[1]
  _validate.check_shape("ratio", ratio, (c,))
  _validate.check_shape("new", new, (c,))
  masked = mask_logits(scores, mask)
  top_is_new = new[jnp.argmax(masked, axis=-1)]
  return jnp.where(top_is_new[:, None], mask_logits(scores * ratio, mask),
                   masked)
