"""PackNet (Mallya & Lazebnik 2018, "PackNet: Adding Multiple Tasks to a
Single Network by Iterative Pruning")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax import _validate
from cljax.methods._base import Method, Phase, TaskContext


def _prunable(path) -> bool:
  """A weight matrix or filter bank of the backbone (not a bias, a
  normalisation parameter or the classifier head)."""
  keys = [getattr(p, "key", getattr(p, "idx", None)) for p in path]
  return keys[-1] == "kernel" and keys[0] != "head"


def prune_free(weights, owner, fraction: float, task: int):
  """``owner`` with the free (``owner == 0``) weights of one array that are
  kept for task ``task`` marked ``task + 1``: all but the ``floor(fraction
  * free)`` of smallest magnitude (PackNet's per-layer magnitude pruning);
  the pruned stay free."""
  free = owner == 0
  n_prune = jnp.floor(fraction * jnp.sum(free)).astype(jnp.int32)
  return jnp.where(free & (magnitude_rank(weights, free) >= n_prune),
                   task + 1, owner)


def magnitude_rank(weights, among):
  """Each weight's rank by magnitude among those where ``among`` holds
  (0: the smallest; ties by position), the others after them."""
  order = jnp.argsort(jnp.where(among, jnp.abs(weights), jnp.inf).ravel())
  return jnp.zeros(order.shape, jnp.int32).at[order].set(
      jnp.arange(order.size, dtype=jnp.int32)).reshape(weights.shape)


def scale_by_tree(name: str) -> optax.GradientTransformationExtraArgs:
  """Updates multiplied leaf by leaf by the extra argument ``name`` of
  ``update`` (a tree like the parameters). PackNet chains it after the
  optimizer with a tree of 0/1 (``trainable``), so frozen weights never
  move, momentum and weight decay included; HAT before it, to condition
  the gradients."""
  def update(updates, state, params=None, **extra):
    del params
    return jax.tree.map(lambda u, m: u * m.astype(u.dtype), updates,
                        extra[name]), state
  return optax.GradientTransformationExtraArgs(
      lambda params: optax.EmptyState(), update)


class PackNet(Method):
  """PackNet: a task's weights are pruned by magnitude, retrained, then
  frozen; the next task trains the weights left free (task-IL).

  Each task trains in two phases. ``train``: the free weights of the
  backbone's weight matrices and filter banks, with every earlier task's
  weights frozen in place (in the forward pass too). ``retrain``: after the
  ``prune`` fraction of the free weights of smallest magnitude in each
  layer is released (set to 0 in the forward pass), the kept ones are
  retrained for ``retrain_epochs`` at ``retrain_lr_scale`` times the rate;
  then they belong to the task and are frozen, and the released ones are
  zeroed for the next task. Task ``j`` is predicted with the weights of
  tasks ``0..j`` only. Biases and normalisation parameters train with the
  first task and are frozen after it, as in the paper; the head trains
  only its current task's classes. BatchNorm running statistics are kept
  as each task ends and predict that task (the authors freeze them after
  the first task instead, training later tasks with BatchNorm in eval
  mode). As in the authors' code the last task is pruned and retrained
  too. The count released is ``floor(prune * free)`` exactly, ties broken
  by position (the authors' code releases every weight up to the magnitude
  of rank ``round(prune * free)``, ties included).

  Args:
    prune: fraction of the free weights released after each task (the
      paper prunes 50-75%), in (0, 1).
    retrain_epochs: epochs of the retraining phase.
    retrain_lr_scale: its learning-rate factor.
  """

  name = "packnet"
  task_incremental_only = True

  def __init__(self, prune: float = 0.5, retrain_epochs: int = 1,
               retrain_lr_scale: float = 0.1):
    _validate.check_value("prune", prune, lambda v: (v > 0) & (v < 1),
                          "in (0, 1)")
    _validate.check_integer("retrain_epochs", retrain_epochs, 1)
    _validate.check_positive("retrain_lr_scale", retrain_lr_scale)
    self.prune, self.retrain_epochs = float(prune), int(retrain_epochs)
    self.retrain_lr_scale = float(retrain_lr_scale)


  def init_state(self, model, stream):
    return {"owner": jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.int32),
                                  model.params),
            "trainable": jax.tree.map(jnp.ones_like, model.params),
            "stats": jax.tree.map(lambda a: jnp.zeros(
                (stream.num_tasks, *a.shape), a.dtype), model.batch_stats)}

  def on_task_end(self, ctx):
    s = ctx.method_state
    return {**s, "stats": jax.tree.map(lambda a, b: a.at[ctx.index].set(b),
                                       s["stats"], ctx.batch_stats)}

  def phases(self, index):
    return (Phase("train"), Phase("retrain", epochs=self.retrain_epochs,
                                  lr_scale=self.retrain_lr_scale))

  def optimizer(self, base, params):
    return optax.chain(base, scale_by_tree("trainable"))

  @property
  def extra_args(self):
    return lambda params, batch_stats, s, *_: {"trainable": s["trainable"]}

  def _trainable(self, owner, task: int, classes, train: bool):
    """1 where task ``task``'s phase trains: free (``train``) or the task's
    own (retrain) backbone weights; other leaves with the first task only;
    the head's columns of the task's ``classes``."""
    def leaf(path, own):
      if _prunable(path):
        return (own == (0 if train else task + 1)).astype(jnp.float32)
      if getattr(path[0], "key", None) == "head":
        cols = np.zeros(own.shape[-1], np.float32)
        cols[classes] = 1.0
        return jnp.broadcast_to(jnp.asarray(cols), own.shape)
      return jnp.full(own.shape, float(task == 0))
    return jax.tree_util.tree_map_with_path(leaf, owner)

  def on_phase_start(self, ctx: TaskContext, phase: Phase):
    s, k = ctx.method_state, ctx.index
    classes = ctx.stream.tasks[k].classes
    owner = s["owner"]
    if phase.name == "retrain":
      owner = jax.tree_util.tree_map_with_path(
          lambda path, w, own: prune_free(w, own, self.prune, k)
          if _prunable(path) else own, ctx.params, owner)
    return {**s, "owner": owner, "trainable": self._trainable(
        owner, k, classes, phase.name == "train")}

  def _masked(self, params, owner, keep):
    """``params`` with the backbone weights where ``keep(owner)`` fails
    zeroed."""
    return jax.tree_util.tree_map_with_path(
        lambda path, w, own: jnp.where(keep(own), w, 0.0).astype(w.dtype)
        if _prunable(path) else w, params, owner)

  def phase_params(self, ctx: TaskContext, phase: Phase):
    """The released weights are zeroed as the retraining starts (as the
    authors' pruner does), and stay 0: their ``trainable`` is 0. So every
    forward pass from then on (the retraining's, a learning curve's, the
    next task's) runs without them."""
    if phase.name != "retrain":
      return None
    return (self._masked(ctx.params, ctx.method_state["owner"],
                         lambda o: o > 0), ctx.batch_stats)

  def network_use(self, s, num_tasks):
    """The fraction of the backbone's weight matrices and filter banks
    each task owns."""
    owned = np.concatenate([np.ravel(own) for path, own in
                            jax.tree_util.tree_leaves_with_path(s["owner"])
                            if _prunable(path)])
    return [float(np.mean(owned == k + 1)) for k in range(num_tasks)]

  def eval_params(self, s, params, batch_stats, task, current):
    if task >= current:
      return params, batch_stats
    return (self._masked(params, s["owner"],
                         lambda o: (o > 0) & (o <= task + 1)),
            jax.tree.map(lambda a: a[task], s["stats"]))
