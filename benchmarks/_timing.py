"""Shared timing for the benchmarks: interleaved blocks, medians, JSON out.

Every runner is a callable ``run(n)`` that does ``n`` repetitions and returns
only when they are finished (``block_until_ready`` for JAX). Blocks of all
runners are interleaved so that the machine's drift hits them alike; the
first ``warmup`` blocks (compilation, caches) are dropped and the median over
the remaining ``blocks`` is reported, with ratios taken in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import time

import jax
import numpy as np

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def interleaved_medians(runners: dict, *, blocks: int, reps: int,
                        warmup: int = 3) -> dict:
  """``{name: {"median_ms", "p10_ms", "p90_ms"}}`` per repetition."""
  times = {k: [] for k in runners}
  for b in range(warmup + blocks):
    for name, run in runners.items():
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
  return {"device": str(jax.devices()[0]),
          "device_kind": jax.devices()[0].device_kind,
          "cpu_count": os.cpu_count(), "jax": jax.__version__,
          "python": platform.python_version()}


def write(name: str, payload: dict, out: str | None = None) -> str:
  path = out or os.path.join(RESULTS, f"{name}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump({**payload, "machine": machine()}, f, indent=1)
  print(f"written: {path}")
  return path
