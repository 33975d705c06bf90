"""Shared pieces of the methods that add a term to fine-tuning's loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cljax.losses._cross_entropy import masked_cross_entropy
from cljax.methods._base import Method, TaskContext, task_cross_entropy


def task_sample(ctx: TaskContext, n: int | None, seed: int = 0):
  """Up to ``n`` training examples of task ``ctx.index`` (a fixed random
  subset, so the importance estimate is reproducible)."""
  split = ctx.stream.tasks[ctx.index].train
  if n is None or n >= len(split):
    return split
  idx = np.random.default_rng([seed, ctx.index]).permutation(len(split))[:n]
  return split.take(np.sort(idx))


def example_nll(ctx: TaskContext):
  """``(params, x, y) -> -log p(y | x)`` for one example, over the logits
  active for task ``ctx.index`` (eval-mode BatchNorm)."""
  mask = jnp.asarray(ctx.masks[ctx.index])

  def nll(params, x, y):
    (logits, _), _ = ctx.model.apply(params, ctx.batch_stats, x[None])
    return masked_cross_entropy(logits, jnp.reshape(y, (1,)), mask)[0]

  return nll


def example_outputs(ctx: TaskContext):
  """``(params, x) -> (C,)`` active logits of one example (inactive ones 0)."""
  mask = jnp.asarray(ctx.masks[ctx.index])

  def out(params, x):
    (logits, _), _ = ctx.model.apply(params, ctx.batch_stats, x[None])
    return jnp.where(mask, logits[0], 0.0)

  return out


class PenalisedFineTune(Method):
  """Fine-tuning's cross-entropy plus ``self.penalty(params, method_state)``
  (named ``self.term`` in the logged loss terms)."""

  term = "penalty"

  def penalty(self, params, method_state):
    raise NotImplementedError

  def loss_fn(self, model):

    def loss(params, batch_stats, method_state, batch, masks, rng):
      ce, _, new_stats = task_cross_entropy(model, params, batch_stats, batch,
                                            masks)
      pen = self.penalty(params, method_state)
      return ce + pen, ({"ce": ce, self.term: pen}, new_stats)

    return loss


def zeros_like_tree(tree):
  return jax.tree.map(jnp.zeros_like, tree)
