"""CPG: the picking mask, the gradual pruning schedule and release, the
growth, and a task-IL stream whose learnt tasks never change."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax import data, methods, models, train
from cljax.data._batching import num_batches
from cljax.methods._base import Phase, TaskContext
from cljax.methods.cpg import binarise, cubic_sparsity, release_smallest
from cljax.train import _checkpoint
from checkpoint_test import Crash, _crash_after_saves


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
  m = methods.CPG(prune=0.5, rounds=3, retrain=False)
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


def _scripted(method, grow=None, compact=None):
  """``method`` with its accuracies scripted: ``grow`` answers the growth
  checks, ``compact`` (a list, in call order) the pruning choices; ``None``:
  the real accuracy. Returns the list of (kind, real accuracy) calls."""
  calls, real = [], type(method)._accuracy
  answers = list(compact or [])
  def accuracy(ctx, params, s, compacted):
    acc = real(method, ctx, params, s, compacted)
    calls.append(("compact" if compacted else "grow", acc))
    script = answers.pop(0) if compacted and compact else (
        grow if not compacted else None)
    return acc if script is None else script
  method._accuracy = accuracy
  return calls


def test_growth_until_the_goal_is_met(stream):
  # A goal every task misses: the first task grows by a quarter of the
  # layer twice, until it is full; no goal: the network keeps its half.
  missed = methods.CPG(initial_units=0.5, goal=0.9, grow=0.25)
  calls = _scripted(missed, grow=0.5)
  _, grown = _run(stream, missed)
  checks = [a for kind, a in calls if kind == "grow"]
  assert len(checks) == 2 and all(0.5 < a <= 1 for a in checks)
  r = np.asarray(grown["accuracy_matrix"])
  for j in range(3):  # growing keeps every learnt task exactly
    np.testing.assert_array_equal(r[j:, j], r[j, j])
  fixed = methods.CPG(initial_units=0.5, retrain=False)
  _, fixed_res = _run(stream, fixed)
  units = lambda res: [int(np.sum(u)) for u in jax.device_get(
      res["final_state"].method_state["units"]).values()]
  assert units(fixed_res) == [20, 20]
  assert units(grown) == [40, 40]  # 20 + 10 + 10 in the first task
  first = jax.device_get(grown["final_state"].method_state)["owner"][0] == 1
  assert np.all(first[:, 30:].any(0))  # it trained the last quarter too
  s = jax.device_get(fixed_res["final_state"].method_state)
  k = s["owner"][1]
  assert np.all(k[20:, :] == 0) and np.all(k[:, 20:] == 0)  # never used
  # A goal every task meets: its four growth phases are skipped, and the
  # run is the no-goal run's, step for step.
  met = methods.CPG(initial_units=0.5, goal=0.9, grow=0.25,
                    retrain=False)
  _scripted(met, grow=1.0, compact=[1.0] * 12)
  _, met_res = _run(stream, met)
  assert len(met.phases(1)) == 1 + 4 + 3
  assert int(met_res["final_state"].step) == int(
      fixed_res["final_state"].step)
  np.testing.assert_array_equal(met_res["accuracy_matrix"],
                                fixed_res["accuracy_matrix"])
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(met_res["final_state"].params),
               jax.device_get(fixed_res["final_state"].params))


def test_a_small_layer_grows_by_at_least_one_unit(stream):
  # 5% of 10 units rounds to 0: growth adds one, so the layer fills.
  m = methods.CPG(initial_units=0.5, goal=0.9, grow=0.05)
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(10,),
                             head="picking")
  s = m.init_state(model, stream)
  assert [int(np.sum(u)) for u in m._grown(s).values()] == [6]


def test_the_largest_pruning_ratio_that_meets_the_goal(stream):
  # Per task: unpruned, then rounds 1-3 (goal 0.9). Task 0 keeps round 1
  # (rounds 2 and 3 miss); task 1 round 2 (the largest that meets it);
  # task 2 misses the goal unpruned with the layers full: the last round.
  m = methods.CPG(prune=0.6, rounds=3, goal=0.9, retrain=False)
  calls = _scripted(m, compact=[0.95, 0.93, 0.85, 0.8,
                                0.95, 0.8, 0.92, 0.85,
                                0.85, 0.5, 0.5, 0.5])
  rounds, start = [], m.on_phase_start
  def recorded(ctx, phase):
    s = start(ctx, phase)
    if phase.name == "compact":
      rounds.append((ctx.index, jax.device_get(s["owner"][0])))
    return s
  m.on_phase_start = recorded
  _, res = _run(stream, m)
  assert [kind for kind, _ in calls] == ["compact"] * 12
  # A weight released stays released in the task's later rounds, a missed
  # round included. (Starting a round over from the kept ratio's owners
  # would release the same weights: released ones do not train, so they
  # stay the smallest. This checks the nesting, not which of the two.)
  for (k, a), (j, b) in zip(rounds, rounds[1:]):
    if k == j:
      assert np.all(b[a != k + 1] == a[a != k + 1])
  s = jax.device_get(res["final_state"].method_state)
  for i, owner in s["owner"].items():
    total, counts = owner.size, []
    for chosen in (1, 2, 3):  # each task keeps its share of the free ones
      released = int(np.floor(cubic_sparsity(0.6, chosen, 3) * total))
      counts.append(total - released)
      total = released
    np.testing.assert_array_equal(
        [np.sum(owner == k + 1) for k in range(3)], counts)
    k = jax.device_get(res["final_state"].params)["layers"][i]["kernel"]
    assert np.all(k[owner == 0] == 0)  # released: zeroed
  r = np.asarray(res["accuracy_matrix"])
  for j in range(3):
    np.testing.assert_array_equal(r[j:, j], r[j, j])
  # No ratio meets the goal: nothing is released.
  none = methods.CPG(prune=0.6, rounds=3, goal=0.9, retrain=False)
  _scripted(none, compact=[0.95, 0.5, 0.5, 0.5] * 3)
  _, kept = _run(stream, none)
  owner = jax.device_get(kept["final_state"].method_state)["owner"][0]
  assert np.all(owner == 1)  # the first task kept every weight


def test_retraining_the_mask_is_kept_only_if_it_helps(stream):
  # With goal 0 every round is kept; the retrain stage (tasks 1 and 2)
  # starts the mask afresh and is kept when it is more accurate.
  plain = methods.CPG(retrain=False)
  _, base = _run(stream, plain)
  worse = methods.CPG(retrain_epochs=2)
  _scripted(worse, compact=[0.5] * 4 + [0.5] * 6 + [0.5] * 6)
  _, rejected = _run(stream, worse)
  assert [p.name for p in worse.phases(1)][-1] == "retrain"
  assert [p.name for p in worse.phases(0)][-1] == "compact"
  # Rejected: the compacted network, exactly as without the stage.
  np.testing.assert_array_equal(rejected["accuracy_matrix"],
                                base["accuracy_matrix"])
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(rejected["final_state"].params),
               jax.device_get(base["final_state"].params))
  better = methods.CPG(retrain_epochs=2)
  _scripted(better, compact=[0.5] * 4 + [0.5] * 5 + [0.6] + [0.5] * 6)
  _, kept = _run(stream, better)
  p0 = jax.device_get(base["final_state"].method_state)["picks"][0][1]
  p1 = jax.device_get(kept["final_state"].method_state)["picks"][0][1]
  assert np.any(p0 != p1)  # task 1's mask retrained (task 2's rejected)
  learnt = lambda res: np.minimum(jax.device_get(
      res["final_state"].method_state)["owner"][0], 3) % 3  # tasks 0, 1
  np.testing.assert_array_equal(learnt(kept), learnt(base))
  r = np.asarray(kept["accuracy_matrix"])
  for j in range(3):
    np.testing.assert_array_equal(r[j:, j], r[j, j])
  # Retraining starts from the kept ratio's network, not the last round's:
  # task 1 keeps round 1 (goal 0.9), retrains and keeps the result.
  early = methods.CPG(prune=0.6, rounds=3, goal=0.9, retrain_epochs=1)
  calls = _scripted(early, compact=[0.95] * 4 + [0.95, 0.93, 0.85, 0.8, 0.5,
                                                 0.6] + [0.95] * 6)
  _, res = _run(stream, early)
  assert len(calls) == 16
  owner = jax.device_get(res["final_state"].method_state)["owner"][0]
  free = int(np.floor(cubic_sparsity(0.6, 3, 3) * owner.size))
  assert np.sum(owner == 2) == free - int(np.floor(
      cubic_sparsity(0.6, 1, 3) * free))
  for j in range(3):
    r = np.asarray(res["accuracy_matrix"])
    np.testing.assert_array_equal(r[j:, j], r[j, j])


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
                    (dict(goal=2.0), "goal"), (dict(grow=0.0), "grow"),
                    (dict(retrain_epochs=-1), "retrain_epochs"),
                    (dict(retrain=1), "retrain")):
    with pytest.raises(ValueError, match=match):
      methods.CPG(**kw)


def test_every_phase_compiles_once(stream):
  traces = {}

  class Counted(methods.CPG):
    def _loss(self, model, compact):
      f = super()._loss(model, compact)
      def loss(*a):
        traces[compact] = traces.get(compact, 0) + 1
        return f(*a)
      return loss

  m = Counted(initial_units=0.5, goal=0.99, retrain_epochs=1)
  _run(stream, m)
  # eval_shape and one compilation of each phase's step for the whole
  # stream: train and grow around one loss, compact and retrain the other.
  assert traces == {False: 4, True: 4}
  # The accuracy checks: one program each with and without the free
  # weights, for every task and split size.
  assert m._logits._cache_size() == 2


def test_each_stage_after_training_has_a_fresh_optimizer(stream):
  # Adam's step count after the stream is the last task's ``train`` phase's
  # alone: compaction and retraining each ran on a state of their own.
  _, res = _run(stream, methods.CPG(retrain_epochs=1))
  per_epoch = num_batches(len(stream.tasks[2].train), 32)
  counts = [int(c) for c in jax.tree.leaves(jax.tree.map(
      lambda s: s.count, res["final_state"].opt_state,
      is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState)))
            if np.ndim(c) == 0]
  assert counts and set(counts) == {6 * per_epoch}
  assert int(res["final_state"].step) > 3 * 6 * per_epoch


def test_resume_inside_compaction_is_bit_identical(stream, tmp_path,
                                                   monkeypatch):
  # Killed inside task 2's compaction, with the kept ratio's snapshot and
  # the phase's own optimizer state in the checkpoint.
  def run(ckpt, every=5):
    m = methods.CPG(goal=0.95, initial_units=0.5, retrain_epochs=1)
    model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,),
                               head=m.head)
    return train.run_stream(stream, m, model, optax.adam(1e-3), epochs=1,
                            batch_size=32, progress=False, checkpoint_dir=ckpt,
                            checkpoint_every=every)
  positions = []  # where the uninterrupted run checkpoints (not written)
  monkeypatch.setattr(_checkpoint.Checkpoints, "save",
                      lambda self, items, record: positions.append(
                          record["position"]))
  want = run(str(tmp_path / "full"))
  monkeypatch.undo()
  phases = methods.CPG(goal=0.95, initial_units=0.5).phases(1)
  n = 1 + next(i for i, p in enumerate(positions) if p and p["task"] == 1
               and phases[p["phase"]].name == "compact" and p["batch"] > 0)
  ckpt = str(tmp_path / "ck")
  _crash_after_saves(monkeypatch, n)
  with pytest.raises(Crash):
    run(ckpt)
  monkeypatch.undo()
  assert _checkpoint.Checkpoints(ckpt).latest_record()["position"]["stash"]
  got = run(ckpt, every=0)  # resumes there; only task ends saved from there
  assert got["accuracy_matrix"] == want["accuracy_matrix"]
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(got["final_state"].params),
               jax.device_get(want["final_state"].params))
