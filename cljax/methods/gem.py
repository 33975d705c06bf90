"""Gradient Episodic Memory (Lopez-Paz & Ranzato 2017) and A-GEM (Chaudhry
et al. 2019): fine-tuning whose gradient is projected so that the loss on
the episodic memory of past tasks does not increase."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from cljax import constraints, memory
from cljax.losses._cross_entropy import masked_cross_entropy
from cljax.methods._base import Method
from cljax.models._heads import example_masks


def memory_loss(model, params, batch_stats, x, y, t, masks):
  """Mean cross-entropy of memory examples, each over its own task's logits
  (eval-mode BatchNorm: memory passes do not move the running stats)."""
  (logits, _), _ = model.apply(params, batch_stats, x)
  return jnp.mean(masked_cross_entropy(logits, y, example_masks(masks, t)))


class _Episodic(Method):
  """Fine-tuning plus a per-task episodic memory filled at each task's end."""

  def __init__(self, memory_size: int = 256, selection: str = "last"):
    if memory_size < 1:
      raise ValueError(f"memory_size must be >= 1, got {memory_size}")
    if selection not in memory.SELECTIONS:
      raise ValueError(f"selection must be one of {memory.SELECTIONS}, got "
                       f"{selection!r}")
    self.memory_size, self.selection = int(memory_size), selection

  def init_state(self, model, stream):
    self._model = model
    return memory.episodic_memory(stream.num_tasks, self.memory_size,
                                  stream.input_shape)

  def on_task_end(self, ctx):
    return memory.store_task(ctx.method_state, ctx.index,
                             ctx.stream.tasks[ctx.index].train,
                             selection=self.selection, seed=ctx.index)


class GEM(_Episodic):
  """GEM (Lopez-Paz & Ranzato 2017, Alg. 1): each step, the gradients ``G``
  of the loss on every past task's memory (one ``vmap`` over the fixed
  ``T`` memory rows, unfilled rows masked) constrain the new gradient ``g``
  to ``<g~, G_k> >= 0``; ``g~`` solves GEM's QP on the device
  (``cljax.constraints.gem_project``, chained before the optimizer).

  Args:
    memory_size: examples per task (paper: 256).
    margin: the reference code's ``memory_strength`` (paper's runs: 0.5).
    selection: ``"last"`` (the task's last examples, as the paper) or
      ``"random"``.
  """

  name = "gem"

  def __init__(self, memory_size: int = 256, margin: float = 0.5,
               selection: str = "last"):
    super().__init__(memory_size, selection)
    if not margin >= 0:
      raise ValueError(f"margin must be >= 0, got {margin}")
    self.margin = float(margin)

  def optimizer(self, base, params):
    return optax.chain(constraints.gem(self.margin), base)

  def extra_args(self, params, batch_stats, mem, batch, masks, rng):
    grad = jax.grad(lambda p, x, y, t: memory_loss(self._model, p, batch_stats,
                                                   x, y, t, masks))
    g = jax.vmap(grad, in_axes=(None, 0, 0, 0))(params, mem.x, mem.y, mem.t)
    return {"memory_grads": g, "memory_mask": mem.filled}


class AGEM(_Episodic):
  """A-GEM (Chaudhry et al. 2019, eq. 11): the reference gradient is the
  gradient on ``ref_size`` examples drawn uniformly from the memories of all
  past tasks; ``g~ = g - min(0, g.g_ref)/(g_ref.g_ref) g_ref``
  (``cljax.constraints.agem_project``, chained before the optimizer).

  Args:
    memory_size: examples per task.
    ref_size: examples per reference gradient (paper: 256).
    selection: as for ``GEM``.
  """

  name = "agem"

  def __init__(self, memory_size: int = 256, ref_size: int = 256,
               selection: str = "last"):
    super().__init__(memory_size, selection)
    if ref_size < 1:
      raise ValueError(f"ref_size must be >= 1, got {ref_size}")
    self.ref_size = int(ref_size)

  def optimizer(self, base, params):
    return optax.chain(constraints.agem(), base)

  def extra_args(self, params, batch_stats, mem, batch, masks, rng):
    t_count, m = mem.y.shape
    weight = jnp.repeat(mem.filled, m).astype(jnp.float32)
    on = jnp.any(mem.filled)
    p = jnp.where(on, weight, 1.0)  # nothing stored yet: any index, unused
    idx = jax.random.choice(rng, t_count * m, (self.ref_size,),
                            p=p / p.sum())
    flat = lambda a: a.reshape(t_count * m, *a.shape[2:])[idx]
    ref = jax.grad(memory_loss, argnums=1)(
        self._model, params, batch_stats, flat(mem.x), flat(mem.y),
        flat(mem.t), masks)
    return {"ref_grad": jax.tree.map(lambda r: jnp.where(on, r, 0.0), ref)}
