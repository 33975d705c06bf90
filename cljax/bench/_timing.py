"""Timing shared by ``cljax bench`` and the scripts in ``benchmarks/``.

Every runner is a callable ``run(n)`` that does ``n`` repetitions and returns
only when they are finished (``block_until_ready`` for JAX). Blocks of all
runners are interleaved, in an order that rotates from block to block, so
that the machine's drift hits them alike; the
first ``warmup`` blocks (compilation, caches) are dropped and the median over
the remaining ``blocks`` is reported, with ratios taken in the same run.
"""

from __future__ import annotations

import os
import platform
import time

import jax
import numpy as np

from cljax import train
from cljax.methods import TaskContext


def interleaved_medians(runners: dict, *, blocks: int, reps: int,
                        warmup: int = 3) -> dict:
  """``{name: {"median_ms", "p10_ms", "p90_ms"}}`` per repetition."""
  times = {k: [] for k in runners}
  names = list(runners)
  for b in range(warmup + blocks):
    # The order rotates, so what one runner leaves behind (caches, another
    # library's spinning threads) does not always hit the same next one.
    for name in names[b % len(names):] + names[:b % len(names)]:
      run = runners[name]
      t0 = time.perf_counter()
      run(reps)
      if b >= warmup:
        times[name].append((time.perf_counter() - t0) / reps)
  return {k: {"median_ms": 1e3 * float(np.median(v)),
              "p10_ms": 1e3 * float(np.percentile(v, 10)),
              "p90_ms": 1e3 * float(np.percentile(v, 90))}
          for k, v in times.items()}


def repeat(fn, *args):
  """A runner calling the jitted ``fn(*args)`` ``n`` times, then blocking."""
  def run(n):
    out = None
    for _ in range(n):
      out = fn(*args)
    jax.block_until_ready(out)
  return run


def machine() -> dict:
  """The backend, device and versions a timing was taken on."""
  return {"backend": jax.default_backend(), "device": str(jax.devices()[0]),
          "device_kind": jax.devices()[0].device_kind,
          "device_count": jax.device_count(), "cpu_count": os.cpu_count(),
          "jax": jax.__version__, "python": platform.python_version()}


def train_steps(step, state, batch):
  """A runner taking ``n`` steps ``state, _ = step(state, batch, key)`` from
  where the previous call stopped (the step may donate its state)."""
  box, key = [state], jax.random.key(0)

  def run(n):
    s = box[0]
    for _ in range(n):
      s, _ = step(s, batch, key)
    jax.block_until_ready(s)
    box[0] = s

  return run


def method_state(method, model, stream, base, tasks_done: int):
  """``(step_fn, state)``: ``method``'s un-jitted train step (as
  ``run_stream`` builds it) and a ``TrainState`` as it is after the method's
  end-of-task hook ran for the first ``tasks_done`` tasks (parameters left at
  their initial values)."""
  opt = method.optimizer(base, model.params)
  step = train.make_train_step(
      method.loss_fn(model), opt,
      update_method_state=method.update_method_state,
      extra_args=method.extra_args, batch_fn=method.batch_fn)
  ms = method.init_state(model, stream)
  for k in range(tasks_done):
    ms = method.on_task_end(TaskContext(k, stream, model, model.params,
                                        model.batch_stats, ms,
                                        stream.logit_masks(k)))
  state = train.init_train_state(model.params, model.batch_stats, opt,
                                 jax.tree.map(np.array, ms),
                                 stream.logit_masks(tasks_done))
  return step, state


def method_steps(method, model, stream, base, tasks_done: int, batch):
  """``train_steps`` for ``method``'s jitted step in the state of
  ``method_state``."""
  step, state = method_state(method, model, stream, base, tasks_done)
  return train_steps(jax.jit(step, donate_argnums=0), state, batch)
