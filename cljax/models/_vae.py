"""A fully connected variational auto-encoder (Kingma & Welling 2014), as
pure functions of a plain parameter dict: the generator of generative
replay (``cljax.methods.DGR``).

The architecture is van de Ven & Tolias's (2019, "Three scenarios for
continual learning", sec. 3; their code's ``AutoEncoder`` without
BatchNorm): an encoder ``D -> h_1 -> ... -> h_L`` of ReLU layers and two
linear maps to the latent mean and log-variance, and a decoder ``z -> h_L
-> ... -> h_1 -> D`` of ReLU layers ending in per-pixel logits (a Bernoulli
likelihood; ``sigmoid(logits)`` is the reconstructed image in ``[0, 1]``).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp


def _dense(key, n_in: int, n_out: int) -> dict:
  """A linear layer initialised as ``flax.nnx.Linear`` (LeCun-normal
  kernel, zero bias)."""
  kernel = jax.nn.initializers.lecun_normal()(key, (n_in, n_out))
  return {"kernel": kernel, "bias": jnp.zeros((n_out,))}


def init_vae(key, features: int, hidden: Sequence[int], z_dim: int) -> dict:
  """The VAE's parameters for inputs of ``features`` values.

  Args:
    key: a PRNG key.
    features: ``D``, the flattened input size.
    hidden: the encoder's widths ``h_1..h_L`` (the decoder mirrors them).
    z_dim: the latent size.
  Returns:
    ``{"encoder": [layers], "mean": layer, "logvar": layer, "decoder":
    [layers]}``, each layer ``{"kernel", "bias"}``.
  """
  keys = iter(jax.random.split(key, 2 * len(hidden) + 3))
  enc = (features, *hidden)
  dec = (z_dim, *reversed(hidden), features)
  return {"encoder": [_dense(next(keys), a, b)
                      for a, b in zip(enc[:-1], enc[1:])],
          "mean": _dense(next(keys), enc[-1], z_dim),
          "logvar": _dense(next(keys), enc[-1], z_dim),
          "decoder": [_dense(next(keys), a, b)
                      for a, b in zip(dec[:-1], dec[1:])]}


def _linear(layer, h):
  return h @ layer["kernel"] + layer["bias"]


def vae_encode(params, x):
  """``(mean, logvar)`` of ``q(z | x)``, each ``(B, z_dim)``; ``x`` is
  ``(B, ...)`` and is flattened."""
  h = x.reshape(x.shape[0], -1)
  for layer in params["encoder"]:
    h = jax.nn.relu(_linear(layer, h))
  return _linear(params["mean"], h), _linear(params["logvar"], h)


def vae_decode(params, z):
  """The per-pixel Bernoulli logits ``(B, D)`` of ``p(x | z)``."""
  h = z
  *hidden, out = params["decoder"]
  for layer in hidden:
    h = jax.nn.relu(_linear(layer, h))
  return _linear(out, h)


def vae_sample(params, key, n: int):
  """``n`` generated inputs ``(n, D)`` in ``[0, 1]``: ``sigmoid(decode(z))``
  with ``z ~ N(0, I)`` (the decoder's mean image, as van de Ven & Tolias's
  ``sample``)."""
  z_dim = params["mean"]["bias"].shape[0]
  return jax.nn.sigmoid(vae_decode(params, jax.random.normal(key, (n, z_dim))))
