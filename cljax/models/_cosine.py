"""The cosine-normalised classifier of UCIR (Hou et al. 2019)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def _normalise(a, axis):
  return a / jnp.maximum(jnp.linalg.norm(a, axis=axis, keepdims=True), 1e-12)


def cosine_logits(features: jax.Array, kernel: jax.Array,
                  sigma: jax.Array) -> jax.Array:
  """``sigma * <f / |f|, w_c / |w_c|>`` for every class ``c``.

  Hou et al. 2019: ``p_i(x) = exp(eta <theta_i, f(x)>) / sum_j
  exp(eta <theta_j, f(x)>)`` with both vectors L2-normalised and a learnable
  scale ``eta`` (``sigma`` here, as in the authors' code).

  Args:
    features: ``(B, D)``.
    kernel: ``(D, C)``, one column per class.
    sigma: scalar scale.
  Returns:
    ``(B, C)`` logits; ``logits / sigma`` are the cosines.
  """
  return sigma * (_normalise(features, -1) @ _normalise(kernel, 0))


class CosineLinear(nnx.Module):
  """A linear head without bias whose logits are scaled cosines
  (``cosine_logits``). Parameters: ``kernel (D, C)`` initialised
  ``U(-1/sqrt(D), 1/sqrt(D))`` and ``sigma`` initialised to 1 (the authors'
  code)."""

  def __init__(self, in_features: int, out_features: int, *,
               rngs: nnx.Rngs):
    bound = in_features ** -0.5
    self.kernel = nnx.Param(jax.random.uniform(
        rngs.params(), (in_features, out_features), minval=-bound,
        maxval=bound))
    self.sigma = nnx.Param(jnp.ones(()))
    self.in_features, self.out_features = in_features, out_features

  def __call__(self, x):
    return cosine_logits(x, self.kernel[...], self.sigma[...])
