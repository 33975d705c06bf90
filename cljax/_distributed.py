"""Multi-process runs on ``jax.distributed``: start-up and who writes.

Every process runs the same program on the same data (the same stream,
batch order and keys); the train step's global batch is split over all
processes' devices (``cljax.train.data_parallel``), each process gathering
only its own rows, and everything else (evaluation, end-of-task work) is
computed redundantly on replicated arrays, so every process holds the same
state. Checkpoints are written collectively through orbax; the workdir's
lock, logs, plots and ``results.json`` belong to process 0 alone.
"""

from __future__ import annotations

import jax


def initialize(coordinator_address: str = "", num_processes: int = 0,
               process_id: int = -1) -> None:
  """``jax.distributed.initialize`` with JAX's auto-detection (TPU pods,
  SLURM, Open MPI, ...) for every argument left at its default ("", 0,
  -1). Call before anything else touches a device."""
  kwargs = {}
  if coordinator_address:
    kwargs["coordinator_address"] = coordinator_address
  if num_processes:
    kwargs["num_processes"] = int(num_processes)
  if process_id >= 0:
    kwargs["process_id"] = int(process_id)
  jax.distributed.initialize(**kwargs)


def is_primary() -> bool:
  """Whether this process writes the run's files (process 0; the only
  process of a single-process run)."""
  return jax.process_index() == 0
