"""Layer taps: a forward pass that exposes every parametrised layer's input
and the gradient at its output, for layer-local per-example gradients.

A *layer* is a module that owns ``nnx.Param`` attributes directly (``Linear``,
``Conv``, ``BatchNorm``, ...). With the network's output ``y_i`` for example
``i`` and a loss that is a sum of per-example terms, ``L = sum_i l_i(y_i)``,
the gradient of ``L`` with respect to a zero perturbation ``z`` added to a
layer's output ``s = layer(theta, a)`` is ``delta_i = dl_i / ds_i`` *per
example*, because example ``i`` touches only its own rows (eval-mode
BatchNorm). Example ``i``'s gradient of the layer's parameters is then the
layer's own VJP at ``(a_i, delta_i)`` (Goodfellow 2015, "Efficient per-example
gradient computations"; the perturbation trick is flax NNX's
``Module.perturb``). Each layer's parameters must be used by one call per
forward pass, which ``run`` checks.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.linear import canonicalize_padding

from cljax.models._conv import use_canonical_convs


class LayerTaps(NamedTuple):
  """Tapped forward pass of a ``FunctionalModel``.

  Attributes:
    run: ``run(params, batch_stats, x, perturbations=None) -> (logits (B, C),
      inputs, outputs)``. ``inputs`` and ``outputs`` map each layer's path (a
      tuple, as in ``params``) to the input it received and the output it
      computed; ``perturbations`` maps the same paths to arrays added to the
      layer's output (zeros: the identity). Runs in eval mode. On CPU its
      plain convolutions run as ``canonical_conv`` (``_conv.py``: the same
      values and gradient, whose gradient stays on XLA:CPU's fast kernel
      inside the importances' chunk loop; ``jax.jvp`` through ``run``
      raises there).
    call: ``call(path, layer_params, batch_stats, a) -> s``, the layer at
      ``path`` alone as a pure function of its parameters and input (called
      as in ``run``).
    kinds: ``{path: class name}`` (e.g. ``"Linear"``, ``"Conv"``).
    unfold: ``{path: a -> patches}`` for the plain convolutions (exactly
      ``nnx.Conv``, without groups, input dilation or mask, with "SAME",
      "VALID" or explicit padding): ``a (B, *spatial, C_in)`` to ``(B, L,
      K)``, the ``L`` output positions' receptive fields in the order of the
      kernel reshaped to ``(K, C_out)``, so that ``s = patches @ kernel +
      bias``.
  """
  run: Callable
  call: Callable
  kinds: dict
  unfold: dict


def _owns_params(module) -> bool:
  return any(isinstance(v, nnx.Param) for v in vars(module).values())


def _submodule(model, path):
  for key in path:
    model = model[key] if isinstance(key, int) else getattr(model, key)
  return model


def _per_dim(value, nd: int):
  """A stride or dilation as flax reads it (``None``: 1; an int: every
  dimension), or ``None`` if it is neither that nor ``nd`` ints."""
  value = 1 if value is None else value
  value = (value,) * nd if isinstance(value, int) else value
  ok = isinstance(value, (tuple, list)) and len(value) == nd and all(
      isinstance(v, int) for v in value)
  return tuple(value) if ok else None


def _padding(pad, nd: int):
  """``"SAME"``, ``"VALID"`` or ``nd`` (low, high) pairs, read as the
  convolution itself reads ``pad`` (flax's ``canonicalize_padding``), else
  ``None``."""
  try:
    pad = canonicalize_padding(pad, nd)
  except ValueError:
    return None
  if isinstance(pad, str):
    return pad if pad in ("SAME", "VALID") else None
  return tuple(tuple(p) for p in pad)


def conv_unfold(conv: nnx.Conv) -> Callable | None:
  """``a -> patches`` of a plain ``nnx.Conv`` (see ``LayerTaps.unfold``), or
  ``None`` for one it does not cover (a subclass, which may transform its
  kernel in its own ``__call__``, or one given its own
  ``conv_general_dilated``, included)."""
  if (type(conv) is not nnx.Conv
      or conv.conv_general_dilated is not jax.lax.conv_general_dilated):
    return None
  nd = len(conv.kernel_size)
  pad = _padding(conv.padding, nd)
  strides = _per_dim(conv.strides, nd)
  dilation = _per_dim(conv.kernel_dilation, nd)
  if (pad is None or strides is None or dilation is None or
      conv.feature_group_count != 1 or conv.mask is not None or
      _per_dim(conv.input_dilation, nd) != (1,) * nd):
    return None
  size = conv.kernel_size
  reach = [(k - 1) * d + 1 for k, d in zip(size, dilation)]  # dilated kernel

  def unfold(a):
    # One gather from the padded input, at the flat indices
    # o_i * stride_i + k_i * dilation_i (output position o, kernel position
    # k), in the kernel's (*kernel_size, C_in) order. XLA:CPU ran
    # conv_general_dilated_patches, a grouped convolution, 3-13x slower
    # (34 ms against 10 ms for the CNN's second layer at 128 examples), and
    # one strided slice per kernel position compiled 2.5x longer.
    spatial = a.shape[1:-1]
    pads = (jax.lax.padtype_to_pads(spatial, reach, strides, pad)
            if isinstance(pad, str) else pad)
    a = jax.lax.pad(a, jnp.zeros((), a.dtype),  # negative pads crop
                    [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)])
    padded = a.shape[1:-1]
    out = [max(0, (n - r) // s + 1)  # 0: the kernel reaches past the input
           for n, r, s in zip(padded, reach, strides)]
    along = lambda v, axis: v.reshape([-1 if j == axis else 1
                                       for j in range(2 * nd)])
    index = jnp.zeros((), jnp.int32)  # (*out, *kernel_size) once broadcast
    for i in range(nd):
      index = (index * padded[i]
               + along(jnp.arange(out[i], dtype=jnp.int32) * strides[i], i)
               + along(jnp.arange(size[i], dtype=jnp.int32) * dilation[i],
                       nd + i))
    flat = a.reshape(a.shape[0], -1, a.shape[-1])
    patches = flat.at[:, index.reshape(-1)].get(mode="promise_in_bounds")
    return patches.reshape(a.shape[0], math.prod(out),
                           math.prod(size) * a.shape[-1])

  return unfold


def layer_taps(merge: Callable[[Any, Any], nnx.Module], params,
               batch_stats) -> LayerTaps:
  """Builds ``LayerTaps`` for a model rebuilt by ``merge(params,
  batch_stats)`` (``params``/``batch_stats`` give the structure)."""
  template = merge(params, batch_stats)
  kinds = {path: type(m).__name__ for path, m in nnx.iter_modules(template)
           if _owns_params(m)}
  unfold = {path: f for path, m in nnx.iter_modules(template)
            if path in kinds and (f := conv_unfold(m)) is not None}
  call_args = {}  # path -> (args, kwargs) after the first trace of ``run``

  def run(params, batch_stats, x, perturbations=None):
    model = merge(params, batch_stats)
    use_canonical_convs(model, always=True)  # their gradient, in loops
    inputs, outputs = {}, {}
    for path, m in nnx.iter_modules(model):
      if path not in kinds:
        continue
      base = type(m)

      def tapped(self, a, *args, _path=path, _base=base, **kwargs):
        if _path in inputs:
          raise ValueError(f"layer {_path} is called more than once per "
                           "forward pass; layer taps need one call per layer")
        inputs[_path] = a
        call_args[_path] = (args, kwargs)
        s = outputs[_path] = _base.__call__(self, a, *args, **kwargs)
        if perturbations is not None:
          s = s + perturbations[_path]
        return s

      m.__class__ = type(base.__name__, (base,), {"__call__": tapped})
    logits = model.head(model.features(x, train=False))
    missing = set(kinds) - set(inputs)
    if missing:
      raise ValueError(f"layers {sorted(missing)} were not called")
    return logits, inputs, outputs

  def call(path, layer_params, batch_stats, a):
    if path not in call_args:
      raise ValueError("call() needs run() to have been traced first")
    model = merge(params, batch_stats)
    layer = _submodule(model, path)
    for name, value in layer_params.items():
      getattr(layer, name)[...] = value
    args, kwargs = call_args[path]
    return layer(a, *args, **kwargs)

  return LayerTaps(run, call, kinds, unfold)


def layer_params(params, path):
  """The parameter subtree of the layer at ``path``."""
  for key in path:
    params = params[key]
  return params

