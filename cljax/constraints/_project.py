"""GEM and A-GEM gradient projections, on flat vectors and on pytrees."""

from __future__ import annotations

import jax
import jax.numpy as jnp

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
  if 0 in t:
    raise ValueError(f"{what}: no rows (t = 0): nothing to project against")
  for a, b in zip(g, mg):
    if b.shape[1:] != a.shape:
      raise ValueError(f"{what}: leaf shape {b.shape} is not (t, *{a.shape})")
  return g, mg


# XLA:CPU runs these short, wide products far below what the machine allows
# when the rows are long: at t = 10 rows of P = 10^6 (2 cores) G G^T takes
# 36 ms as one product, against 14 ms for NumPy's float64 BLAS, and one
# matrix-vector product for the row dots accumulates its rounding along P
# (1e-5 relative at P = 10^6, against 7e-7 by chunks). BLAS
# works through column blocks that stay in cache; so on CPU a leaf with
# long rows is formed the same way: a ``lax.map`` over column chunks of
# ``_CHUNK`` (a (t, _CHUNK) block, in L2 for t <= 20), one small product per
# chunk, the chunks' results summed as a pairwise tree. The Gram matrix
# then takes 9 ms at t = 10, P = 10^6 (18 ms at t = 20; either parity of P),
# and it is also the accurate form: chunks of 2^14 and a tree of them keep
# its largest error at 1e-7 of its diagonal, where one product accumulating
# along P lost 9e-7 at t = 20. Rows under 2^18 (at 10^5 the single products
# are faster), and other backends, whose BLAS runs the single products
# well, get those (``lax.platform_dependent`` picks at lowering).
_CHUNK = 2 ** 14
_LONG_ROW = 2 ** 18


def _tree_sum(parts):
  """``sum(parts, axis=0)`` as a pairwise tree (its rounding error grows
  with the log of the number of parts, not with their number)."""
  while parts.shape[0] > 1:
    h = parts.shape[0] // 2
    parts = jnp.concatenate([parts[:h] + parts[h:2 * h], parts[2 * h:]])
  return parts[0]


def _by_chunks(block_fn, b, *vecs):
  """``block_fn(b, *vecs)`` for a ``block_fn`` that sums over the columns
  of ``b`` (``(t, n)``) and the entries of ``vecs`` (``(n,)`` each): on
  CPU where ``n >= _LONG_ROW``, as the tree sum of its value on each column
  chunk of ``_CHUNK`` (and the remainder); else in one call."""
  n = b.shape[1]
  if n < _LONG_ROW:
    return block_fn(b, *vecs)
  k = n // _CHUNK

  def by_chunk(b, *vecs):
    def one(j):
      cut = lambda a: jax.lax.dynamic_slice_in_dim(a, j * _CHUNK, _CHUNK,
                                                   axis=a.ndim - 1)
      return block_fn(cut(b), *map(cut, vecs))

    parts = jax.lax.map(one, jnp.arange(k))
    if n % _CHUNK:
      rest = block_fn(b[:, k * _CHUNK:], *(a[k * _CHUNK:] for a in vecs))
      parts = jnp.concatenate([parts, rest[None]])
    return _tree_sum(parts)

  return jax.lax.platform_dependent(b, *vecs, cpu=by_chunk,
                                    default=block_fn)


def _row_dots(rows, vec):
  """``<rows_k, vec>`` for every k, summed over the leaves."""
  t = rows[0].shape[0]
  dots = lambda b, a: jnp.matmul(b, a, precision=_HI)
  return sum(_by_chunks(dots, b.reshape(t, -1), a.reshape(-1))
             for a, b in zip(vec, rows))


def _gram(rows):
  """``G G^T`` (``(t, t)``) summed over the leaves.

  Returned through a flat ``optimization_barrier``: the QP's LAPACK calls
  take column-major matrices, and XLA:CPU's layout assignment carried that
  layout back to the product itself, which then missed its fast (YNNPACK)
  kernel: at t = 2 and P = 10^5 the product and the QP after it took
  0.51 ms, against 0.17 ms with the barrier, and the whole projection
  0.65-0.70 ms against 0.31-0.33 (t = 1 and 5..20 kept the fast kernel
  either way)."""
  t = rows[0].shape[0]
  gram = lambda b: jnp.matmul(b, b.T, precision=_HI)
  out = sum(_by_chunks(gram, b.reshape(t, -1)) for b in rows)
  return jax.lax.optimization_barrier(out.reshape(-1)).reshape(t, t)


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
