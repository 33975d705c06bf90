"""Checkpoints at task boundaries: a crash loses at most the task in progress.

A checkpoint is the train state's leaves (``.npz``) plus the run's progress
(``.json``: finished tasks, accuracy-matrix rows, curves, timings and a
fingerprint of the run's settings). Both are written to temporary files and
renamed into place, so a kill mid-write leaves the previous checkpoint intact.
The state is restored into the structure of a freshly built one, so a
mismatch in shapes (a different model or stream) is an error, not a silent
reinterpretation.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

_STATE, _PROGRESS = "state.npz", "progress.json"


def save(directory: str, state: Any, progress: dict) -> None:
  os.makedirs(directory, exist_ok=True)
  leaves = jax.device_get(jax.tree.leaves(state))
  tmp = os.path.join(directory, _STATE + ".tmp.npz")
  np.savez(tmp, *leaves)
  os.replace(tmp, os.path.join(directory, _STATE))
  tmp = os.path.join(directory, _PROGRESS + ".tmp")
  with open(tmp, "w") as f:
    json.dump(progress, f)
  os.replace(tmp, os.path.join(directory, _PROGRESS))


def load(directory: str, template: Any, fingerprint: str):
  """Returns ``(state, progress)``, or ``None`` if there is no checkpoint.

  Raises:
    ValueError: the checkpoint belongs to a run with other settings.
  """
  path = os.path.join(directory, _PROGRESS)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    progress = json.load(f)
  if progress.get("fingerprint") != fingerprint:
    raise ValueError(
        f"{directory} holds a checkpoint of a run with other settings; use "
        "another workdir or delete it")
  with np.load(os.path.join(directory, _STATE)) as data:
    leaves = [data[f"arr_{i}"] for i in range(len(data.files))]
  ref = jax.tree.leaves(template)
  if len(leaves) != len(ref) or any(
      a.shape != np.shape(b) for a, b in zip(leaves, ref)):
    raise ValueError(f"checkpoint in {directory} does not match the model")
  state = jax.tree.unflatten(jax.tree.structure(template),
                             [jax.numpy.asarray(a) for a in leaves])
  return state, progress
