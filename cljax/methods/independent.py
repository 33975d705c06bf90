"""Independent: one network per task (the GEM paper's "independent"
baseline, Lopez-Paz & Ranzato 2017, sec. 5)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax.methods._base import Method


class Independent(Method):
  """One network per task (the GEM paper's independent baseline).

  Each task trains a fresh copy of the network from the same
  initialisation; task ``j`` is always predicted by its own network (a
  not-yet-trained task by the initial one, so forward transfer is 0 by
  construction). The trained networks are kept stacked to the stream's task
  count, so shapes never change.

  The paper gives each of the ``T`` networks ``1/T`` of the hidden units;
  here each has the configured model's full size (set ``model.hidden`` to
  match the paper's).
  """

  name = "independent"

  def init_state(self, model, stream):
    stack = lambda tree: jax.tree.map(
        lambda a: jnp.zeros((stream.num_tasks, *a.shape), a.dtype), tree)
    return {"init": (model.params, model.batch_stats),
            "params": stack(model.params), "stats": stack(model.batch_stats)}

  def start_params(self, ctx):
    return ctx.method_state["init"]

  def on_task_end(self, ctx):
    s, k = ctx.method_state, ctx.index
    put = lambda stack, new: jax.tree.map(lambda a, b: a.at[k].set(b), stack,
                                          new)
    return {**s, "params": put(s["params"], ctx.params),
            "stats": put(s["stats"], ctx.batch_stats)}

  def eval_params(self, s, params, batch_stats, task, current):
    if task == current:
      return params, batch_stats
    if task > current:
      return s["init"]
    pick = lambda stack: jax.tree.map(lambda a: a[task], stack)
    return pick(s["params"]), pick(s["stats"])
