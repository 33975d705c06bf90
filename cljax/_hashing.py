"""Content digests of arrays (data splits, checkpoints, run identities)."""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np


def array_digest(arrays: Iterable) -> str:
  """SHA-256 over each array's shape, dtype and bytes, in order."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(f"{a.shape}{a.dtype.str}".encode())
    h.update(memoryview(a.reshape(-1)).cast("B"))
  return h.hexdigest()
