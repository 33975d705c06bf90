"""Argument checks shared by every layer: values and shapes at the boundary.

Values are checked whenever they are concrete, whatever their type: Python
numbers, NumPy scalars or arrays, and JAX arrays outside a trace. A value
that is traced (an argument of a ``jit``-ed, ``vmap``-ed or differentiated
function) has no value yet and is not checked here; inside cljax's train
step the step's own non-finite check (``cljax.train.check_finite``) catches
what a bad traced value breaks. Shapes are static, so shape checks apply
under ``jit`` too. Every failure is a ``ValueError`` that names the argument.
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import numpy as np


def concrete(value) -> np.ndarray | None:
  """``value`` as a NumPy array, or ``None`` if it is traced."""
  if any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(value)):
    return None
  return np.asarray(value)


def check_value(name: str, value, ok: Callable[[np.ndarray], np.ndarray],
                requirement: str) -> None:
  """Raises ``ValueError`` unless every element of concrete ``value`` is a
  finite real number satisfying ``ok``; traced values pass unchecked."""
  v = concrete(value)
  if v is None:
    return
  if v.dtype == object and all(isinstance(e, int) for e in v.ravel()):
    raise ValueError(f"{name} must be a number within the range of a 64-bit "
                     f"integer, got {value!r}")
  if v.dtype == bool or not np.issubdtype(v.dtype, np.number) or (
      np.iscomplexobj(v)):
    raise ValueError(f"{name} must be a real number, got {value!r}")
  if not (np.all(np.isfinite(v)) and np.all(ok(v))):
    shown = v if v.size <= 8 else f"array of shape {v.shape}"
    raise ValueError(f"{name} must be finite and {requirement}, got {shown}")


def check_positive(name: str, value) -> None:
  check_value(name, value, lambda v: v > 0, "> 0")


def check_nonnegative(name: str, value) -> None:
  check_value(name, value, lambda v: v >= 0, ">= 0")


def check_integer(name: str, value, low: int, high: int | None = None
                  ) -> None:
  """An integer (of any numeric type) ``>= low`` (and ``<= high``)."""
  top = np.inf if high is None else high
  check_value(name, value, lambda v: (v >= low) & (v <= top) & (
      v == np.round(v)), f"an integer >= {low}" if high is None else
              f"an integer in [{low}, {high}]")


def as_int(name: str, value, low: int, high: int | None = None) -> int:
  """``check_integer``, then the value as a Python ``int`` (32.0 and
  ``np.int64(32)`` slice and size arrays as 32 does)."""
  check_integer(name, value, low, high)
  return int(value)


def check_unit_interval(name: str, value) -> None:
  check_value(name, value, lambda v: (v >= 0) & (v <= 1), "in [0, 1]")


def check_index(name: str, value, size: int):
  """An integer index in ``[0, size)``: returned as an ``int`` when
  concrete; a traced integer passes unchecked (returned as it is)."""
  dtype = getattr(value, "dtype", None)
  if dtype is None:
    dtype = np.asarray(value).dtype
  if np.ndim(value) or not np.issubdtype(dtype, np.integer) or isinstance(
      value, bool):
    raise ValueError(f"{name} must be an integer, got {value!r}")
  v = concrete(value)
  if v is None:
    return value
  if not 0 <= int(v) < size:
    raise ValueError(f"{name} must be in [0, {size}), got {int(v)}")
  return int(v)


def check_labels(name: str, labels, num_classes: int) -> None:
  """Concrete ``labels`` must be integers in ``[0, num_classes)``; names the
  first bad position."""
  v = concrete(labels)
  if v is None:
    return
  if not np.issubdtype(v.dtype, np.integer):
    raise ValueError(f"{name} must be integers, got dtype {v.dtype}")
  bad = np.flatnonzero((v < 0) | (v >= num_classes))
  if bad.size:
    i = bad[0]
    raise ValueError(f"{name}[{i}] = {v.ravel()[i]} is outside [0, "
                     f"{num_classes}) ({bad.size} such labels)")


def check_shape(name: str, array, shape: tuple) -> None:
  """``array``'s shape must equal ``shape`` (``None`` entries match any
  size); nothing is broadcast."""
  if not hasattr(array, "shape"):  # a list is an array here, not a pytree
    array = np.asarray(array)
  try:
    chex.assert_shape(array, shape)
  except AssertionError:
    want = ", ".join("*" if s is None else str(s) for s in shape)
    want = f"({want},)" if len(shape) == 1 else f"({want})"
    raise ValueError(f"{name} must have shape {want}, got "
                     f"{np.shape(array)}") from None


def check_same_shape(**arrays) -> None:
  """All ``arrays`` (by argument name) must have exactly the same shape."""
  arrays = {k: a if hasattr(a, "shape") else np.asarray(a)
            for k, a in arrays.items()}
  try:
    chex.assert_equal_shape(list(arrays.values()))
  except AssertionError:
    shapes = ", ".join(f"{k} {np.shape(a)}" for k, a in arrays.items())
    raise ValueError(f"shapes must be equal, got {shapes}") from None


def check_tree_like(name: str, tree, reference, reference_name="params"
                    ) -> None:
  """``tree`` must have ``reference``'s structure and leaf shapes exactly."""
  try:
    chex.assert_trees_all_equal_shapes(tree, reference)
  except (AssertionError, ValueError) as e:
    why = " ".join(str(e).split()).split("failed:")[-1].strip()[:300]
    raise ValueError(f"{name} must match {reference_name} in tree structure "
                     f"and leaf shapes ({why})") from None


def check_finite_tree(name: str, tree) -> None:
  """Concrete leaves of ``tree`` must be free of NaN and inf."""
  for leaf in jax.tree.leaves(tree):
    v = concrete(leaf)
    if v is not None and not np.all(np.isfinite(v)):
      raise ValueError(f"{name} contains NaN or inf")


def check_bool(name: str, mask) -> None:
  """A mask must be boolean (an int or float mask is a mistake, not a
  weighting)."""
  dtype = getattr(mask, "dtype", None)
  if dtype is None:
    dtype = np.asarray(mask).dtype
  if dtype != bool:
    raise ValueError(f"{name} must be boolean, got dtype {dtype}")


def check_mask(name: str, mask, batch: int, classes: int) -> None:
  """A class mask is boolean, ``(C,)`` or ``(B, C)``."""
  check_bool(name, mask)
  if np.shape(mask) not in ((classes,), (batch, classes)):
    raise ValueError(f"{name} must have shape ({classes},) or ({batch}, "
                     f"{classes}), got {np.shape(mask)}")
