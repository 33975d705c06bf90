"""Metric logs in the formats the ecosystem reads: TensorBoard event files
(through tensorboardX) and CSV.

A writer takes scalars at a step, like ``clu.metric_writers``'
``write_scalars(step, scalars)``. Every scalar of a run is logged against
the run's global training step (loss terms, accuracy curves, each task's
accuracy-matrix row), so a resumed run can drop what its killed attempt
logged after the checkpoint it resumes from (``truncate``).
"""

from __future__ import annotations

import csv
import os
import uuid
from typing import Mapping, Sequence


class MetricWriter:
  """Writes scalars; the base class writes nothing."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    del step, scalars

  def truncate(self, step: int) -> None:
    """Forgets everything logged after ``step`` (a run resuming there)."""
    del step

  def close(self) -> None:
    pass


class TensorBoardWriter(MetricWriter):
  """TensorBoard event files in ``logdir`` (``tensorboard --logdir``)."""

  def __init__(self, logdir: str):
    from tensorboardX import SummaryWriter
    self._cls, self.logdir = SummaryWriter, logdir
    self._writer, self._purge = None, None

  def write_scalars(self, step, scalars):
    if self._writer is None:  # each file a name of its own: tensorboardX
      self._writer = self._cls(  # names them by the second, two would clash
          self.logdir, purge_step=self._purge,
          filename_suffix=f".{uuid.uuid4().hex[:12]}")
    for tag, value in scalars.items():
      self._writer.add_scalar(tag, float(value), int(step))

  def truncate(self, step):
    # TensorBoard's own mechanism: a new file with purge_step hides the
    # events at steps >= purge_step that earlier files hold.
    self.close()
    self._purge = int(step) + 1

  def close(self):
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def replace_atomically(path: str, write, newline=None) -> None:
  """Writes ``path`` through ``write(file)`` into ``path.tmp`` and renames
  it into place: a reader sees the old file or the new one, never half of
  one; on failure the old file stays and no ``.tmp`` is left."""
  tmp = path + ".tmp"
  try:
    with open(tmp, "w", newline=newline) as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


class CSVWriter(MetricWriter):
  """One ``step,tag,value`` row per scalar in ``path``."""

  FIELDS = ("step", "tag", "value")

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if not os.path.exists(path):
      with open(path, "w", newline="") as f:
        csv.writer(f).writerow(self.FIELDS)

  def write_scalars(self, step, scalars):
    with open(self.path, "a", newline="") as f:
      w = csv.writer(f)
      for tag, value in scalars.items():
        w.writerow((int(step), tag, repr(float(value))))

  def truncate(self, step):
    with open(self.path, newline="") as f:
      rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]

    def write(f):
      w = csv.DictWriter(f, self.FIELDS)
      w.writeheader()
      w.writerows(rows)

    replace_atomically(self.path, write, newline="")


class MultiWriter(MetricWriter):
  """Writes to each of ``writers``."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self.writers = list(writers)

  def write_scalars(self, step, scalars):
    for w in self.writers:
      w.write_scalars(step, scalars)

  def truncate(self, step):
    for w in self.writers:
      w.truncate(step)

  def close(self):
    for w in self.writers:
      w.close()
