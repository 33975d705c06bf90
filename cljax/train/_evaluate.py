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


def hits(apply: Callable, predict: Callable | None = None, top_k: int = 1):
  """``(params, batch_stats, masks, batch, aux) -> (B,)`` float32, 1 where
  the prediction is right: the label is the argmax over the logits active
  for the example's task (``top_k`` > 1: among the ``top_k`` largest of
  them, ties broken by ``jax.lax.top_k``; a label outside the active
  classes is never a hit), or ``predict(params,
  batch_stats, aux, x, active (B, C))`` returns it."""
  if top_k < 1 or (predict is not None and top_k != 1):
    raise ValueError(f"top_k must be >= 1, and 1 with a method's own "
                     f"classifier; got {top_k}")

  def fn(params, batch_stats, masks, batch, aux):
    active = example_masks(masks, batch["t"])
    if predict is not None:
      pred = predict(params, batch_stats, aux, batch["x"], active)
      return (pred == batch["y"]).astype(jnp.float32)
    (logits, _), _ = apply(params, batch_stats, batch["x"], train=False)
    logits = mask_logits(logits, active)
    if top_k == 1:
      return (jnp.argmax(logits, -1) == batch["y"]).astype(jnp.float32)
    best = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[1]
    # A masked class in the top k (fewer than k active) is never a hit.
    hit = (best == batch["y"][:, None]) & jnp.take_along_axis(active, best, -1)
    return jnp.any(hit, -1).astype(jnp.float32)

  return fn


def make_eval_step(apply: Callable, predict: Callable | None = None,
                   members: bool = False, top_k: int = 1,
                   member_data: bool = False) -> Callable:
  """Jitted ``(params, batch_stats, masks, batch, aux=()) -> (correct,
  count)``.

  ``batch`` has ``x``, ``y``, ``t`` and weights ``w`` (0 for padding); the
  prediction is as ``hits``' (e.g. iCaRL's nearest mean of exemplars,
  ``aux`` its class means; or top-``top_k``). With ``members``, ``params``,
  ``batch_stats``, ``masks`` and ``aux`` are a sweep's, stacked on a
  leading member axis, and ``correct`` and ``count`` have that axis; with
  ``member_data`` too, so does ``batch`` (each member's own examples).
  """
  hit = hits(apply, predict, top_k)

  def eval_step(params, batch_stats, masks, batch, aux=()):
    return (jnp.sum(hit(params, batch_stats, masks, batch, aux) * batch["w"]),
            jnp.sum(batch["w"]))

  if members:
    eval_step = jax.vmap(eval_step, in_axes=(
        0, 0, 0, 0 if member_data else None, 0))
  return jax.jit(eval_step)


def evaluate(eval_step, params, batch_stats, masks, split, batch_size,
             aux=()):
  """Accuracy on a whole split, in fixed-size (padded) batches: a float,
  or a list of each member's for a sweep's ``eval_step``; ``split`` may be
  a list of the members' own splits (of one size; ``member_data``)."""
  if isinstance(split, list):
    batches = (jax.tree.map(lambda *a: np.stack(a), *parts) for parts in
               zip(*[eval_batches(sp, batch_size) for sp in split]))
  else:
    batches = eval_batches(split, batch_size)
  parts = jax.device_get([eval_step(params, batch_stats, masks, b, aux)
                          for b in batches])
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
  one ``(T,)`` array. The hits are ``hits(apply, predict, top_k)``'s in
  batches of the same size as ``evaluate``'s, so the accuracies are the
  same. With ``members``, the model, masks and ``aux`` are a sweep's,
  stacked on a leading member axis, and each member gets its accuracies;
  with ``member_data`` too, ``splits[j]`` is a list of the members' own
  splits of task ``j`` (of one size), held stacked.
  """

  def __init__(self, splits, batch_size: int, apply: Callable,
               predict: Callable | None = None, members: bool = False,
               top_k: int = 1, member_data: bool = False):
    t = len(splits)
    if member_data:  # each member's batches, stacked
      each = [self._batches([s[m] for s in splits], batch_size)
              for m in range(len(splits[0]))]
      data = jax.tree.map(lambda *a: np.stack(a), *each)
      splits = [s[0] for s in splits]
    else:
      data = self._batches(splits, batch_size)
    self._data = jax.device_put(data)
    self._counts = np.asarray([len(s) for s in splits], np.float64)
    hit = hits(apply, predict, top_k)

    def correct(params, batch_stats, masks, data, aux):
      def one(batch):
        right = hit(params, batch_stats, masks, batch, aux) * batch["w"]
        return jax.ops.segment_sum(right, batch["task"], num_segments=t)
      return jnp.sum(jax.lax.map(one, data), axis=0)

    if members:
      correct = jax.vmap(correct, in_axes=(
          0, 0, 0, 0 if member_data else None, 0))
    self._correct = jax.jit(correct)

  @staticmethod
  def _batches(splits, batch_size: int) -> dict:
    """The splits concatenated, padded to whole batches (weight ``w`` 0,
    ``task`` the split's index) and cut into ``(batches, batch_size,
    ...)``."""
    n = sum(len(s) for s in splits)
    pad = -(-n // batch_size) * batch_size - n
    cat = lambda f: np.concatenate(
        [getattr(s, f) for s in splits] +
        [np.repeat(getattr(splits[0], f)[:1], pad, axis=0)])
    task = np.concatenate([np.full(len(s), j, np.int32)
                           for j, s in enumerate(splits)] +
                          [np.zeros(pad, np.int32)])
    w = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    shape = lambda a: a.reshape(-1, batch_size, *a.shape[1:])
    return {"x": shape(cat("x")), "y": shape(cat("y")), "t": shape(cat("t")),
            "w": shape(w), "task": shape(task)}

  def __call__(self, params, batch_stats, masks, aux=()) -> list:
    """Every task's accuracy (a list of floats; a list of those per member
    for a sweep)."""
    got = np.asarray(jax.device_get(self._correct(
        params, batch_stats, masks, self._data, aux)), np.float64)
    return (got / np.maximum(self._counts, 1.0)).tolist()

  @staticmethod
  def nbytes(splits) -> float:
    """The splits' bytes on the device (infinite for streamed ones: they
    are never held whole)."""
    if not all(s.in_memory for s in splits):
      return float("inf")
    return sum(s.x.nbytes + s.y.nbytes + s.t.nbytes for s in splits)
