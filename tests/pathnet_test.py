"""PathNet: the modular network and its paths against loops, the mutation
and the tournament, and a task-IL stream whose learnt tasks never change."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax import data, methods, models, train
from cljax.methods.pathnet import apply_path, mutate, path_masks
from cljax.methods._base import TaskContext
from cljax.train._step import StepInfo


def test_a_path_is_the_sum_of_its_modules():
  rng = np.random.default_rng(0)
  model = models.build_model("mlp", (2, 3, 1), 4, hidden=(50, 30),
                             head="modular")
  genes = rng.integers(0, 10, size=(2, 3))
  mask = np.asarray(path_masks(jnp.asarray(genes), 10))
  for layer in range(2):
    assert set(np.flatnonzero(mask[layer])) == set(genes[layer])
  x = rng.normal(size=(5, 2, 3, 1)).astype(np.float32)
  (got, _), _ = model.apply(apply_path(model.params, mask), {}, x)
  p = jax.device_get(model.params)
  h = x.reshape(5, -1)
  for i in range(2):
    k, b = p["layers"][i]["kernel"], p["layers"][i]["bias"]
    h = sum(np.maximum(h @ k[m] + b[m], 0) for m in set(genes[i]))
  want = h @ p["head"]["kernel"] + p["head"]["bias"]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_mutation_rate_and_shifts():
  genes = jnp.zeros((4000, 3, 3), jnp.int32) + 5
  got = np.asarray(mutate(genes, jax.random.key(0), 0.2, 10))
  shift = got - 5
  assert set(np.unique(shift)) <= {-2, -1, 0, 1, 2}
  # A drawn index moves unless its shift is 0: 0.2 * 4/5 of them.
  assert abs(np.mean(shift != 0) - 0.16) < 0.005
  wrapped = np.asarray(mutate(jnp.zeros_like(genes), jax.random.key(1), 1.0,
                              10))
  assert set(np.unique(wrapped)) <= {8, 9, 0, 1, 2}


def _info(correct, key=0):
  return StepInfo({}, {"correct": jnp.asarray(correct)},
                  jax.random.key(key), lambda x: x, (0, 1))


def test_tournament_copies_the_winner_into_the_loser(digits):
  stream = data.class_splits(digits, 2, incremental="task")
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(20,),
                             head="modular")
  m = methods.PathNet(population=6, steps_per_path=3, mutation=1e-9)
  s = m.init_state(model, stream)
  s = {**s, "genes": jnp.arange(6 * 3).reshape(6, 1, 3) % 10,
       "pair": jnp.array([4, 1], jnp.int32)}
  for step in range(3):  # path 4: accuracy 0.5
    s = m.update_method_state(s, None, None, None, _info([1, 0]))
  assert int(s["slot"]) == 1 and int(s["count"]) == 0
  for step in range(3):  # path 1: accuracy 1.0, it wins
    s = m.update_method_state(s, None, None, None, _info([1, 1]))
  genes = np.asarray(s["genes"])
  np.testing.assert_array_equal(genes[4], genes[1])
  assert float(s["fitness"][1]) == 1.0 and np.isneginf(s["fitness"][4])
  pair = np.asarray(s["pair"])
  assert pair[0] != pair[1] and int(s["slot"]) == 0
  assert np.all(np.asarray(s["score"]) == 0)


def test_learnt_tasks_never_change(digits):
  stream = data.class_splits(digits, 3, task_sizes=(4, 3, 3),
                             incremental="task")
  m = methods.PathNet(population=8, steps_per_path=4)
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(60, 60),
                             head=m.head)
  res = train.run_stream(stream, m, model, optax.adam(1e-2), epochs=8,
                         batch_size=32, progress=False)
  r = np.asarray(res["accuracy_matrix"])
  for j in range(3):
    np.testing.assert_array_equal(r[j:, j], r[j, j])  # exactly
    assert r[j, j] > 0.6  # learnt (chance: 1/4 or 1/3)
  s = res["final_state"].method_state
  paths = np.asarray(s["paths"])
  np.testing.assert_array_equal(np.asarray(s["frozen"]), paths.any(0))
  assert all(paths[k].sum(-1).max() <= 3 for k in range(3))
  np.testing.assert_allclose(res["network_use"], paths.mean((1, 2)))


def test_reinitialised_modules_match_the_initial_scale(digits):
  stream = data.class_splits(digits, 2, incremental="task")
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(400,),
                             head="modular")
  m = methods.PathNet()
  s = m.init_state(model, stream)
  s = {**s, "frozen": s["frozen"].at[0, :3].set(True)}
  ctx = TaskContext(1, stream, model, model.params, {}, s,
                    stream.logit_masks(1), seed=0)
  params, _ = m.start_params(ctx)
  before = np.asarray(model.params["layers"][0]["kernel"])
  after = np.asarray(params["layers"][0]["kernel"])
  np.testing.assert_array_equal(after[:3], before[:3])  # frozen: kept
  assert not np.allclose(after[3:], before[3:])
  np.testing.assert_allclose(after[3:].std(), before[3:].std(), rtol=0.05)


def test_a_task_shorter_than_a_tournament_warns(digits):
  stream = data.class_splits(digits, 2, incremental="task")
  m = methods.PathNet(population=4, steps_per_path=500)
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(20,),
                             head=m.head)
  with pytest.warns(UserWarning, match="before its first tournament"):
    train.run_stream(stream, m, model, optax.adam(1e-3), epochs=1,
                     batch_size=32, progress=False)


def test_refusals(digits):
  with pytest.raises(ValueError, match="task-incremental"):
    methods.PathNet().check(data.class_splits(digits, 2))
  stream = data.class_splits(digits, 2, incremental="task")
  plain = models.build_model("mlp", stream.input_shape, 10, hidden=(20,))
  with pytest.raises(ValueError, match="modular"):
    methods.PathNet().init_state(plain, stream)
  with pytest.raises(ValueError, match="mlp"):
    models.build_model("cnn", (8, 8, 1), 10, head="modular")
  with pytest.raises(ValueError, match="at least 10 units"):
    models.build_model("mlp", (8, 8, 1), 10, hidden=(5,), head="modular")
  for kw, match in ((dict(active=0), "active"), (dict(population=1),
                                                  "population"),
                    (dict(mutation=1.5), "mutation")):
    with pytest.raises(ValueError, match=match):
      methods.PathNet(**kw)
