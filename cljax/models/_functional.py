"""NNX module -> pure function of plain pytrees, split once (no per-step graph
traversal): the flax NNX performance recipe (``nnx.split`` once, then ``jit`` a
function of the state).

Cross-replica BatchNorm: inside ``sync_batch_norm(axis_name)`` (entered
while a data-parallel step is traced, see ``cljax.train.data_parallel``)
every BatchNorm layer of ``apply(..., train=True)`` computes its batch mean
and variance over the whole global batch (``jax.lax.pmean`` over
``axis_name``, as flax's ``BatchNorm(axis_name=...)``), so a BN model
trains on N devices as on one.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from cljax.models._conv import use_canonical_convs
from cljax.models._taps import LayerTaps, layer_taps


class FunctionalModel(NamedTuple):
  """A model as a pure function and its initial state.

  Attributes:
    apply: ``apply(params, batch_stats, x, train=False)`` ->
      ``((logits (B, C), features (B, D)), new_batch_stats)``.
    params: nested dict of trainable arrays (the head under ``"head"``).
    batch_stats: nested dict of non-trainable state (BatchNorm statistics);
      empty for models without it.
    taps: ``LayerTaps`` (per-layer inputs and output gradients, for
      layer-local per-example gradients, in float32), or ``None``.
    dtype: the compute dtype of ``apply`` (``"float32"`` or
      ``"bfloat16"``; see ``functional``).
  """
  apply: Callable
  params: Any
  batch_stats: Any
  taps: LayerTaps | None = None
  dtype: str = "float32"


DTYPES = ("float32", "bfloat16")


_BN_AXIS = contextvars.ContextVar("cljax_bn_axis", default=None)


@contextlib.contextmanager
def sync_batch_norm(axis_name: str | None):
  """While tracing inside this context, BatchNorm layers in training mode
  average their batch statistics over ``axis_name`` (``None``: each shard
  its own, the context's default)."""
  token = _BN_AXIS.set(axis_name)
  try:
    yield
  finally:
    _BN_AXIS.reset(token)


def functional(module: nnx.Module, dtype: str = "float32"
               ) -> FunctionalModel:
  """Splits an NNX ``Classifier`` into graphdef + plain-dict state, once.

  ``dtype="bfloat16"`` is mixed precision (Micikevicius et al. 2018, as
  jmp's policy "params=float32, compute=bfloat16, output=float32"):
  ``apply`` casts the float32 parameters and the inputs to bfloat16, runs
  the network in bfloat16 and returns float32 logits and features, so the
  parameters, their gradients, the optimizer state and every loss stay
  float32; BatchNorm's running statistics stay float32.
  """
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
  compute = jnp.dtype(dtype)
  cast = (lambda tree: tree) if dtype == "float32" else (
      lambda tree: jax.tree.map(
          lambda a: a.astype(compute) if jnp.issubdtype(a.dtype, jnp.floating)
          else a, tree))
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  p_def, r_def = jax.tree.structure(params), jax.tree.structure(rest)
  p_dict, r_dict = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  for state, pure in ((params, p_dict), (rest, r_dict)):
    same = [a is b for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(pure))]
    assert all(same), "leaf order of nnx.State and its pure dict differ"

  def merge(params, batch_stats):
    return nnx.merge(graphdef,
                     jax.tree.unflatten(p_def, jax.tree.leaves(params)),
                     jax.tree.unflatten(r_def, jax.tree.leaves(batch_stats)))

  def apply(params, batch_stats, x, train: bool = False):
    model = merge(cast(params), batch_stats)
    use_canonical_convs(model)  # inside reverse_mode_convs, on CPU
    axis = _BN_AXIS.get()
    if train and axis is not None:
      for _, layer in model.iter_modules():
        if isinstance(layer, nnx.BatchNorm):
          layer.axis_name = axis
    feats = model.features(cast(x), train=train)
    logits = model.head(feats)
    new_stats = jax.tree.unflatten(
        jax.tree.structure(batch_stats),
        jax.tree.leaves(nnx.state(model, nnx.Not(nnx.Param))))
    new_stats = jax.tree.map(lambda new, old: new.astype(old.dtype),
                             new_stats, batch_stats)
    return (logits.astype(jnp.float32), feats.astype(jnp.float32)), new_stats

  return FunctionalModel(apply, p_dict, r_dict,
                         layer_taps(merge, p_dict, r_dict), dtype)
