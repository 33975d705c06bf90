"""UCIR's loss terms (Hou et al. 2019, "Learning a Unified Classifier
Incrementally via Rebalancing"), on features and cosine scores."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cljax import _validate


def _weights(weights, b):
  if weights is None:
    return jnp.ones((b,))
  _validate.check_shape("weights", weights, (b,))
  return jnp.asarray(weights, jnp.float32)


def less_forget_loss(features: jax.Array, old_features: jax.Array,
                     weights: jax.Array | None = None) -> jax.Array:
  """The less-forget constraint (Hou et al. 2019): ``L_dis^G(x) = 1 -
  <f*(x) / |f*(x)|, f(x) / |f(x)|>``, averaged over the batch.

  Args:
    features: ``(B, D)`` the current model's features.
    old_features: ``(B, D)`` the previous model's (no gradient flows).
    weights: optional ``(B,)`` example weights (0 drops an example).
  Returns:
    ``sum_i w_i L_i / max(sum_i w_i, 1)``.
  """
  _validate.check_shape("features", features, (None, None))
  _validate.check_same_shape(features=features, old_features=old_features)
  w = _weights(weights, np.shape(features)[0])
  unit = lambda f: f / jnp.maximum(jnp.linalg.norm(f, axis=-1,
                                                   keepdims=True), 1e-12)
  cos = jnp.sum(unit(features) * unit(jax.lax.stop_gradient(old_features)),
                axis=-1)
  return jnp.sum(w * (1.0 - cos)) / jnp.maximum(jnp.sum(w), 1.0)


def margin_ranking_loss(cosines: jax.Array, labels: jax.Array,
                        old: jax.Array, new: jax.Array, margin: float = 0.5,
                        k: int = 2, weights: jax.Array | None = None
                        ) -> jax.Array:
  """Inter-class separation (Hou et al. 2019): for each example of an
  old class (an exemplar), its ground-truth cosine must exceed each of the
  ``k`` highest new-class cosines by ``margin``:
  ``L_mr(x) = sum_{k} max(m - <theta(y), f(x)> + <theta^k, f(x)>, 0)``,
  averaged over the (example, k) pairs (as PyTorch's MarginRankingLoss in
  the authors' code); 0 when the batch holds no old-class example.

  Args:
    cosines: ``(B, C)`` cosine scores (``cosine_logits / sigma``).
    labels: ``(B,)`` int.
    old, new: ``(C,)`` bool, the old classes and the current task's.
    margin: ``m``.
    k: the hard negatives per example (at most the new classes' count).
    weights: optional ``(B,)`` example weights.
  Returns:
    A scalar.
  """
  _validate.check_shape("cosines", cosines, (None, None))
  b, c = np.shape(cosines)
  _validate.check_shape("labels", labels, (b,))
  _validate.check_shape("old", old, (c,))
  _validate.check_shape("new", new, (c,))
  k = _validate.as_int("k", k, 1, c)
  w = _weights(weights, b) * old[labels]
  gt = jnp.take_along_axis(cosines, labels[:, None], axis=1)
  hardest = jax.lax.top_k(jnp.where(new, cosines, -jnp.inf), k)[0]
  hinge = jnp.where(jnp.isfinite(hardest),
                    jax.nn.relu(margin - gt + hardest), 0.0)
  return jnp.sum(w[:, None] * hinge) / jnp.maximum(k * jnp.sum(w), 1.0)
