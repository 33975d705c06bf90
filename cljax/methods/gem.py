"""Gradient Episodic Memory (Lopez-Paz & Ranzato 2017) and A-GEM (Chaudhry
et al. 2019): fine-tuning whose gradient is projected so that the loss on
the episodic memory of past tasks does not increase."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from cljax import _validate
from cljax import constraints, memory
from cljax._distributed import rows_mean
from cljax.data._batching import eval_batches
from cljax.losses._cross_entropy import masked_cross_entropy
from cljax.methods._base import Method
from cljax.models._heads import example_masks


def memory_loss(model, params, batch_stats, x, y, t, masks):
  """Mean cross-entropy of memory examples, each over its own task's logits
  (eval-mode BatchNorm: memory passes do not move the running stats)."""
  (logits, _), _ = model.apply(params, batch_stats, x)
  return jnp.mean(masked_cross_entropy(logits, y, example_masks(masks, t)))


def memory_buckets(t_count: int) -> list[int]:
  """Slot counts ``1, 2, 4, ..., t_count`` whose memory gradients GEM
  computes: at most twice the filled slots, so the step's cost grows with
  the number of past tasks instead of being fixed at ``t_count``."""
  sizes, b = [], 1
  while b < t_count:
    sizes.append(b)
    b *= 2
  return sizes + [t_count]


class _Episodic(Method):
  """Fine-tuning plus a per-task episodic memory filled at each task's end."""

  def __init__(self, memory_size: int = 256, selection: str = "last"):
    _validate.check_integer("memory_size", memory_size, 1)
    if selection not in memory.SELECTIONS:
      raise ValueError(f"selection must be one of {memory.SELECTIONS}, got "
                       f"{selection!r}")
    self.memory_size, self.selection = int(memory_size), selection

  def check(self, stream):
    n, k = min((len(self.train_split(stream, k)), k)
               for k in range(stream.num_tasks))
    if self.memory_size > n:
      raise ValueError(f"memory_size={self.memory_size} exceeds task {k}'s "
                       f"{n} training examples (a memory row is filled from "
                       f"one task's data); use a memory_size <= {n}")

  def init_state(self, model, stream):
    self._model = model
    return memory.episodic_memory(stream.num_tasks, self.memory_size,
                                  stream.input_shape)

  def on_task_end(self, ctx):
    return memory.store_task(ctx.method_state, ctx.index,
                             ctx.stream.tasks[ctx.index].train,
                             selection=self.selection, seed=ctx.index)


class GEM(_Episodic):
  """GEM: no past task's memory loss may rise (Lopez-Paz & Ranzato 2017).

  GEM (Lopez-Paz & Ranzato 2017, Alg. 1): each step, the gradients ``G``
  of the loss on every past task's memory (one ``vmap`` over the fixed
  ``T`` memory rows, unfilled rows masked) constrain the new gradient ``g``
  to ``<g~, G_k> >= 0``; ``g~`` solves GEM's QP on the device
  (``cljax.constraints.gem_project``, chained before the optimizer). On a
  data-parallel mesh each device computes the memory gradients over its
  share of every task's memory rows, averaged over the devices
  (``rows_mean``), when the device count divides ``memory_size``.

  Args:
    memory_size: examples per task (paper: 256).
    margin: the reference code's ``memory_strength`` (paper's runs: 0.5).
    selection: ``"last"`` (the task's last examples, as the paper) or
      ``"random"``.
  """

  name = "gem"
  data_hparams = ("margin",)

  def __init__(self, memory_size: int = 256, margin: float = 0.5,
               selection: str = "last"):
    super().__init__(memory_size, selection)
    _validate.check_nonnegative("margin", margin)
    self.margin = float(margin)

  def optimizer(self, base, params):
    return optax.chain(constraints.gem(self.margin), base)

  def extra_args(self, params, batch_stats, mem, batch, masks, rng):
    grad = jax.grad(lambda p, x, y, t: memory_loss(self._model, p, batch_stats,
                                                   x, y, t, masks))
    t_count = mem.y.shape[0]
    sizes = [0] + memory_buckets(t_count)

    def grads_of_first(b):
      def branch(_):
        if b == 0:
          return jax.tree.map(
              lambda p: jnp.zeros((t_count, *p.shape), p.dtype), params)
        g = rows_mean(lambda x, y, t: jax.vmap(
            grad, in_axes=(None, 0, 0, 0))(params, x, y, t),
                      (mem.x[:b], mem.y[:b], mem.t[:b]), axis=1)
        return jax.tree.map(
            lambda a: jnp.pad(a, [(0, t_count - b)] + [(0, 0)] * (a.ndim - 1)),
            g)
      return branch

    # Tasks fill slots 0, 1, ... in order; only the smallest bucket holding
    # the filled slots is computed, none while the memory is empty (every
    # branch is compiled with the step, so nothing recompiles as tasks
    # arrive).
    filled = jnp.sum(mem.filled)
    which = jnp.searchsorted(jnp.asarray(sizes), filled)
    g = jax.lax.switch(which, [grads_of_first(b) for b in sizes], None)
    return {"memory_grads": g, "memory_mask": mem.filled}


class AGEM(_Episodic):
  """A-GEM: projection against a memory gradient (Chaudhry et al. 2019).

  A-GEM (Chaudhry et al. 2019, eq. 11): the reference gradient is the
  gradient on ``ref_size`` examples drawn uniformly from the memory of all
  past tasks; ``g~ = g - min(0, g.g_ref)/(g_ref.g_ref) g_ref``
  (``cljax.constraints.agem_project``, chained before the optimizer). The
  sample is drawn with the key every shard shares; on a data-parallel mesh
  each device computes the gradient over its share of it (``rows_mean``),
  when the device count divides ``ref_size``.

  Args:
    memory_size: examples per task.
    ref_size: examples per reference gradient (paper: 256).
    selection: as for ``GEM`` (episodic memory).
    memory: ``"episodic"`` (``memory_size`` per task, as in the paper) or
      ``"reservoir"`` (one reservoir of ``memory_size * T`` examples that
      every task's data streams through at the task's end).
  """

  name = "agem"
  MEMORIES = ("episodic", "reservoir")
  _CHUNK = 256  # reservoir insertion: fixed-size chunks, compiled once

  def __init__(self, memory_size: int = 256, ref_size: int = 256,
               selection: str = "last", memory: str = "episodic"):
    super().__init__(memory_size, selection)
    _validate.check_integer("ref_size", ref_size, 1)
    if memory not in self.MEMORIES:
      raise ValueError(f"memory must be one of {self.MEMORIES}, got "
                       f"{memory!r}")
    self.ref_size, self.memory = int(ref_size), memory

  def check(self, stream):
    if self.memory == "episodic":  # a reservoir may hold more than a task
      super().check(stream)

  def init_state(self, model, stream):
    if self.memory == "episodic":
      return super().init_state(model, stream)
    self._model = model
    # A wrapper of its own: jit caches are shared per wrapped function.
    self._add = jax.jit(lambda *a: memory.reservoir_add(*a))
    return memory.reservoir_buffer(self.memory_size * stream.num_tasks,
                                   stream.input_shape)

  def on_task_end(self, ctx):
    if self.memory == "episodic":
      return super().on_task_end(ctx)
    buf = ctx.method_state
    for k, b in enumerate(eval_batches(ctx.stream.tasks[ctx.index].train,
                                       self._CHUNK)):
      buf = self._add(buf, b["x"], b["y"], b["t"],
                      jax.random.key(1000 * ctx.index + k), b["w"] > 0)
    return buf

  def optimizer(self, base, params):
    return optax.chain(constraints.agem(), base)

  def extra_args(self, params, batch_stats, mem, batch, masks, rng):
    if self.memory == "episodic":
      t_count, m = mem.y.shape
      weight = jnp.repeat(mem.filled, m).astype(jnp.float32)
      flat = lambda a: a.reshape(t_count * m, *a.shape[2:])
    else:
      size = mem.y.shape[0]
      weight = (jnp.arange(size) < mem.seen).astype(jnp.float32)
      flat = lambda a: a
    on = jnp.any(weight > 0)
    p = jnp.where(on, weight, 1.0)  # nothing stored yet: any index, unused
    idx = jax.random.choice(rng, len(weight), (self.ref_size,), p=p / p.sum())
    # No memory pass while nothing is stored (the first task).
    # Each shard gathers only its share of the sample's rows.
    grad = lambda i: jax.grad(memory_loss, argnums=1)(
        self._model, params, batch_stats, flat(mem.x)[i], flat(mem.y)[i],
        flat(mem.t)[i], masks)
    ref = jax.lax.cond(on, lambda: rows_mean(grad, (idx,)),
                       lambda: jax.tree.map(jnp.zeros_like, params))
    return {"ref_grad": ref}
