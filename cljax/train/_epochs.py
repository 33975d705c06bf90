"""Epoch engines: run the train step over rows of batch indices.

The task loop draws each epoch's batches as rows of example indices (the
same permutation either way) and hands the engine a segment of rows at a
time (segments end where an evaluation, a log line, a checkpoint or the
epoch's end is due, so those stay live). Two engines:

* ``HostEngine`` gathers each batch on the host and sends it to the device,
  the next one while the current step runs: for data that does not fit on
  the device, and for data-parallel steps;
* ``ScanEngine`` keeps the task's training data on the device (padded to one
  size per stream, so nothing recompiles between tasks) and runs each
  segment as one jitted ``lax.scan`` of the same step over the rows, with no
  host round trip per step. A scan of the step gives the same parameters as
  the host loop (tested bit for bit on CPU).

A sweep whose members have data of their own (``run_sweep`` with a stream
and seed per member) hands either engine a list of splits, one per member,
and rows ``(steps, K, B)``; each step's batch is every member's, stacked on
a leading member axis.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cljax.data._datasets import Split
from cljax.data._streamed import augmented_or_plain
from cljax.models._conv import fast_form, reverse_mode_convs


def _take(split: Split | list, rows: np.ndarray, part: slice = slice(None)
          ) -> dict:
  """Rows ``part`` of the training batch ``rows``: a streamed split's
  images decoded with their training augmentation (drawn for the whole
  batch), an array's gathered; with a list of members' splits (``rows``
  ``(K, B)``), each member's batch, stacked."""
  if isinstance(split, list):
    parts = [_take(sp, r, part) for sp, r in zip(split, rows)]
    return {k: np.stack([b[k] for b in parts]) for k in parts[0]}
  local = rows[part]
  x = (split.x[local] if isinstance(split.x, np.ndarray) else
       augmented_or_plain(split.x[rows], part))
  return {"x": x, "y": split.y[local], "t": split.t[local]}


class HostEngine:
  """Batches gathered on the host; ``prefetch`` sends the next one to the
  device while the current step runs. A data-parallel step
  (``data_parallel``) places its own inputs, and this process gathers only
  the rows of each batch that its devices hold (its ``process_share``)."""

  def __init__(self, step, prefetch: bool = True):
    self.step, self.prefetch = step, prefetch
    self.part = getattr(step, "process_share", lambda n: slice(None))

  def run(self, state, split: Split, rows: np.ndarray, key):
    """``(state, loss terms of the last step)`` after one step per row."""
    put = jax.device_put if self.prefetch else (lambda b: b)
    take = lambda r: put(_take(split, rows[r], self.part(len(rows[r]))))
    terms = None
    nxt = take(0)
    for r in range(len(rows)):
      batch = nxt
      state, terms = self.step(state, batch, key)
      if r + 1 < len(rows):  # dispatched asynchronously: overlaps the step
        nxt = take(r + 1)
    return state, terms


def _gather(data: dict, idx) -> dict:
  return {k: v[idx] for k, v in data.items()}


def _scan(step, terms_shape, gather, state, data, rows, active, key):
  """``step`` over ``rows`` (``(L, B)`` indices, or ``(L, K, B)`` into
  members' data), skipping the rows that are not ``active`` (padding: every
  segment has the same length ``L``, so one compilation serves all)."""
  empty = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), terms_shape)

  def body(carry, inp):
    st, last = carry
    idx, on = inp
    batch = gather(data, idx)
    return jax.lax.cond(on, lambda: step(st, batch, key),
                        lambda: (st, last)), None

  (state, terms), _ = jax.lax.scan(body, (state, empty), (rows, active))
  return state, terms


class ScanEngine:
  """The training data on the device, each segment one jitted ``lax.scan``
  of ``step`` (the unjitted per-shard step) over its rows.

  Args:
    step: ``(state, batch, rng) -> (state, terms)``, not jitted.
    terms_shape: the loss terms' shapes (``jax.eval_shape``).
    size: examples every task's data is padded to on the device (the
      largest training split of the stream), so one compilation serves
      every task.
    chunk: steps per scan; shorter segments are padded with skipped steps.
    members: the split is a list of members' splits, held stacked.
  """

  def __init__(self, step, terms_shape, size: int, chunk: int,
               members: bool = False):
    self.size, self.chunk = size, chunk
    gather = jax.vmap(_gather) if members else _gather
    self._run = jax.jit(functools.partial(_scan, step, terms_shape, gather),
                        donate_argnums=0)
    self._split, self._data = None, None

  def _device(self, split: Split | list) -> dict:
    if split is not self._split:  # one transfer per task
      pad = lambda a: np.concatenate([a, np.zeros(
          (self.size - len(a), *a.shape[1:]), a.dtype)])
      if isinstance(split, list):
        self._data = {k: jax.device_put(np.stack([
            pad(getattr(sp, k)) for sp in split])) for k in "xyt"}
      else:
        self._data = {k: jax.device_put(pad(getattr(split, k)))
                      for k in "xyt"}
      self._split = split
    return self._data

  def run(self, state, split: Split | list, rows: np.ndarray, key):
    """``(state, loss terms of the last step)`` after one step per row
    (at most ``chunk`` rows)."""
    n = len(rows)
    padded = np.zeros((self.chunk, *rows.shape[1:]), np.int32)
    padded[:n] = rows
    return self._run(state, self._device(split), jnp.asarray(padded),
                     jnp.arange(self.chunk) < n, key)


def fits(splits, budget_mb: float) -> bool:
  """Whether the largest of ``splits``' inputs fits ``budget_mb`` on the
  device (with its labels and task ids); streamed splits never do."""
  if not all(s.in_memory for s in splits):
    return False
  largest = max(s.x.nbytes + s.y.nbytes + s.t.nbytes for s in splits)
  return largest <= budget_mb * 2 ** 20


def loops_are_slow(model, example) -> bool:
  """Whether, on a CPU backend, ``model``'s gradient as the train step takes
  it (inside ``reverse_mode_convs``) holds a convolution outside XLA:CPU's
  fast form (``cljax.models._conv``). XLA:CPU rewrites such convolutions
  into that form only at a program's top level, so inside a ``lax.scan``
  they run as a naive loop nest (the small CNN's train step at batch 64 on
  2 cores took 1.81 s a step in a scan, 0.088 s unrolled, before its
  convolutions took ``canonical_conv``'s VJP); ``loop="auto"`` feeds such
  models from the host there. cljax's own networks are not slow."""
  if jax.default_backend() != "cpu":
    return False
  loss = lambda p, x: jnp.sum(model.apply(p, model.batch_stats, x,
                                          train=True)[0][0])
  with reverse_mode_convs():
    jaxpr = jax.make_jaxpr(jax.grad(loss))(model.params, example)
  return any(eqn.primitive.name == "conv_general_dilated"
             and not fast_form(eqn.params["dimension_numbers"])
             for eqn in _equations(jaxpr.jaxpr))


def _equations(jaxpr):
  """Every equation of ``jaxpr`` and of the jaxprs nested in it."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          yield from _equations(sub)

