"""An exclusive lock on a run directory: one run writes into it at a time.

The lock is ``fcntl.flock`` on ``<directory>/cljax.lock``, a file that also
records its holder (pid, host, start time) so a refusal can name it. The
kernel releases a ``flock`` when its process dies, so a lock file left by a
killed run is stale by construction: the next run takes it over, with a
warning naming the previous holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import warnings

import jax
import numpy as np
from jax.experimental import multihost_utils

from cljax._distributed import is_primary

LOCK_FILE = "cljax.lock"


class LockedError(RuntimeError):
  """Another live process holds the directory's lock."""


def _holder(record: dict) -> str:
  since = time.strftime("%Y-%m-%d %H:%M:%S",
                        time.localtime(record.get("since", 0)))
  return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')} "
          f"(since {since})")


def _read(fd) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  raw = os.read(fd, 4096)
  try:
    return json.loads(raw) if raw.strip() else {}
  except ValueError:
    return {"pid": "?", "host": "?"}


@contextlib.contextmanager
def directory_lock(directory: str):
  """Holds the exclusive lock of ``directory`` (created if needed).

  In a multi-process run (``jax.distributed``) the processes are one run:
  process 0 takes the lock and every process learns whether it could, so
  all stop together when another run holds it.

  Raises:
    LockedError: another process holds it; the message names the holder.
    ValueError: the directory cannot be written.
  """
  if jax.process_count() == 1:
    with _lock(directory):
      yield
    return
  error = None
  with contextlib.ExitStack() as stack:
    if is_primary():
      try:
        stack.enter_context(_lock(directory))
      except (LockedError, ValueError) as e:
        error = e
    ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if not int(ok):
      raise error or LockedError(
          f"{directory}: process 0 could not take the run's lock (its "
          "error says why)")
    yield


@contextlib.contextmanager
def _lock(directory: str):
  """``directory_lock`` for one process."""
  path = os.path.join(directory, LOCK_FILE)
  while True:
    try:
      os.makedirs(directory, exist_ok=True)
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise ValueError(f"cannot take the lock of {directory}: "
                       f"{e.strerror or e}") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      record = _read(fd)
      os.close(fd)
      raise LockedError(
          f"{directory} is in use by another run: {_holder(record)}. Wait "
          "for it to finish, or use another workdir.") from None
    # The file may have been removed by its previous holder between our
    # open and flock; then we hold a lock nobody else can see: retry.
    try:
      same = os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  try:
    previous = _read(fd)
    if previous:
      warnings.warn(f"{directory}: taking over a stale lock of "
                    f"{_holder(previous)}, which is no longer running",
                    stacklevel=3)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.time()}).encode())
    os.fsync(fd)
    yield
  finally:
    os.unlink(path)  # before unlocking, so no one locks a removed file
    os.close(fd)
