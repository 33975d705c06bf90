"""Class-balanced exemplar memory with herding, for class-incremental
rehearsal (iCaRL, Rebuffi et al. 2017; End-to-End IL, Castro et al. 2018).

The memory has ``K`` slots for the whole stream (static shapes: the train
step compiles once). Each stored exemplar keeps its class, task, its rank in
its class's selection order and, for methods that need them, the logits the
model gave it when it was stored. Two budgets, as in the papers: a fixed
total ``K`` shared by the classes seen (``m = K // classes seen`` per class,
iCaRL) or a fixed ``m`` per class. When new classes arrive, every old class
keeps the first ``m`` of its ordered exemplars (iCaRL's Alg. 5,
ReduceExemplarSet), and the freed slots take the new classes' exemplars.

Selection is herding (iCaRL's Alg. 4) inside ``jit``, for all the classes
of a task at once (``vmap`` over classes, a ``scan`` over selections, masks
for unequal class sizes), or random.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cljax import _validate

EXEMPLAR_SELECTIONS = ("herding", "random")
BUDGETS = ("total", "per_class")


class ExemplarMemory(NamedTuple):
  """``K`` exemplar slots.

  Attributes:
    x: ``(K, ...)`` inputs.
    y: ``(K,)`` int32 labels.
    t: ``(K,)`` int32 task ids.
    rank: ``(K,)`` int32, the exemplar's position in its class's selection
      order (0 first).
    logits: ``(K, L)`` float32, the model's outputs when stored (``L = 1``,
      unused, if the method stores none: checkpoints cannot hold empty
      arrays).
    valid: ``(K,)`` bool, the slots in use.
  """
  x: jax.Array
  y: jax.Array
  t: jax.Array
  rank: jax.Array
  logits: jax.Array
  valid: jax.Array


def exemplar_memory(capacity: int, example_shape, num_logits: int = 0,
                    dtype=jnp.float32) -> ExemplarMemory:
  """An empty memory of ``capacity`` slots (``num_logits`` stored outputs
  per exemplar)."""
  capacity = _validate.as_int("capacity", capacity, 1)
  num_logits = _validate.as_int("num_logits", num_logits, 0)
  return ExemplarMemory(
      jnp.zeros((capacity, *example_shape), dtype),
      jnp.zeros((capacity,), jnp.int32), jnp.zeros((capacity,), jnp.int32),
      jnp.zeros((capacity,), jnp.int32),
      jnp.zeros((capacity, max(num_logits, 1)), jnp.float32),
      jnp.zeros((capacity,), bool))


def per_class_budget(capacity: int, classes_seen: int, budget: str = "total",
                     per_class: int = 0) -> int:
  """Exemplars kept per class: ``capacity // classes_seen`` (a fixed total,
  iCaRL) or ``per_class`` (a fixed number per class, which must fit)."""
  if budget not in BUDGETS:
    raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
  if classes_seen < 1:
    raise ValueError(f"classes_seen must be >= 1, got {classes_seen}")
  if budget == "total":
    return capacity // classes_seen
  if per_class * classes_seen > capacity:
    raise ValueError(f"per_class={per_class} exemplars for {classes_seen} "
                     f"classes exceed the memory's {capacity} slots")
  return per_class


def _normalise(f):
  return f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)


def _herd(features, m, valid, size: int):
  """Herding over the valid rows of ``features``: ``size`` (static) output
  slots, the first ``m`` (may be traced) of them chosen, the rest 0."""
  f = _normalise(features.astype(jnp.float32))
  w = valid.astype(jnp.float32)
  mu = (w @ f) / jnp.maximum(w.sum(), 1.0)
  # ||mu - (s + f_i)/k||^2 = const - (2/k) <mu, f_i> + (2 <s, f_i> +
  # ||f_i||^2) / k^2: one matrix-vector product a step.
  mu_f = f @ mu
  sq = jnp.sum(f * f, axis=1)

  def pick(j, carry):
    s, taken, order = carry
    k = (j + 1).astype(jnp.float32)
    d = -2.0 / k * mu_f + (2.0 * (f @ s) + sq) / (k * k)
    i = jnp.argmin(jnp.where(valid & ~taken, d, jnp.inf))
    return s + f[i], taken.at[i].set(True), order.at[j].set(i)

  init = (jnp.zeros(f.shape[1], jnp.float32), jnp.zeros(f.shape[0], bool),
          jnp.zeros((size,), jnp.int32))
  return jax.lax.fori_loop(0, jnp.minimum(m, size), pick, init)[2]


def herding_selection(features, m: int):
  """iCaRL's herding (Rebuffi et al. 2017, Alg. 4), the exemplars of one
  class in selection order.

  With ``phi`` the L2-normalised features and ``mu`` their mean, for
  ``k = 1..m``: ``p_k = argmin_x || mu - (phi(x) + sum_{j<k} phi(p_j)) / k ||``
  over the examples not yet chosen (so the ``m`` are distinct).

  Args:
    features: ``(N, D)`` (normalised here).
    m: exemplars to choose, ``1 <= m <= N``.
  Returns:
    ``(m,)`` int32 indices, in selection order: a prefix of them is the
    herding selection of fewer exemplars.
  """
  _validate.check_shape("features", features, (None, None))
  _validate.check_finite_tree("features", features)
  n = np.shape(features)[0]
  m = _validate.as_int("m", m, 1, n)
  return _herd(jnp.asarray(features), m, jnp.ones((n,), bool), m)


def herding_classes(features, counts, m, size: int):
  """Herding for several classes at once, inside ``jit`` (``vmap`` over
  classes, a loop over picks).

  Args:
    features: ``(G, N, D)``: class ``g``'s examples in rows ``0..counts[g]``
      (the rest padding).
    counts: ``(G,)`` examples per class.
    m: exemplars per class (may be traced: one compilation serves every
      budget).
    size: the output's static length, ``>= m``.
  Returns:
    ``(G, size)`` indices into each class's rows, in selection order; only
    the first ``min(m, counts[g])`` of row ``g`` are meaningful.
  """
  _validate.check_shape("features", features, (None, None, None))
  valid = jnp.arange(np.shape(features)[1])[None, :] < jnp.asarray(
      counts)[:, None]
  return jax.vmap(_herd, in_axes=(0, None, 0, None))(
      jnp.asarray(features), m, valid, int(size))


def shrink(memory: ExemplarMemory, m) -> ExemplarMemory:
  """Keeps the first ``m`` exemplars of every class (iCaRL's Alg. 5)."""
  return memory._replace(valid=memory.valid & (memory.rank < m))


def add_exemplars(memory: ExemplarMemory, x, y, t, keep,
                  logits=None) -> ExemplarMemory:
  """Stores the first ``keep[g]`` exemplars of each of ``G`` classes in free
  slots (lowest first), inside ``jit``.

  Args:
    x: ``(G, M, ...)`` each class's exemplars in selection order.
    y, t: ``(G,)`` class labels and task ids.
    keep: ``(G,)`` how many of each to store (``<= M``).
    logits: ``(G, M, L)`` outputs to store with them, if the memory has room
      for ``L`` per slot.
  Returns:
    The memory. The caller sizes ``keep`` to the free slots (the budget
    does): exemplars beyond the free slots would be dropped.
  """
  g, m_max = np.shape(x)[:2]
  _validate.check_shape("x", x, (g, m_max, *memory.x.shape[1:]))
  for name, a in (("y", y), ("t", t), ("keep", keep)):
    _validate.check_shape(name, a, (g,))
  _validate.check_integer("keep", keep, 0, m_max)
  if logits is not None:
    _validate.check_shape("logits", logits,
                          (g, m_max, memory.logits.shape[1]))
  capacity = memory.y.shape[0]
  rank = jnp.broadcast_to(jnp.arange(m_max), (g, m_max)).reshape(-1)
  want = (rank.reshape(g, m_max) < jnp.asarray(keep)[:, None]).reshape(-1)
  free = jnp.nonzero(~memory.valid, size=capacity, fill_value=capacity)[0]
  pos = jnp.cumsum(want) - 1
  dest = jnp.where(want, free[jnp.clip(pos, 0, capacity - 1)], capacity)
  dest = jnp.where(pos < capacity, dest, capacity)
  put = lambda a, v: a.at[dest].set(v.astype(a.dtype), mode="drop")
  flat = lambda a: jnp.reshape(a, (g * m_max, *np.shape(a)[2:]))
  labels = jnp.repeat(jnp.asarray(y, jnp.int32), m_max)
  tasks = jnp.repeat(jnp.asarray(t, jnp.int32), m_max)
  new = memory._replace(
      x=put(memory.x, flat(x)), y=put(memory.y, labels),
      t=put(memory.t, tasks), rank=put(memory.rank, rank),
      valid=memory.valid.at[dest].set(True, mode="drop"))
  if logits is not None:
    new = new._replace(logits=put(memory.logits, flat(logits)))
  return new


def sample(memory: ExemplarMemory, key, n: int):
  """``n`` slot indices drawn uniformly, with replacement, from the valid
  slots (any slots while the memory is empty; check ``memory.valid``)."""
  _validate.check_integer("n", n, 0)
  p = memory.valid.astype(jnp.float32)
  p = jnp.where(p.sum() > 0, p, 1.0)
  return jax.random.choice(key, memory.y.shape[0], (n,), p=p / p.sum())
