"""A convolution whose gradient XLA:CPU runs on its fast kernel inside loops.

XLA:CPU calls its optimised (Eigen) convolution only for channels-last
inputs and outputs and an ``(*spatial, in, out)`` kernel. JAX writes a
convolution's gradients as convolutions with other dimension orders (the
input gradient takes the flipped kernel as ``(*spatial, out, in)``, the
kernel gradient treats channels as the batch), and XLA:CPU's pass that
rewrites those into the fast form with transposes (``ConvCanonicalization``)
visits only a program's top level, not the body of a loop or the branches
of a conditional. Inside ``lax.fori_loop``, ``lax.scan``, ``lax.cond`` or
``lax.switch`` they run as XLA's naive loop nest instead.

``canonical_conv`` is ``lax.conv_general_dilated`` with a VJP written in the
fast form: the transposes that pass would add, made explicit,

  ``dx = conv(g dilated by the strides, flip(w) as (*spatial, out, in))``,
  ``dw = conv(x as (C_in, *spatial, B), g as (*spatial, B, C_out))`` with
  the kernel dilated by the strides, moved back to ``(*spatial, C_in,
  C_out)``,

with JAX's paddings for both (``jax.lax``'s convolution transpose rules).
The values are those of JAX's rules (the same products; a test compares
them on random inputs, strides and paddings). It has no forward-mode
derivative (``jax.custom_vjp``: ``jax.jvp`` through it raises), so cljax
uses it only on CPU and only where it differentiates a model itself, in
reverse mode: the layer taps of the exact Fisher, and the train step
(``reverse_mode_convs``), whose loops and conditionals (A-GEM's reference
gradient, GEM's memory gradients, the scan loop) would otherwise hold
naive convolutions (A-GEM's step with the CNN at batch 128 took 2.05 s,
32x fine-tuning's). Other settings (dilations, groups, other dimension
orders) call ``lax.conv_general_dilated`` as it is.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

_REVERSE_ONLY = contextvars.ContextVar("cljax_reverse_mode_convs",
                                       default=False)


@contextlib.contextmanager
def reverse_mode_convs():
  """While tracing inside this context, the plain convolutions of cljax's
  functional models (``use_canonical_convs``) run as ``canonical_conv`` on
  CPU: for code that differentiates them in reverse mode only.

  It acts at trace time, and ``jax.jit``'s cache does not see it: a jitted
  function of the model keeps the convolution of its first trace, so one
  first traced inside (e.g. called from a method's loss) has no forward
  mode outside either, and one first traced outside keeps JAX's gradient
  convolutions (slow on CPU inside loops) when called inside."""
  token = _REVERSE_ONLY.set(True)
  try:
    yield
  finally:
    _REVERSE_ONLY.reset(token)


def use_canonical_convs(model: nnx.Module, always: bool = False) -> None:
  """On CPU, inside ``reverse_mode_convs`` (or ``always``), makes every
  plain convolution of ``model`` (a freshly merged module: exactly
  ``nnx.Conv`` with ``lax.conv_general_dilated``) call ``canonical_conv``."""
  if jax.default_backend() != "cpu" or not (always or _REVERSE_ONLY.get()):
    return
  for _, m in nnx.iter_modules(model):
    if (type(m) is nnx.Conv
        and m.conv_general_dilated is lax.conv_general_dilated):
      m.conv_general_dilated = canonical_conv


def fast_form(dn: lax.ConvDimensionNumbers) -> bool:
  """Whether convolution dimension numbers are XLA:CPU's fast form:
  channels-last input and output, an ``(*spatial, in, out)`` kernel, 1-3
  spatial dimensions."""
  n = len(dn.lhs_spec) - 2
  last = n + 1
  return (1 <= n <= 3 and tuple(dn.lhs_spec) == (0, last, *range(1, last))
          and tuple(dn.rhs_spec) == (last, last - 1, *range(n))
          and tuple(dn.out_spec) == tuple(dn.lhs_spec))


def _fast_form(x, kernel, dimension_numbers) -> bool:
  if kernel.ndim != x.ndim or x.ndim < 3:
    return False
  return fast_form(lax.conv_dimension_numbers(x.shape, kernel.shape,
                                              dimension_numbers))


def _dn(n: int):
  spatial = "DHW"[-n:]
  return (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")


def _conv(x, kernel, strides, pads, precision, lhs_dilation=None,
          rhs_dilation=None):
  return lax.conv_general_dilated(x, kernel, strides, pads,
                                  lhs_dilation=lhs_dilation,
                                  rhs_dilation=rhs_dilation,
                                  dimension_numbers=_dn(x.ndim - 2),
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _fast_conv(x, kernel, strides, pads, precision):
  return _conv(x, kernel, strides, pads, precision)


def _fast_conv_fwd(x, kernel, strides, pads, precision):
  return _conv(x, kernel, strides, pads, precision), (x, kernel)


def _fast_conv_bwd(strides, pads, precision, res, g):
  x, kernel = res
  if g.size == 0:  # an empty output: nothing flows back (as in JAX's rule)
    return jnp.zeros_like(x), jnp.zeros_like(kernel)
  n = x.ndim - 2
  size_in, size_k, size_out = x.shape[1:-1], kernel.shape[:n], g.shape[1:-1]
  # (out - 1) * stride + 1: the output's extent dilated by the strides.
  dilated = [(o - 1) * s + 1 for o, s in zip(size_out, strides)]
  dx_pads = []
  for i in range(n):
    before = size_k[i] - 1 - pads[i][0]
    dx_pads.append((before, size_in[i] + size_k[i] - 1 - dilated[i] - before))
  flipped = lax.rev(kernel, tuple(range(n)))
  swapped = flipped.transpose(*range(n), n + 1, n)
  dx = _conv(g, swapped, (1,) * n, dx_pads, precision, lhs_dilation=strides)
  dw_pads = [(pads[i][0], dilated[i] - size_in[i] + size_k[i] - pads[i][0] - 1)
             for i in range(n)]
  channels_first = x.transpose(n + 1, *range(1, n + 1), 0)
  batch_in = g.transpose(*range(1, n + 1), 0, n + 1)
  dw = _conv(channels_first, batch_in, (1,) * n, dw_pads, precision,
             rhs_dilation=strides)
  return dx, dw.transpose(*range(1, n + 1), 0, n + 1)


_fast_conv.defvjp(_fast_conv_fwd, _fast_conv_bwd)


def canonical_conv(lhs, rhs, window_strides, padding, lhs_dilation=None,
                   rhs_dilation=None, dimension_numbers=None,
                   feature_group_count=1, batch_group_count=1, precision=None,
                   preferred_element_type=None, **kwargs):
  """``lax.conv_general_dilated``'s signature (as ``nnx.Conv`` calls it);
  the VJP of the module docstring where the convolution is plain
  (channels last, no dilation, one group), ``lax.conv_general_dilated``
  otherwise."""
  n = lhs.ndim - 2
  plain = (_fast_form(lhs, rhs, dimension_numbers)
           and all(d == 1 for d in (lhs_dilation or (1,) * n))
           and all(d == 1 for d in (rhs_dilation or (1,) * n))
           and feature_group_count == 1 and batch_group_count == 1
           and preferred_element_type is None
           and all(v is None for v in kwargs.values()))
  if not plain:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type, **kwargs)
  strides = tuple(int(s) for s in window_strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:-1], rhs.shape[:n], strides,
                                  padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _fast_conv(lhs, rhs, strides, pads, precision)
