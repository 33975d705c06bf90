"""Evaluation: top-1 / top-k hits against a plain loop, the device and
split-by-split paths agreeing, and the runner's top-k accuracy matrix."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax import data, methods, models, train
from cljax.train._evaluate import hits


def _identity_apply(params, batch_stats, x, train=False):
  """A "model" whose logits are its inputs."""
  return (jnp.asarray(x), jnp.asarray(x)), batch_stats


@pytest.mark.parametrize("top_k", [1, 3, 5])
def test_hits_match_a_loop_over_examples(top_k):
  rng = np.random.default_rng(top_k)
  b, c, t = 64, 12, 3
  logits = rng.normal(size=(b, c)).astype(np.float32)
  masks = rng.random((t, c)) < 0.6
  masks[:, 0] = True  # every task has an active class
  tasks = rng.integers(0, t, b).astype(np.int32)
  labels = np.asarray([rng.choice(np.flatnonzero(masks[k])) for k in tasks],
                      np.int32)
  got = hits(_identity_apply, top_k=top_k)(
      None, {}, jnp.asarray(masks), {"x": logits, "y": labels, "t": tasks}, ())
  want = []
  for i in range(b):
    active = np.flatnonzero(masks[tasks[i]])
    ranked = active[np.argsort(-logits[i, active], kind="stable")]
    want.append(float(labels[i] in ranked[:top_k]))
  np.testing.assert_array_equal(np.asarray(got), want)


def test_top_k_never_counts_an_inactive_label():
  """Fewer active classes than k: the top k then holds masked classes,
  which must not count (a task not yet trained scores 0)."""
  logits = np.random.default_rng(0).normal(size=(6, 10)).astype(np.float32)
  masks = np.zeros((1, 10), bool)
  masks[0, :2] = True
  labels = np.asarray([0, 1, 2, 3, 4, 9], np.int32)
  got = hits(_identity_apply, top_k=5)(
      None, {}, jnp.asarray(masks),
      {"x": logits, "y": labels, "t": np.zeros(6, np.int32)}, ())
  np.testing.assert_array_equal(np.asarray(got), [1, 1, 0, 0, 0, 0])


def test_top_k_with_a_method_classifier_is_refused():
  with pytest.raises(ValueError, match="top_k"):
    hits(_identity_apply, predict=lambda *a: None, top_k=5)
  with pytest.raises(ValueError, match="top_k"):
    hits(_identity_apply, top_k=0)


@pytest.mark.parametrize("top_k", [1, 5])
def test_device_evaluator_equals_split_by_split(digits, top_k):
  stream = data.class_splits(digits, 5)
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,))
  masks = jnp.asarray(stream.logit_masks(2))
  splits = [task.test for task in stream.tasks]
  step = train.make_eval_step(model.apply, top_k=top_k)
  one_by_one = [train.evaluate(step, model.params, model.batch_stats, masks,
                               s, 100) for s in splits]
  device = train.DeviceEvaluator(splits, 100, model.apply, top_k=top_k)(
      model.params, model.batch_stats, masks)
  assert device == one_by_one


def test_run_stream_reports_top_k(digits):
  """Top-5 beside top-1 in class-IL: never below top-1, and 1 on the
  first task while at most 5 classes are active."""
  stream = data.class_splits(digits, 5)
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,))
  res = train.run_stream(stream, methods.FineTune(), model, optax.sgd(0.1),
                         epochs=1, batch_size=32, progress=False, top_k=5)
  top1 = np.asarray(res["accuracy_matrix"])
  top5 = np.asarray(res["accuracy_matrix_top5"])
  assert np.all(top5 >= top1 - 1e-12)
  assert top5[0, 0] == top5[1, 0] == 1.0  # 2 and 4 classes active
  assert np.all(np.triu(top5, 1) == 0)  # tasks not yet trained: masked
  assert "metrics_top5" in res
  with pytest.raises(ValueError, match="top_k"):
    train.run_stream(stream, methods.FineTune(), model, optax.sgd(0.1),
                     epochs=1, batch_size=32, progress=False, top_k=0)


@pytest.mark.parametrize("loop", ["scan", "host"])
def test_evaluation_batches_are_no_larger_than_the_largest_split(
    digits, monkeypatch, loop):
  """Splits smaller than ``eval_batch_size`` are evaluated in batches of the
  largest split's size (not padded to 1,000), on the device (scan loop) and
  split by split (host loop), with the accuracies of small batches."""
  from cljax.train import _loop
  sizes = []

  class Evaluator(_loop.DeviceEvaluator):
    def __init__(self, splits, batch_size, *args, **kwargs):
      sizes.append(("device", batch_size))
      super().__init__(splits, batch_size, *args, **kwargs)

  def evaluate(*args, real=_loop.evaluate):
    sizes.append(("split", args[5]))
    return real(*args)

  monkeypatch.setattr(_loop, "DeviceEvaluator", Evaluator)
  monkeypatch.setattr(_loop, "evaluate", evaluate)
  stream = data.class_splits(digits, 5)
  largest = max(len(t.test) for t in stream.tasks)
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,))
  run = lambda eval_batch_size: train.run_stream(
      stream, methods.FineTune(), model, optax.sgd(0.1), epochs=1,
      batch_size=32, progress=False, eval_batch_size=eval_batch_size,
      loop=loop)
  big = run(1000)
  assert {size for _, size in sizes} == {largest}
  # The scan loop evaluates on the device (the random-init row always
  # split by split), the host loop split by split only.
  assert ("device" in dict(sizes)) == (loop == "scan")
  # Equal up to an example flipped by float rounding at a near-tie.
  smallest = min(len(t.test) for t in stream.tasks)
  np.testing.assert_allclose(big["accuracy_matrix"],
                             run(7)["accuracy_matrix"], atol=1.01 / smallest)
