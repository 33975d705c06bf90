"""Nearest-mean-of-exemplars classification (iCaRL, Rebuffi et al. 2017,
Alg. 1), as pure functions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cljax import _validate


def _normalise(f):
  return f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)


def class_means(features, labels, valid, num_classes: int,
                flipped_features=None):
  """Each class's mean of exemplar features.

  ``mu_y = normalise(mean_{p in P_y} phi(p))`` with ``phi`` the
  L2-normalised feature; with ``flipped_features`` (those of the
  horizontally flipped exemplars, where training flips images) each
  exemplar contributes the mean of its two normalised features, as in
  iCaRL's reference code.

  Args:
    features: ``(K, D)`` features of the memory's slots.
    labels: ``(K,)`` int classes.
    valid: ``(K,)`` bool, the slots in use.
    num_classes: ``C``.
    flipped_features: optional ``(K, D)``.
  Returns:
    ``(means (C, D), present (C,) bool)``; a class with no exemplar has
    mean 0 and ``present`` False.
  """
  _validate.check_shape("features", features, (None, None))
  k = np.shape(features)[0]
  _validate.check_shape("labels", labels, (k,))
  _validate.check_labels("labels", labels, num_classes)
  _validate.check_shape("valid", valid, (k,))
  phi = _normalise(jnp.asarray(features, jnp.float32))
  if flipped_features is not None:
    _validate.check_same_shape(features=features,
                               flipped_features=flipped_features)
    phi = (phi + _normalise(jnp.asarray(flipped_features, jnp.float32))) / 2
  onehot = jax.nn.one_hot(labels, num_classes) * jnp.asarray(
      valid, jnp.float32)[:, None]
  count = onehot.sum(axis=0)
  means = (onehot.T @ phi) / jnp.maximum(count, 1.0)[:, None]
  return _normalise(means) * (count > 0)[:, None], count > 0


def nme_predict(features, means, mask):
  """``argmin_y || phi(x) - mu_y ||`` over the classes in ``mask``.

  Args:
    features: ``(B, D)``.
    means: ``(C, D)`` from ``class_means``.
    mask: bool ``(C,)`` or ``(B, C)``: the classes that may be predicted
      (e.g. those seen, and with exemplars).
  Returns:
    ``(B,)`` int predictions.
  """
  _validate.check_shape("features", features, (None, None))
  b, d = np.shape(features)
  _validate.check_shape("means", means, (None, d))
  _validate.check_mask("mask", mask, b, np.shape(means)[0])
  phi = _normalise(jnp.asarray(features, jnp.float32))
  d = jnp.sum((phi[:, None, :] - means[None, :, :]) ** 2, axis=-1)
  return jnp.argmin(jnp.where(mask, d, jnp.inf), axis=-1)
