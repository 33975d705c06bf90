"""Checkpoints: orbax steps, atomic, verified on load, with fallback.

Each save is one orbax ``CheckpointManager`` step (written to a temporary
directory and renamed into place, so a kill mid-write leaves the previous
steps intact): the pytrees (the train state, and whatever else the runner
needs to resume) plus a JSON record of the run's progress (finished tasks,
accuracy rows, curves, timings, the position inside a task, and the run's
identity). State and record live in the same step, so they cannot disagree.

The record carries SHA-256 digests of itself and of the state's bytes; a
step whose record or state does not verify (truncated, bit-flipped, torn) is
set aside as ``corrupt-<step>`` with a warning naming it, and the previous
step is used. The pytrees are restored into the structure of freshly built
templates, so a mismatch in structure or shapes is an error, not a silent
reinterpretation.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import logging
import os
import time
import warnings
from typing import Any, Callable

import jax

from cljax._distributed import is_primary
from cljax._hashing import array_digest
from cljax._quiet import drop_absl_messages

RECORD = "record"


def tree_digest(tree) -> str:
  """SHA-256 over every leaf's shape, dtype and bytes (host copies)."""
  return array_digest(jax.device_get(jax.tree.leaves(tree)))


def _json_digest(record: dict) -> str:
  return hashlib.sha256(json.dumps(record, sort_keys=True).encode()
                        ).hexdigest()


# A default that marks a setting (and everything under it) as not part of
# the identity, even in a checkpoint written when it was (a string: the
# defaults pass through ``jsonable``).
IGNORED = "<not part of the identity>"


def identity_diff(stored: dict, current: dict,
                  defaults: dict | None = None) -> list[str]:
  """``"key: old -> new"`` for each key whose value differs between two
  flat identity dicts. A key that only one side has (a setting added or
  removed since) counts as equal when its value there is its default in
  ``defaults``: a new setting left at its default changes nothing. Keys
  whose default is ``IGNORED`` (or under one) are skipped (a setting that
  has since stopped being part of the identity)."""
  keys = sorted(set(stored) | set(current))
  absent, defaults = "<absent>", defaults or {}
  ignored = tuple(k for k, v in defaults.items() if v == IGNORED)
  out = []
  for k in keys:
    if any(k == i or k.startswith(i + ".") for i in ignored):
      continue
    old, new = stored.get(k, absent), current.get(k, absent)
    if old == new or (absent in (old, new) and k in defaults and
                      (new if old == absent else old) == defaults[k]):
      continue
    out.append(f"{k}: {json.dumps(old)} -> {json.dumps(new)}")
  return out


class Checkpoints:
  """The checkpoints of one run in ``directory`` (created if needed).

  Args:
    directory: where the orbax steps live.
    max_to_keep: steps kept (>= 2 keeps a fallback for a corrupt latest).
  """

  def __init__(self, directory: str, max_to_keep: int = 2):
    import orbax.checkpoint as ocp
    self._ocp = ocp
    self.directory = os.path.abspath(directory)
    if os.path.exists(os.path.join(self.directory, "progress.json")):
      raise ValueError(
          f"{directory} holds a checkpoint in the format of cljax < 0.2 "
          "(state.npz + progress.json), which cannot be verified; delete it "
          "to start afresh")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax's info lines
    # A step whose _CHECKPOINT_METADATA is missing (killed after the step
    # was renamed into place, before that file was written) is verified by
    # its own digests: orbax's warning about the file says nothing here.
    drop_absl_messages("Metadata file does not exist")
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=False))

  def save(self, items: dict[str, Any], record: dict) -> int:
    """Saves ``items`` (name -> pytree) and ``record`` (JSON) as one new
    step; returns its number."""
    steps = self._manager.all_steps()
    step = max(steps) + 1 if steps else 0
    if jax.process_count() > 1:
      # Every process holds the same (replicated) state, some of it in
      # process-local arrays, which orbax cannot save collectively: as host
      # arrays, every process takes part and process 0 writes them.
      items = jax.device_get(items)
    record = {**record, "state_sha256": tree_digest(items)}
    args = {k: self._ocp.args.StandardSave(v) for k, v in items.items()}
    args[RECORD] = self._ocp.args.JsonSave({"record": record,
                                            "sha256": _json_digest(record)})
    self._manager.save(step, args=self._ocp.args.Composite(**args))
    self._manager.wait_until_finished()
    return step

  def _record(self, step: int) -> dict:
    out = self._manager.restore(step, args=self._ocp.args.Composite(
        **{RECORD: self._ocp.args.JsonRestore()}))[RECORD]
    if not isinstance(out, dict) or _json_digest(out.get("record")) != out.get(
        "sha256"):
      raise ValueError("its progress record does not match its checksum")
    return out["record"]

  def _set_aside(self, step: int, error: Exception) -> None:
    """Moves a corrupt step aside (kept for inspection) and warns; an error
    that is not corruption (no permission, a failing disk) is raised."""
    if isinstance(error, OSError) and (
        isinstance(error, PermissionError) or
        error.errno in (errno.EIO, errno.ENOSPC, errno.EROFS)):
      raise error
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.directory, f"corrupt-{step}-{int(time.time())}")
    why = (str(error).strip().splitlines() or [""])[0]
    why = why.split(" See full TensorStore details")[0][:200]  # (a repr)
    try:
      if os.path.exists(src) and is_primary():  # every process sees it
        os.replace(src, dst)
    except OSError as e:
      raise ValueError(f"checkpoint step {step} in {self.directory} is "
                       f"corrupt ({type(error).__name__}: {why}) and cannot "
                       f"be moved aside ({e.strerror or e})") from None
    warnings.warn(f"checkpoint step {step} in {self.directory} is corrupt "
                  f"({type(error).__name__}: {why}); moved to {dst}, "
                  "falling back to the previous step", stacklevel=3)
    if jax.process_count() > 1:  # every process reloads after the move
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"cljax set aside {step}")
    self._manager.reload()

  def latest_record(self) -> dict | None:
    """The newest step's record that verifies (corrupt steps are set aside
    with a warning), or ``None``."""
    for step in reversed(self._manager.all_steps()):
      try:
        return self._record(step)
      except Exception as e:  # noqa: BLE001 - any failure to read is corruption
        self._set_aside(step, e)
    return None

  def restore(self, templates: Callable[[dict], dict[str, Any]]):
    """The newest step that verifies, as ``(items, record)``, or ``None``.

    Args:
      templates: ``record -> {name: pytree}``, the structures to restore
        into (a record may say which items its step holds).
    """
    for step in reversed(self._manager.all_steps()):
      try:
        record = self._record(step)
        abstract = {k: jax.tree.map(self._ocp.utils.to_shape_dtype_struct, v)
                    for k, v in templates(record).items()}
        restored = self._manager.restore(step, args=self._ocp.args.Composite(
            **{k: self._ocp.args.StandardRestore(v)
               for k, v in abstract.items()}))
        items = {k: jax.tree.unflatten(jax.tree.structure(abstract[k]),
                                       jax.tree.leaves(restored[k]))
                 for k in abstract}
        if tree_digest(items) != record.get("state_sha256"):
          raise ValueError("its arrays do not match their checksum")
        return items, record
      except Exception as e:  # noqa: BLE001 - any failure to read is corruption
        _quiet_failed_reads()
        self._set_aside(step, e)
    return None

  def close(self) -> None:
    self._manager.close()


def _quiet_failed_reads() -> None:
  """A failed orbax restore leaves the other reads' futures failed and
  unretrieved; asyncio would print each, with its whole tensorstore spec,
  when they are collected. The warning about the corrupt step says it once."""
  log = logging.getLogger("asyncio")
  level = log.level
  log.setLevel(logging.CRITICAL)
  try:
    gc.collect()
  finally:
    log.setLevel(level)


def check_identity(directory: str, stored: dict, current: dict,
                   defaults: dict | None = None,
                   held: str = "a checkpoint") -> None:
  """Raises ``ValueError`` listing each differing key with its old and new
  value when the identity of what ``directory`` holds (a ``held``: a
  checkpoint, or a workdir's results) is not the run's (see
  ``identity_diff``)."""
  diff = identity_diff(stored, current, defaults)
  if diff:
    shown = "\n  ".join(diff[:25]) + (
        f"\n  ... and {len(diff) - 25} more" if len(diff) > 25 else "")
    raise ValueError(
        f"{directory} holds {held} of a run with other settings "
        f"({held.split()[-1]} -> now):\n  {shown}\nUse another workdir, or "
        f"delete {directory} to start afresh.")
