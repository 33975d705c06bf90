"""Quadratic penalties in parameter space, and the state updates of the
methods that use them (EWC, online EWC, SI, MAS, L2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cljax import _validate

# A strength must be a finite number >= 0 (checked when concrete).
def check_strength(name: str, value) -> None:
  """A strength: one number (when concrete) ``>= 0``."""
  v = _validate.concrete(value)
  if v is not None and v.ndim:
    raise ValueError(f"{name} must be one number, got an array of shape "
                     f"{v.shape}")
  _validate.check_nonnegative(name, value)


def _check_no_negative(name, tree):
  """No concrete leaf of ``tree`` below 0 (a NaN passes: a diverged sweep
  member's Fisher is NaN, and the runner reports that member)."""
  for leaf in jax.tree.leaves(tree):
    v = _validate.concrete(leaf)
    if v is not None and np.any(v < 0):
      raise ValueError(f"{name} must be >= 0, got a minimum of {np.nanmin(v)}")


def _check_quadratic(params, anchor, importance, name="fisher"):
  """Anchor and importance exactly like params (nothing broadcast), the
  importance (when concrete) >= 0: a negative one rewards drifting away."""
  _validate.check_tree_like("anchor", anchor, params)
  _validate.check_tree_like(name, importance, params)
  _validate.check_finite_tree("anchor", anchor)
  for leaf in jax.tree.leaves(importance):
    _validate.check_nonnegative(name, leaf)


def ewc_penalty(params, anchor, fisher) -> jax.Array:
  """Elastic weight consolidation (Kirkpatrick et al. 2017, eq. 3), without
  its strength: ``0.5 * sum_k F_k (theta_k - theta*_k)^2`` over all leaves.

  The strength's scale depends on the Fisher estimator. cljax's
  ``fisher_diagonal`` (and EWC's default) is the empirical Fisher of the
  paper, the mean over examples of *per-example* squared gradients. The
  PyTorch libraries (Avalanche, Mammoth, FACIL) square the *minibatch-mean*
  gradient instead, which is smaller by up to the batch size ``B``: with
  ``E[g_bar^2] = E[g]^2 (1 - 1/B) + E[g^2] / B``, their estimate is about
  ``B`` times smaller where the mean gradient is small (at the end of a
  task). So a lambda tuned there corresponds to about ``lambda / B`` here
  (``B`` their Fisher batch size); ``tests/penalties_test.py`` checks the
  ratio on a trained model.

  Args:
    params, anchor, fisher: pytrees of the same structure and shapes;
      ``fisher >= 0``.
  Returns:
    A scalar.
  Raises:
    ValueError: structures or shapes that differ, or (when concrete) a
      negative or non-finite Fisher entry.
  """
  _check_quadratic(params, anchor, fisher)
  terms = jax.tree.map(lambda p, a, f: jnp.sum(f * jnp.square(p - a)),
                       params, anchor, fisher)
  return 0.5 * sum(jax.tree.leaves(terms))


def ewc_penalty_grad(params, anchor, fisher):
  """The gradient of ``ewc_penalty`` in ``params``, in closed form:
  ``F * (theta - theta*)`` (a pytree like ``params``); checked as
  ``ewc_penalty``."""
  _check_quadratic(params, anchor, fisher)
  return jax.tree.map(lambda p, a, f: f * (p - a), params, anchor, fisher)


def l2_penalty(params, anchor) -> jax.Array:
  """``0.5 * ||theta - theta*||^2``: the seeds' naive L2 constraint (EWC with
  every importance 1)."""
  _validate.check_tree_like("anchor", anchor, params)
  terms = jax.tree.map(lambda p, a: jnp.sum(jnp.square(p - a)), params, anchor)
  return 0.5 * sum(jax.tree.leaves(terms))


def multi_ewc_penalty(params, anchors, fishers, active) -> jax.Array:
  """Multi-task EWC (Kirkpatrick et al. 2017, sec. 2.1, one penalty per old
  task): ``sum_t active_t * ewc_penalty(params, anchors_t, fishers_t)``.

  Args:
    anchors, fishers: pytrees whose leaves have a leading task axis ``T``
      (a fixed maximum, so shapes do not change as tasks arrive).
    active: ``(T,)`` bool or 0/1, the tasks already learned.
  """
  _validate.check_shape("active", active, (None,))
  t = np.shape(active)[0]
  for name, tree in (("anchors", anchors), ("fishers", fishers)):
    _validate.check_tree_like(name, tree, jax.tree.map(
        lambda p: jax.ShapeDtypeStruct((t, *np.shape(p)), p.dtype), params),
        f"params with a leading task axis of {t} (active's length)")

  def one(a, f):
    return ewc_penalty(params, a, f)
  per_task = jax.vmap(one)(anchors, fishers)
  return jnp.sum(jnp.asarray(active, per_task.dtype) * per_task)


def ewc_merge(fisher, anchor, const, new_fisher, new_anchor):
  """Folds one more task's EWC penalty into one quadratic, exactly.

  ``sum_k 0.5 F_k (theta - theta*_k)^2 = 0.5 F (theta - m)^2 + c`` per
  parameter, with ``F = sum_k F_k``, the Fisher-weighted anchor
  ``m = sum_k F_k theta*_k / F`` and a constant ``c``. Adding task ``n``
  (the parallel-axis identity, free of cancellation):

  ``F' = F + F_n``, ``m' = (F m + F_n theta*_n) / F'``,
  ``c' = c + 0.5 sum F F_n / F' (m - theta*_n)^2``

  (``m' = theta*_n`` where ``F' = 0``). So multi-task EWC (Kirkpatrick et
  al. 2017, sec. 2.1: one penalty per old task) costs one penalty per step,
  whatever the number of tasks: ``ewc_penalty(theta, m, F) + c`` equals
  ``multi_ewc_penalty`` in value and gradient.

  Returns:
    ``(F', m', c')`` (pytrees like params, and a scalar).
  """
  _validate.check_tree_like("anchor", anchor, fisher, "fisher")
  _validate.check_tree_like("new_fisher", new_fisher, fisher, "fisher")
  _validate.check_tree_like("new_anchor", new_anchor, fisher, "fisher")
  _check_no_negative("fisher", fisher)
  _check_no_negative("new_fisher", new_fisher)
  total = jax.tree.map(jnp.add, fisher, new_fisher)
  pos = jax.tree.map(lambda f: f > 0, total)
  safe = jax.tree.map(lambda f, p: jnp.where(p, f, 1.0), total, pos)
  merged = jax.tree.map(
      lambda f, m, g, a, t, p: jnp.where(p, (f * m + g * a) / t, a),
      fisher, anchor, new_fisher, new_anchor, safe, pos)
  extra = jax.tree.map(
      lambda f, m, g, a, t, p: jnp.sum(jnp.where(
          p, f * g / t * jnp.square(m - a), 0.0)),
      fisher, anchor, new_fisher, new_anchor, safe, pos)
  return total, merged, const + 0.5 * sum(jax.tree.leaves(extra))


def online_ewc_update(fisher_running, fisher_new, gamma):
  """Online EWC (Schwarz et al. 2018, "Progress & Compress", eq. 8):
  ``F* <- gamma F* + F_new`` (``0 <= gamma <= 1``; the trees alike, F_new
  ``>= 0``); the anchor is replaced by the latest params."""
  _validate.check_unit_interval("gamma", gamma)
  _validate.check_tree_like("fisher_new", fisher_new, fisher_running,
                            "fisher_running")
  _check_no_negative("fisher_new", fisher_new)
  return jax.tree.map(lambda a, b: gamma * a + b, fisher_running, fisher_new)


def si_accumulate(omega, grads, delta):
  """SI path integral, one step (Zenke et al. 2017, eq. 3):
  ``omega_k += -g_k * delta_k``, with ``g`` the gradient of the task loss at
  ``theta(t)`` and ``delta = theta(t+1) - theta(t)`` the step's update (in a
  train step, optax's ``updates``: ``StepInfo.updates``). The three trees
  alike (nothing broadcast)."""
  _validate.check_tree_like("grads", grads, omega, "omega")
  _validate.check_tree_like("delta", delta, omega, "omega")
  return jax.tree.map(lambda w, g, d: w - g * d, omega, grads, delta)


def si_consolidate(big_omega, omega, params, task_start_params, xi):
  """SI importance at the end of a task (Zenke et al. 2017, eq. 5):
  ``Omega_k += omega_k / ((Delta theta_k)^2 + xi)`` with ``Delta theta`` the
  change of parameters over the task; the damping ``xi > 0`` bounds it.
  The four trees alike (nothing broadcast)."""
  _validate.check_positive("xi", xi)
  for name, tree in (("omega", omega), ("params", params),
                     ("task_start_params", task_start_params)):
    _validate.check_tree_like(name, tree, big_omega, "big_omega")
  return jax.tree.map(
      lambda big, w, p, s: big + w / (jnp.square(p - s) + xi),
      big_omega, omega, params, task_start_params)
