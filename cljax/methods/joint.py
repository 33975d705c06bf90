"""Joint training: the upper bound of a stream."""

from __future__ import annotations

from cljax.data._datasets import concat
from cljax.methods._base import Method


class Joint(Method):
  """Joint training on all tasks seen so far (the upper bound).

  Trains on the union of all tasks seen so far (cumulative training).

  At task ``i`` the model continues from its current weights on the training
  data of tasks ``0..i`` together, so after the last task it has seen the
  whole dataset i.i.d.; with the same epochs per task this is the usual upper
  bound of continual-learning tables.
  """

  name = "joint"

  def train_split(self, stream, index):
    return concat(task.train for task in stream.tasks[:index + 1])
