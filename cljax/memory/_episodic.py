"""Fixed-capacity episodic memory: ``m`` examples per task, as pytrees.

Shapes are fixed by the stream's task count ``T`` when the memory is made,
so storing a task's examples never changes a shape (nothing recompiles).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from cljax.data._streamed import materialise
from cljax import _validate
from cljax.data._datasets import Split

SELECTIONS = ("last", "random")


class EpisodicMemory(NamedTuple):
  """``x``: ``(T, m, ...)`` inputs; ``y``, ``t``: ``(T, m)`` labels and task
  ids; ``filled``: ``(T,)`` bool, the tasks stored so far."""
  x: jnp.ndarray
  y: jnp.ndarray
  t: jnp.ndarray
  filled: jnp.ndarray


def episodic_memory(num_tasks: int, per_task: int, example_shape,
                    dtype=jnp.float32) -> EpisodicMemory:
  """An empty memory for ``num_tasks`` tasks of ``per_task`` examples."""
  num_tasks = _validate.as_int("num_tasks", num_tasks, 1)
  per_task = _validate.as_int("per_task", per_task, 1)
  return EpisodicMemory(
      jnp.zeros((num_tasks, per_task, *example_shape), dtype),
      jnp.zeros((num_tasks, per_task), jnp.int32),
      jnp.zeros((num_tasks, per_task), jnp.int32),
      jnp.zeros((num_tasks,), bool))


def select_examples(split: Split, m: int, selection: str = "last",
                    seed: int = 0) -> Split:
  """``m`` examples of a task: the last ``m`` seen in the task's data order
  (GEM's reference code keeps the last ``m`` of its single pass) or ``m``
  chosen uniformly at random.

  Raises:
    ValueError: the task has fewer than ``m`` examples (a memory row is full
      by construction; repeating examples would silently weight some
      twice).
  """
  if selection not in SELECTIONS:
    raise ValueError(f"selection must be one of {SELECTIONS}, got "
                     f"{selection!r}")
  n = len(split)
  if n < m:
    raise ValueError(f"memory_size={m} exceeds the task's {n} examples; use "
                     f"a memory_size <= {n}")
  if selection == "last":
    idx = np.arange(n - m, n)
  else:
    idx = np.sort(np.random.default_rng(seed).permutation(n)[:m])
  return split.take(idx)


def store_task(memory: EpisodicMemory, k: int, split: Split, *,
               selection: str = "last", seed: int = 0) -> EpisodicMemory:
  """``memory`` with task ``k``'s row set from ``split``.

  Raises:
    ValueError: ``k`` outside ``[0, T)``, or examples of another shape.
  """
  t_count, per_task = memory.y.shape
  k = _validate.check_index("k", k, t_count)
  _validate.check_shape("split.x", split.x, (None, *memory.x.shape[2:]))
  s = select_examples(split, per_task, selection, seed)
  return EpisodicMemory(memory.x.at[k].set(materialise(s.x)),
                        memory.y.at[k].set(s.y),
                        memory.t.at[k].set(s.t), memory.filled.at[k].set(True))
