"""The hidden units of an MLP's or a CNN's parameters: which layers own
them and which connections join them (for methods that gate, protect or
grow units: HAT, CPG).

A *unit layer* is a backbone layer with a kernel whose last axis is its
output units: an MLP's ``layers``, a CNN's ``convs`` then ``dense``.
"""

from __future__ import annotations

import jax.numpy as jnp


def unit_layers(params) -> list[tuple]:
  """The keys of the unit layers, in order (``params["layers"][i]`` as
  ``("layers", i)``)."""
  if "layers" in params:
    return [("layers", i) for i in sorted(params["layers"])]
  return [("convs", i) for i in sorted(params["convs"])] + [("dense",)]


def layer_at(params, key):
  """The subtree at ``key`` (a tuple of keys)."""
  for k in key:
    params = params[k]
  return params


def with_layer(params, key, value):
  """``params`` with the subtree at ``key`` replaced by ``value``."""
  if len(key) == 1:
    return {**params, key[0]: value}
  return {**params, key[0]: with_layer(params[key[0]], key[1:], value)}


def connection_min(params, values) -> list[dict]:
  """Per unit layer ``l``, ``{"kernel": min(v_l[i], v_{l-1}[j]), "bias":
  v_l[i]}`` shaped as its kernel and bias, from one value per unit
  (``values[l]``: ``(units_l,)``): the connection from unit ``j`` of the
  layer below to unit ``i``. The first layer's inputs carry no value (its
  kernel takes ``v_1[i]``); a dense layer after convolutions reads the last
  conv's channels repeated over positions (NHWC flattening)."""
  out, pre = [], None
  for key, v in zip(unit_layers(params), values):
    kernel = layer_at(params, key)["kernel"]
    post = jnp.broadcast_to(v, kernel.shape)
    if pre is not None:
      inputs = kernel.shape[-2]
      pre_in = jnp.tile(pre, inputs // pre.shape[0])
      shape = (1,) * (kernel.ndim - 2) + (inputs, 1)
      post = jnp.minimum(post, pre_in.reshape(shape))
    out.append({"kernel": post, "bias": v})
    pre = v
  return out
