"""CPG: the picking mask, the gradual pruning schedule and release, the
growth, and a task-IL stream whose learnt tasks never change."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax import data, methods, models, train
from cljax.methods._base import Phase, TaskContext
from cljax.methods.cpg import binarise, cubic_sparsity, release_smallest


def test_binarise_is_hard_forward_and_straight_through():
  m = jnp.array([0.0, 0.004, 0.006, 0.01, -1.0])
  np.testing.assert_array_equal(binarise(m), [0, 0, 1, 1, 0])
  w = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])
  np.testing.assert_allclose(jax.grad(lambda m: jnp.sum(binarise(m) * w))(m),
                             w)


def test_schedule_and_release_against_loops():
  np.testing.assert_allclose(
      [cubic_sparsity(0.6, t, 4) for t in range(5)],
      [0.6 * (1 - (1 - t / 4) ** 3) for t in range(5)])
  assert cubic_sparsity(0.6, 4, 4) == pytest.approx(0.6)
  rng = np.random.default_rng(0)
  for _ in range(5):
    w = rng.normal(size=(6, 7)).astype(np.float32)
    owner = rng.choice([0, 1, 2, 3], size=w.shape).astype(np.int32)
    got = np.asarray(release_smallest(w, owner, 2, 4))
    own = np.flatnonzero(owner.ravel() == 3)
    smallest = own[np.argsort(np.abs(w.ravel()[own]), kind="stable")[:4]]
    want = owner.ravel().copy()
    want[smallest] = 0
    np.testing.assert_array_equal(got.ravel(), want)


@pytest.fixture(scope="module")
def stream(digits):
  return data.class_splits(digits, 3, task_sizes=(4, 3, 3),
                           incremental="task")


def _run(stream, method, hidden=(40, 40)):
  model = models.build_model("mlp", stream.input_shape, 10, hidden=hidden,
                             head=method.head)
  return model, train.run_stream(stream, method, model, optax.adam(1e-3),
                                 epochs=6, batch_size=32, progress=False)


def test_learnt_tasks_never_change_and_compaction_keeps_its_share(stream):
  m = methods.CPG(prune=0.5, rounds=3)
  model, res = _run(stream, m)
  r = np.asarray(res["accuracy_matrix"])
  for j in range(3):
    np.testing.assert_array_equal(r[j:, j], r[j, j])  # exactly
    assert r[j, j] > 0.8
  s = jax.device_get(res["final_state"].method_state)
  owner = s["owner"][0]
  n = owner.size  # task 0 trained every weight, then released half
  assert np.sum(owner == 1) == n - n // 2
  free_after_0 = n // 2  # task 1 trained those, and kept half of them
  assert np.sum(owner == 2) == free_after_0 - free_after_0 // 2
  np.testing.assert_allclose(res["network_use"], [
      np.mean(np.concatenate([np.ravel(o) for o in s["owner"].values()])
              == k + 1) for k in range(3)])
  # Task 2 is predicted with its weights plus its picked earlier ones.
  params = jax.device_get(res["final_state"].params)
  got, _ = m.eval_params(s, params, {}, 1, 2)
  k = params["layers"][0]["kernel"]
  want = k * (owner == 2) + k * (owner == 1) * s["picks"][0][1]
  np.testing.assert_allclose(got["layers"][0]["kernel"], want)
  picked = s["picks"][0][1][owner == 1]
  assert 0 < picked.mean() < 1  # the mask learnt to drop some old weights


def test_the_mask_trains_at_its_scale_and_freezes_while_compacting(stream):
  m = methods.CPG(mask_lr_scale=0.25)
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,),
                             head="picking")
  s = m.init_state(model, stream)
  owner = np.zeros((64, 16), np.int32)
  owner[:, :8] = 1  # task 0 kept half of the first layer
  s = {**s, "owner": {0: jnp.asarray(owner)}}
  ctx = TaskContext(1, stream, model, model.params, {}, s,
                    stream.logit_masks(1))
  train_ = m.on_phase_start(ctx, Phase("train"))["trainable"]
  np.testing.assert_array_equal(train_["pick"][0], 0.25 * (owner == 1))
  np.testing.assert_array_equal(train_["layers"][0]["kernel"], owner == 0)
  compact = m.on_phase_start(ctx, Phase("compact"))["trainable"]
  assert np.all(np.asarray(compact["pick"][0]) == 0)


def test_growth_when_the_goal_is_missed(stream):
  # A goal every task misses: each grows by a quarter of the layer until
  # it is full; no goal: the network keeps its initial half.
  missed = methods.CPG(initial_units=0.5, goal=0.9, grow=0.25)
  accuracies = []
  def below_goal(ctx):
    accuracies.append(methods.CPG._accuracy(missed, ctx))
    return 0.5
  missed._accuracy = below_goal
  _, grown = _run(stream, missed)
  assert len(accuracies) == 2 and all(0.5 < a <= 1 for a in accuracies)
  r = np.asarray(grown["accuracy_matrix"])
  for j in range(3):  # growing keeps every learnt task exactly
    np.testing.assert_array_equal(r[j:, j], r[j, j])
  _, fixed = _run(stream, methods.CPG(initial_units=0.5))
  units = lambda res: [int(np.sum(u)) for u in jax.device_get(
      res["final_state"].method_state["units"]).values()]
  assert units(fixed) == [20, 20]
  assert units(grown) == [40, 40]  # 20 + 10 + 10: full after two tasks
  s = jax.device_get(fixed["final_state"].method_state)
  k = s["owner"][1]
  assert np.all(k[20:, :] == 0) and np.all(k[:, 20:] == 0)  # never used


def test_refusals(stream, digits):
  with pytest.raises(ValueError, match="task-incremental"):
    methods.CPG().check(data.class_splits(digits, 3, task_sizes=(4, 3, 3)))
  plain = models.build_model("mlp", stream.input_shape, 10, hidden=(8,))
  with pytest.raises(ValueError, match="picking"):
    methods.CPG().init_state(plain, stream)
  with pytest.raises(ValueError, match="BatchNorm"):
    models.build_model("resnet32", (32, 32, 3), 10, head="picking")
  for kw, match in ((dict(prune=1.0), "prune"), (dict(rounds=0), "rounds"),
                    (dict(initial_units=0.0), "initial_units"),
                    (dict(goal=2.0), "goal")):
    with pytest.raises(ValueError, match=match):
      methods.CPG(**kw)
