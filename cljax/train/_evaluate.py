"""Evaluation: the accuracy on every task's split, by the network's argmax
or by a method's own classifier (``Method.predictors``).

``DeviceEvaluator`` keeps all tasks' splits of one kind (test or
validation) on the device, padded to whole batches, and computes every
task's accuracy in one jitted call with one transfer back; ``evaluate`` is
the per-split path (a jitted step per batch) for data that does not fit
and for methods that predict each task with its own parameters.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cljax.data._batching import eval_batches
from cljax.models._heads import example_masks, mask_logits


def predictions(apply: Callable, predict: Callable | None = None):
  """``(params, batch_stats, masks, batch, aux) -> (B,)`` predictions: the
  argmax over the logits active for each example's task, or ``predict(
  params, batch_stats, aux, x, active (B, C))``."""

  def fn(params, batch_stats, masks, batch, aux):
    active = example_masks(masks, batch["t"])
    if predict is not None:
      return predict(params, batch_stats, aux, batch["x"], active)
    (logits, _), _ = apply(params, batch_stats, batch["x"], train=False)
    return jnp.argmax(mask_logits(logits, active), -1)

  return fn


def make_eval_step(apply: Callable, predict: Callable | None = None,
                   members: bool = False) -> Callable:
  """Jitted ``(params, batch_stats, masks, batch, aux=()) -> (correct,
  count)``.

  ``batch`` has ``x``, ``y``, ``t`` and weights ``w`` (0 for padding); the
  prediction is as ``predictions``' (e.g. iCaRL's nearest mean of
  exemplars, ``aux`` its class means). With ``members``, ``params``,
  ``batch_stats``, ``masks`` and ``aux`` are a sweep's, stacked on a
  leading member axis, and ``correct`` and ``count`` have that axis.
  """
  pred = predictions(apply, predict)

  def eval_step(params, batch_stats, masks, batch, aux=()):
    hit = (pred(params, batch_stats, masks, batch, aux) ==
           batch["y"]).astype(jnp.float32)
    return jnp.sum(hit * batch["w"]), jnp.sum(batch["w"])

  if members:
    eval_step = jax.vmap(eval_step, in_axes=(0, 0, 0, None, 0))
  return jax.jit(eval_step)


def evaluate(eval_step, params, batch_stats, masks, split, batch_size,
             aux=()):
  """Accuracy on a whole split, in fixed-size (padded) batches: a float,
  or a list of each member's for a sweep's ``eval_step``."""
  parts = jax.device_get([eval_step(params, batch_stats, masks, b, aux)
                          for b in eval_batches(split, batch_size)])
  correct = total = 0.0
  for c, n in parts:
    correct = correct + np.asarray(c, np.float64)
    total = total + np.asarray(n, np.float64)
  return (correct / np.maximum(total, 1.0)).tolist()


class DeviceEvaluator:
  """Every task's split (``splits[j]`` for task ``j``) on the device, one
  jitted computation for all their accuracies.

  The splits are concatenated and padded to whole batches of
  ``batch_size`` (padding has weight 0); a ``lax.map`` over the batches
  sums each task's hits (``segment_sum`` by task), and the host receives
  one ``(T,)`` array. The predictions are ``predictions(apply, predict)``'s
  in batches of the same size as ``evaluate``'s, so the accuracies are the
  same. With ``members``, the model, masks and ``aux`` are a sweep's,
  stacked on a leading member axis, and each member gets its accuracies.
  """

  def __init__(self, splits, batch_size: int, apply: Callable,
               predict: Callable | None = None, members: bool = False):
    t = len(splits)
    n = sum(len(s) for s in splits)
    pad = -(-n // batch_size) * batch_size - n
    cat = lambda f, fill: np.concatenate(
        [getattr(s, f) for s in splits] +
        [np.repeat(getattr(splits[0], f)[:1], pad, axis=0)])
    task = np.concatenate([np.full(len(s), j, np.int32)
                           for j, s in enumerate(splits)] +
                          [np.zeros(pad, np.int32)])
    w = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    shape = lambda a: a.reshape(-1, batch_size, *a.shape[1:])
    self._data = jax.device_put({
        "x": shape(cat("x", 0)), "y": shape(cat("y", 0)),
        "t": shape(cat("t", 0)), "w": shape(w), "task": shape(task)})
    self._counts = np.asarray([len(s) for s in splits], np.float64)
    pred = predictions(apply, predict)

    def correct(params, batch_stats, masks, data, aux):
      def one(batch):
        hit = (pred(params, batch_stats, masks, batch, aux) ==
               batch["y"]).astype(jnp.float32) * batch["w"]
        return jax.ops.segment_sum(hit, batch["task"], num_segments=t)
      return jnp.sum(jax.lax.map(one, data), axis=0)

    if members:
      correct = jax.vmap(correct, in_axes=(0, 0, 0, None, 0))
    self._correct = jax.jit(correct)

  def __call__(self, params, batch_stats, masks, aux=()) -> list:
    """Every task's accuracy (a list of floats; a list of those per member
    for a sweep)."""
    got = np.asarray(jax.device_get(self._correct(
        params, batch_stats, masks, self._data, aux)), np.float64)
    return (got / np.maximum(self._counts, 1.0)).tolist()

  @staticmethod
  def nbytes(splits) -> int:
    return sum(s.x.nbytes + s.y.nbytes + s.t.nbytes for s in splits)
