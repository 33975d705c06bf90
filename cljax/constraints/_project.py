"""GEM and A-GEM gradient projections, on flat vectors and on pytrees."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cljax import _validate
from cljax.constraints._qp import _HI, solve_on_set, nonneg_qp


def _leaves(grad, memory_grads, what):
  g = jax.tree.leaves(grad)
  mg = jax.tree.leaves(memory_grads)
  if jax.tree.structure(grad) != jax.tree.structure(memory_grads):
    raise ValueError(f"{what}: tree structure differs from grad's")
  t = {a.shape[0] if a.ndim else None for a in mg}
  if len(t) != 1 or None in t:
    raise ValueError(f"{what}: every leaf needs the same leading axis t")
  for a, b in zip(g, mg):
    if b.shape[1:] != a.shape:
      raise ValueError(f"{what}: leaf shape {b.shape} is not (t, *{a.shape})")
  return g, mg


# XLA:CPU computes these short, wide products far below what the machine
# allows when the rows are long (2 cores, t = 10 rows of P = 10^6: a fused
# multiply-and-reduce over P 5.7 ms, one vector dot per row 3.4 ms; G G^T
# 34 ms as one product, 17 ms as a vector dot per pair of rows i <= j).
# Vector dots are also the accurate form: XLA:CPU sums them pairwise, where
# its matrix products accumulate along P (at P = 10^6 the Gram matrix's
# largest error is 0.06 by pairs of rows, 0.7 as one product, 21 by one
# matrix-vector product per row). So on CPU a long leaf is formed by vector
# dots in ``lax.map``s: the dots where P >= 2^14 t, the Gram matrix where
# P >= 2^19 and t <= 16 (its t (t + 1) / 2 pairs cost as much as the single
# product by t = 20). Only for an even row length: with an odd one each row
# after the first starts unaligned and the vector dots run 2-5x slower than
# the single products (t = 10, P = 10^6 + 1: 90 ms against 17). Other
# leaves, and other backends, whose BLAS runs the single products well, get
# those (``lax.platform_dependent`` picks at lowering).
_LONG_ROW = 2 ** 19


def _per_leaf(b, by_row, whole, *args, long: int | None = None,
              most_rows: int | None = None):
  """``by_row(*args)`` on CPU where the rows of ``b`` (``(t, n)``) are at
  least ``long`` (default ``_LONG_ROW``), of even length, and (if
  ``most_rows``) at most that many; else ``whole(*args)``."""
  t, n = b.shape
  if (n < (_LONG_ROW if long is None else long) or n % 2
      or (most_rows is not None and t > most_rows)):
    return whole(*args)
  return jax.lax.platform_dependent(*args, cpu=by_row, default=whole)


def _row_dots(rows, vec):
  """``<rows_k, vec>`` for every k, summed over the leaves."""
  t = rows[0].shape[0]

  def whole(b, a):
    return jnp.sum(b * a[None], axis=1)

  def by_row(b, a):
    return jax.lax.map(lambda r: jnp.dot(r, a, precision=_HI), b)

  flat = [(b.reshape(t, -1), a.reshape(-1)) for a, b in zip(vec, rows)]
  return sum(_per_leaf(b, by_row, whole, b, a, long=2 ** 14 * t)
             for b, a in flat)


def _gram(rows):
  """``G G^T`` (``(t, t)``) summed over the leaves."""
  t = rows[0].shape[0]

  def whole(b):
    return jnp.matmul(b, b.T, precision=_HI)

  def by_row(b):
    upper = jnp.asarray(np.stack(np.triu_indices(t), axis=1))  # (pairs, 2)
    dots = jax.lax.map(lambda ij: jnp.dot(b[ij[0]], b[ij[1]], precision=_HI),
                       upper)
    m = jnp.zeros((t, t), dots.dtype).at[upper[:, 0], upper[:, 1]].set(dots)
    return m + jnp.triu(m, 1).T

  flat = [b.reshape(t, -1) for b in rows]
  return sum(_per_leaf(b, by_row, whole, b, most_rows=16) for b in flat)


def _add_rows(vec, coef, rows):
  """``vec + rows^T coef``, leaf by leaf."""
  return [a + jnp.tensordot(coef, b, axes=1, precision=_HI).astype(a.dtype)
          for a, b in zip(vec, rows)]


def gem_project(grad, memory_grads, margin: float = 0.0, mask=None):
  """GEM's projection (Lopez-Paz & Ranzato 2017, eqs. 10-11).

  With margin 0: the Euclidean projection of ``grad`` onto
  ``{x : <x, G_k> >= 0 for all k in mask}``, ``x = G^T v + g`` with ``v``
  the exact solution of the dual QP (``nonneg_qp``). A margin acts as in
  the paper's reference code (its ``memory_strength``): dual variables
  ``v >= margin``, applied only when some constraint is violated
  (``<g, G_k> < 0``); otherwise ``grad`` is returned unchanged.

  Args:
    grad: ``(P,)`` or a pytree.
    memory_grads: ``(t, P)``, or a pytree like ``grad`` with a leading
      ``t`` axis on every leaf: one gradient per past task.
    margin: ``>= 0``.
    mask: ``(t,)`` bool, the rows in play (past tasks); default all.
  Returns:
    The projected gradient, like ``grad``.
  Raises:
    ValueError: mismatched shapes, or (when concrete, of any type) a
      negative or non-finite margin, or NaN/inf in the gradients.
  """
  _validate.check_nonnegative("margin", margin)
  _validate.check_finite_tree("grad", grad)
  _validate.check_finite_tree("memory_grads", memory_grads)
  g, mg = _leaves(grad, memory_grads, "memory_grads")
  dtypes = [a.dtype for a in g]
  # Solved in float32 at least (the QP's linear solves have no bfloat16),
  # returned in the gradient's own dtype.
  up = lambda a: a.astype(jnp.promote_types(a.dtype, jnp.float32))
  g, mg = [up(a) for a in g], [up(b) for b in mg]
  t = mg[0].shape[0]
  if mask is not None:
    _validate.check_shape("mask", mask, (t,))
    _validate.check_bool("mask", mask)
  mask = jnp.ones((t,), bool) if mask is None else jnp.asarray(mask, bool)
  dots = _row_dots(mg, g)
  violated = jnp.any(mask & (dots < 0))

  def project(_):
    gram = _gram(mg)
    gram = 0.5 * (gram + gram.T)
    lower = jnp.where(mask, margin, 0.0)
    u, _ = nonneg_qp(gram, dots + jnp.matmul(gram, lower, precision=_HI),
                     mask)
    v = jnp.where(mask, u + lower, 0.0)
    x = _add_rows(g, v, mg)
    # One step of iterative refinement: on the free set (v above its bound)
    # the KKT conditions say <G_k, x> = 0; the residual, a reduction over P,
    # is accurate even where the Gram matrix's long float32 dot is not
    # (XLA:CPU lost 4.6e-4 relative at P = 10^6, t = 2).
    free = mask & (u > 0)
    dv = solve_on_set(gram, _row_dots(mg, x), free)
    return _add_rows(x, dv, mg)

  out = jax.lax.cond(violated, project, lambda _: g, None)
  return jax.tree.unflatten(jax.tree.structure(grad),
                            [a.astype(d) for a, d in zip(out, dtypes)])


def agem_project(grad, ref_grad):
  """A-GEM (Chaudhry et al. 2019, eq. 11):
  ``g - min(0, <g, g_ref>) / <g_ref, g_ref> * g_ref`` (``g`` unchanged when
  ``g_ref = 0``).

  Args:
    grad, ref_grad: ``(P,)`` arrays or pytrees of the same structure.
  """
  if jax.tree.structure(grad) != jax.tree.structure(ref_grad):
    raise ValueError("ref_grad: tree structure differs from grad's")
  _validate.check_finite_tree("grad", grad)
  _validate.check_finite_tree("ref_grad", ref_grad)
  g, r = jax.tree.leaves(grad), jax.tree.leaves(ref_grad)
  for a, b in zip(g, r):
    if a.shape != b.shape:
      raise ValueError(f"ref_grad: leaf shape {b.shape} != grad's {a.shape}")
  # Reductions, not long dots (see gem_project on XLA:CPU's dot accuracy).
  dot = sum(jnp.sum(a * b) for a, b in zip(g, r))
  norm2 = sum(jnp.sum(b * b) for b in r)
  coef = jnp.where((dot < 0) & (norm2 > 0),
                   dot / jnp.where(norm2 > 0, norm2, 1.0), 0.0)
  return jax.tree.unflatten(jax.tree.structure(grad),
                            [a - coef * b for a, b in zip(g, r)])
