"""Riemannian Walk (Chaudhry, Dokania, Ajanthan & Torr 2018)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax import _validate
from cljax.methods._regularized import (PenalisedFineTune,
                                        importance_function, step_delta,
                                        zeros_like_tree)
from cljax.regularizers import (check_strength, minmax_normalise,
                                rwalk_fisher, rwalk_score_step,
                                si_accumulate)


class RWalk(PenalisedFineTune):
  """Riemannian Walk: online Fisher plus KL-normalised path scores
  (Chaudhry et al. 2018, ECCV).

  ``L = CE_t + lam * sum_i (F^_i + s^_i) (theta_i - theta*_i)^2`` (eq. 8),
  with ``theta*`` the parameters at the end of the previous task and
  ``F^``, ``s^`` the Fisher and the scores each min-max normalised to
  [0, 1] over all parameters.

  Every step adds the batch's empirical Fisher ``F_b`` and ``-g * delta
  theta`` to window accumulators, with ``g`` the gradient of the task loss
  alone (as SI's). Every ``update_every`` steps (``Delta t``) the window
  closes: the task's score grows by ``max(0, omega / (0.5 F (theta -
  theta_w)^2 + eps))`` (eq. 7, with the Fisher as the window found it),
  then the online Fisher moves to ``alpha * mean(F_b) + (1 - alpha) F``
  (eq. 6, EWC++'s moving average of the mini-batches' empirical Fisher).

  ``F_b`` is, by ``fisher``: ``"empirical"`` (default), the mean over the
  batch's examples of their squared per-example gradients of the task
  loss, exact (``vmap`` of ``grad``, or the model's layer taps), at the
  step's parameters before the update, in eval mode (BatchNorm by its
  running statistics after the step), on the batch before any augmentation,
  over the logits of its first example's task (``run_stream``'s batches
  hold one task); ``"minibatch"``, the square of the batch's mean gradient
  ``g^2``, as the authors' code has it (no extra backward pass; a
  different, smaller quantity: the square of a mean, not a mean of
  squares).

  At a task's end the scores are averaged with the previous tasks' (``s
  <- (s + s_task) / 2``, the first task's kept as is), against the
  rigidity that summing would build up.

  Where the authors' code (facebookresearch/agem) departs from the paper we
  follow the paper: the ``0.5`` in the KL term (the code drops it; a scale
  the normalisation absorbs) and the score average (the code's
  ``assign_add`` makes it ``1.5 s + 0.5 s_task``). We also close a task's
  last, partial window at its end (the code drops it).

  Args:
    lam: strength ``lam >= 0`` (the authors' runs: 1).
    alpha: the online Fisher's weight on a new window, in (0, 1] (0.9).
    eps: the score's damping ``eps > 0`` (1e-3, the authors' code).
    update_every: steps per window, ``Delta t`` (10 for MNIST, 50 for CIFAR
      in the paper's supplement).
    fisher: ``"empirical"`` or ``"minibatch"`` (above).
    chunk_size: examples per backward pass of the ``"empirical"`` Fisher.
    form: ``"transform"`` or ``"loss"`` (see ``PenalisedFineTune``).
  """

  name, term = "rwalk", "rwalk"
  data_hparams = ("lam", "alpha", "eps")
  # lam * sum I d^2 = 2 lam * (0.5 sum I d^2)
  strength = property(lambda self: 2.0 * self.lam)

  def __init__(self, lam: float = 1.0, alpha: float = 0.9, eps: float = 1e-3,
               update_every: int = 10, fisher: str = "empirical",
               chunk_size: int = 128, form: str = "transform"):
    super().__init__(form)
    if fisher not in ("empirical", "minibatch"):
      raise ValueError("fisher must be 'empirical' or 'minibatch', got "
                       f"{fisher!r}")
    self.fisher = fisher
    self.chunk_size = _validate.as_int("chunk_size", chunk_size, 1)
    check_strength("lam", lam)
    _validate.check_value("alpha", alpha, lambda v: (v > 0) & (v <= 1),
                          "in (0, 1]")
    _validate.check_positive("eps", eps)
    _validate.check_integer("update_every", update_every, 1)
    self.lam, self.alpha, self.eps = float(lam), float(alpha), float(eps)
    self.update_every = int(update_every)

  def init_state(self, model, stream):
    if self.fisher == "empirical":
      self._batch_fisher_fn = importance_function(
          model, "fisher", chunk_size=self.chunk_size)
    z = zeros_like_tree(model.params)
    return {"anchor": model.params, "importance": z, "fisher": z,
            "score": z, "task_score": z, "omega": z, "window_fisher": z,
            "window_start": model.params,
            "window_steps": jnp.zeros((), jnp.int32)}

  def _close_window(self, s, params):
    """The window's score, then Fisher, update; the accumulators restart."""
    steps = jnp.maximum(s["window_steps"], 1).astype(jnp.float32)
    z = zeros_like_tree(s["omega"])
    return {**s,
            "task_score": rwalk_score_step(s["task_score"], s["omega"],
                                           s["fisher"], params,
                                           s["window_start"], self.eps),
            "fisher": rwalk_fisher(s["fisher"], s["window_fisher"], steps,
                                   self.alpha),
            "omega": z, "window_fisher": z, "window_start": params,
            "window_steps": jnp.zeros((), jnp.int32)}

  def batch_fisher(self, params, g, info):
    """``F_b``: the batch's Fisher (``fisher``), equal on every shard."""
    if self.fisher == "minibatch":
      return jax.tree.map(jnp.square, g)
    b = info.batch
    n = b["y"].shape[0]
    unused = jax.random.key_data(jax.random.split(jax.random.key(0), n))
    local = self._batch_fisher_fn(
        params, info.batch_stats, b["x"], b["y"], jnp.ones((n,), jnp.float32),
        jnp.asarray(info.masks)[b["t"][0]], unused)
    # Equal shards: the global batch's mean is the mean of theirs.
    return jax.tree.map(lambda a: jnp.mean(info.gather(a[None]), 0), local)

  def update_method_state(self, s, old_params, new_params, grads, info):
    g = grads
    if self.form == "loss":
      g = jax.tree.map(jnp.subtract, grads, self.penalty_grad(old_params, s))
    s = {**s, "omega": si_accumulate(s["omega"], g, step_delta(info, "RWalk")),
         "window_fisher": jax.tree.map(
             jnp.add, s["window_fisher"],
             self.batch_fisher(old_params, g, info)),
         "window_steps": s["window_steps"] + 1}
    return jax.lax.cond(s["window_steps"] >= self.update_every,
                        lambda: self._close_window(s, new_params), lambda: s)

  def on_task_end(self, ctx):
    s = ctx.method_state
    s = jax.lax.cond(s["window_steps"] > 0,  # the task's last, partial window
                     lambda: self._close_window(s, ctx.params), lambda: s)
    score = (s["task_score"] if ctx.index == 0 else jax.tree.map(
        lambda a, b: (a + b) / 2, s["score"], s["task_score"]))
    importance = jax.tree.map(jnp.add, minmax_normalise(s["fisher"]),
                              minmax_normalise(score))
    z = zeros_like_tree(score)
    return {**s, "anchor": ctx.params, "importance": importance,
            "score": score, "task_score": z}
