"""GEM's dual quadratic program, solved exactly inside ``jit``.

GEM (Lopez-Paz & Ranzato 2017, eqs. 10-11) projects a gradient ``g`` onto
``{x : G x >= 0}`` (``G``: ``(t, P)`` memory gradients) through the dual

  ``min_v 1/2 v^T (G G^T) v + (G g)^T v   s.t.   v >= margin``

and ``x = G^T v + g``. Since ``1/2 v^T G G^T v + g^T G^T v = 1/2 ||G^T v +
g||^2 - 1/2 ||g||^2`` this is a non-negative least-squares problem in
``u = v - margin``, which the Lawson-Hanson active-set method (Lawson & Hanson
1974, ch. 23; Bro & de Jong 1997) solves *exactly* in finitely many steps:
every iterate solves the equality-constrained problem on a "passive" set of
free variables, so the answer is the exact solution of the final set's
linear system rather than the limit of a gradient method. It starts from
the violated constraints as the passive set (usually the final one) and
then moves one index in or out per iteration, so ``4 t + 8`` iterations
bound the typical count (one to a few) generously; the loop stops earlier
on convergence. All shapes are static: ``t`` is a fixed maximum, and rows
outside ``mask`` (tasks not yet seen) are held at ``v = 0``.

Conditioning, in float32: the ``t x t`` system is Jacobi-scaled to a unit
diagonal; an index enters the passive set only if its scaled multiplier
exceeds a relative tolerance, so duplicate or colinear rows (``G G^T``
singular) never enter together (the second one's multiplier is 0 up to
rounding once the first is in), and zero rows never enter; each passive-set
solve gets one step of iterative refinement.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax import _validate

_HI = jax.lax.Precision.HIGHEST


def solve_on_set(m, c, passive):
  """``s`` with ``s_P = -M_PP^{-1} c_P`` and ``s_Z = 0``."""
  eye = jnp.eye(m.shape[0], dtype=m.dtype)
  both = passive[:, None] & passive[None, :]
  mp = jnp.where(both, m, eye)
  rhs = jnp.where(passive, -c, 0.0)
  s = jnp.linalg.solve(mp, rhs)
  s = s + jnp.linalg.solve(mp, rhs - jnp.matmul(mp, s, precision=_HI))
  return jnp.where(passive, s, 0.0)


def nonneg_qp(m, c, mask=None, *, max_iter: int | None = None, tol=1e-6):
  """``argmin_{u >= 0} 1/2 u^T M u + c^T u`` over the rows in ``mask``.

  Args:
    m: ``(t, t)`` symmetric positive semi-definite.
    c: ``(t,)``.
    mask: ``(t,)`` bool, the variables in play (others are 0); default all.
    max_iter: iteration bound (default ``4 t + 8``).
    tol: relative tolerance on the scaled multipliers.
  Returns:
    ``(u (t,), iterations)``.
  """
  _validate.check_shape("m", m, (None, None))
  t = m.shape[0]
  _validate.check_shape("m", m, (t, t))
  _validate.check_shape("c", c, (t,))
  if mask is not None:
    _validate.check_shape("mask", mask, (t,))
  mask = jnp.ones((t,), bool) if mask is None else jnp.asarray(mask, bool)
  max_iter = 4 * t + 8 if max_iter is None else max_iter
  diag = jnp.diagonal(m)
  live = mask & (diag > 0)
  d = jnp.where(live, 1.0 / jnp.sqrt(jnp.where(live, diag, 1.0)), 0.0)
  ms = m * d[:, None] * d[None, :]  # unit diagonal on live rows
  cs = c * d
  thresh = tol * jnp.maximum(1.0, jnp.max(jnp.abs(cs)))

  def multipliers(u):
    return -(jnp.matmul(ms, u, precision=_HI) + cs)

  def body(state):
    u, passive, it, _ = state
    s = solve_on_set(ms, cs, passive)
    bad = passive & (s <= 0)

    def backtrack(_):
      ratio = jnp.where(bad, u / jnp.where(bad, u - s, 1.0), jnp.inf)
      alpha = jnp.clip(jnp.min(ratio), 0.0, 1.0)
      un = u + alpha * (s - u)
      blocked = bad & (ratio <= alpha)
      keep = passive & ~blocked & (un > 0)
      # Not done (``any(bad)`` holds here), typed like the inputs, which
      # may differ per device under ``shard_map`` (as ``advance``'s flag).
      return jnp.where(keep, un, 0.0), keep, ~jnp.any(bad)

    def advance(_):
      w = jnp.where(live & ~passive, multipliers(s), -jnp.inf)
      j = jnp.argmax(w)
      add = w[j] > thresh
      return s, passive.at[j].set(passive[j] | add), ~add

    u, passive, done = jax.lax.cond(jnp.any(bad), backtrack, advance, None)
    return u, passive, it + 1, done

  def cond(state):
    return (~state[3]) & (state[2] < max_iter)

  # Warm start: the passive set begins as the variables whose multipliers at
  # u = 0 are positive (for GEM: the violated constraints), usually the final
  # set, so most problems take one or two iterations. It is kept only if its
  # system solves cleanly to a positive point (duplicate or colinear rows
  # make it singular); otherwise the loop starts from the empty set.
  start = live & (-cs > thresh)
  s0 = solve_on_set(ms, cs, start)
  resid = jnp.where(start, jnp.matmul(ms, s0, precision=_HI) + cs, 0.0)
  ok = (jnp.all(jnp.isfinite(s0)) & jnp.all(jnp.where(start, s0 > 0, True))
        & (jnp.max(jnp.abs(resid)) <= 1e-4 * jnp.maximum(1.0, jnp.max(
            jnp.abs(cs)))))
  init = (jnp.where(ok, s0, 0.0), start & ok, 0,
          ok & False)  # not done, typed like the inputs (see backtrack)
  u, _, it, _ = jax.lax.while_loop(cond, body, init)
  return u * d, it
