"""DEN: the proximal steps, the selected subnetwork, the split of drifted
units, the timestamps, and a task-IL stream."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax import data, methods, models, train
from cljax.methods._base import Phase, TaskContext
from cljax.methods.den import (group_soft_threshold, selected_units,
                               soft_threshold)


def test_proximal_steps_against_numpy():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(5, 4)).astype(np.float32) * 0.01
  np.testing.assert_allclose(
      soft_threshold(w, 0.005),
      np.where(np.abs(w) < 0.005, 0, w - 0.005 * np.sign(w)), atol=1e-8)
  groups = np.array([True, False, True, True])
  rows = np.array([True, True, True, True, False])  # row 4: no unit yet
  w[:, 3] *= 1e-3  # a column whose norm is below the threshold
  w[4] = 1.0  # must neither count nor change
  mask = (rows[:, None] & groups[None, :]).astype(np.float32)
  got = np.asarray(group_soft_threshold(w, 0.01, mask))
  for c in range(4):
    norm = np.linalg.norm(w[:4, c])
    want = w[:, c].copy()
    if groups[c]:
      want[:4] = 0 if norm < 0.01 else w[:4, c] * (1 - 0.01 / norm)
    np.testing.assert_allclose(got[:, c], want, rtol=1e-5, atol=1e-8)


def test_selected_units_against_a_search():
  rng = np.random.default_rng(1)
  kernels = [rng.normal(size=(6, 5)) * (rng.uniform(size=(6, 5)) < 0.3),
             rng.normal(size=(5, 4)) * (rng.uniform(size=(5, 4)) < 0.3)]
  top = np.array([True, False, True, True])
  exist = [np.array([True, True, True, True, False]),
           np.array([True, True, True, False])]  # the last ones: no unit yet
  kernels[1][:, 3] = 1.0  # a unit that does not exist reaches every one
  got = [np.asarray(a) for a in selected_units(
      [jnp.asarray(k) for k in kernels], jnp.asarray(top),
      [jnp.asarray(e) for e in exist])]
  want_1 = top & exist[1]
  want_0 = np.array([any(kernels[1][j, u] != 0 for u in range(4)
                         if want_1[u]) for j in range(5)]) & exist[0]
  np.testing.assert_array_equal(got[1], want_1)
  np.testing.assert_array_equal(got[0], want_0)


def test_split_copies_the_drifted_unit_and_restores_the_original(digits):
  stream = data.class_splits(digits, 2, incremental="task")
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(8, 6))
  m = methods.DEN(spl_thr=0.5, initial_units=0.5, ex_k=1)
  s = m.init_state(model, stream)
  rng = np.random.default_rng(2)
  prev = jax.device_get(model.params)
  cur = jax.tree.map(lambda a: a + rng.normal(size=a.shape).astype(
      np.float32) * 0.05, prev)
  cur["layers"][0]["kernel"][:, 1] += 1.0  # unit 1 of layer 0 drifts most
  cur["layers"][0]["kernel"][:, 2] += 0.8  # unit 2 too, but ex_k = 1
  # This task added unit 3 of layer 1 (it exists, timestamp 2).
  s = {**s, "prev": prev, "stamps": {**s["stamps"], 1: s["stamps"][1].at[
      3].set(2)}}
  ctx = TaskContext(1, stream, model, cur, {}, s, stream.logit_masks(1))
  s = m.on_phase_start(ctx, Phase("split"))
  src = np.asarray(s["source"][0])
  assert list(src[src >= 0]) == [1]  # capped at ex_k, the most drifted
  slot = int(np.flatnonzero(src == 1)[0])
  assert slot >= 4 and np.asarray(s["stamps"][0])[slot] == 2
  params, _ = m.phase_params(ctx._replace(method_state=s), Phase("split"))
  k0, k1 = params["layers"][0]["kernel"], params["layers"][1]["kernel"]
  np.testing.assert_array_equal(k0[:, slot], cur["layers"][0]["kernel"][:, 1])
  np.testing.assert_array_equal(k0[:, 1], prev["layers"][0]["kernel"][:, 1])
  assert params["layers"][0]["bias"][slot] == cur["layers"][0]["bias"][1]
  np.testing.assert_array_equal(k1[slot], cur["layers"][1]["kernel"][1])
  # The original's outgoing weights: back to the old ones into the older
  # units (0-2), the current ones into the unit this task added (3).
  np.testing.assert_array_equal(k1[1, :3], prev["layers"][1]["kernel"][1, :3])
  assert k1[1, 3] == cur["layers"][1]["kernel"][1, 3]
  np.testing.assert_array_equal(params["head"]["kernel"],
                                cur["head"]["kernel"])
  # An old task's units (timestamp 1) see only the restored original.
  x = np.asarray(stream.tasks[0].test.x[:5]).reshape(5, -1)
  h_old = np.maximum(x @ prev["layers"][0]["kernel"] +
                     prev["layers"][0]["bias"], 0)[:, 1]
  h_new = np.maximum(x @ k0 + params["layers"][0]["bias"], 0)
  np.testing.assert_allclose(h_new[:, 1], h_old, rtol=1e-5)
  h_cur = np.maximum(x @ cur["layers"][0]["kernel"] +
                     cur["layers"][0]["bias"], 0)[:, 1]
  np.testing.assert_allclose(h_new[:, slot], h_cur, rtol=1e-5)
  # The drift penalty holds only the units that existed before the task.
  anchored = np.asarray(s["anchored"][1]["kernel"])
  assert np.all(anchored[:, 3] == 0) and np.all(anchored[:4, :3] == 1)


def test_useless_added_units_are_dropped_and_slots_start_fresh(digits):
  stream = data.class_splits(digits, 2, incremental="task")
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(8, 6))
  m = methods.DEN(initial_units=0.5)
  s = m.init_state(model, stream)
  params = jax.tree.map(np.array, model.params)
  st = {0: np.array([1, 1, 1, 1, 2, 2, 0, 0], np.int32),
        1: np.array([1, 1, 1, 2, 0, 0], np.int32)}
  params["layers"][1]["kernel"][:, 3] = 0.0  # no weight from existing units
  params["layers"][1]["kernel"][6:, 3] = 5.0  # (rows of absent units: moot)
  s = {**s, "stamps": {i: jnp.asarray(v) for i, v in st.items()}}
  dropped = m._drop_useless(s, params, 1)["stamps"]
  assert list(np.asarray(dropped[1])) == [1, 1, 1, 0, 0, 0]
  assert list(np.asarray(dropped[0])) == list(st[0])  # still connected
  stale = jax.tree.map(lambda a: a + 3.0, params)
  ctx = TaskContext(1, stream, model, stale, {}, s, stream.logit_masks(1))
  fresh, _ = m.phase_params(ctx, Phase("expand"))
  init = jax.device_get(model.params)
  np.testing.assert_array_equal(fresh["layers"][0]["kernel"][:, 4:6],
                                init["layers"][0]["kernel"][:, 4:6])
  np.testing.assert_array_equal(fresh["layers"][1]["kernel"][4:6],
                                init["layers"][1]["kernel"][4:6])
  np.testing.assert_array_equal(fresh["head"]["kernel"][3],
                                init["head"]["kernel"][3])
  np.testing.assert_array_equal(fresh["layers"][0]["kernel"][:, :4],
                                stale["layers"][0]["kernel"][:, :4])


def test_a_stream_grows_and_predicts_old_tasks_with_their_units(digits):
  stream = data.class_splits(digits, 3, task_sizes=(4, 3, 3),
                             incremental="task")
  m = methods.DEN(loss_thr=0.0, ex_k=4, initial_units=0.5, expand_epochs=2,
                  split_epochs=2)  # always expands
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(32, 32))
  res = train.run_stream(stream, m, model, optax.adam(1e-3), epochs=6,
                         batch_size=32, progress=False)
  r = np.asarray(res["accuracy_matrix"])
  assert np.all(np.diag(r) > 0.8) and r[-1].mean() > 0.8
  s = jax.device_get(res["final_state"].method_state)
  for st in s["stamps"].values():
    assert np.sum(st == 1) == 16 and np.sum(st >= 2) > 0  # grew
  stamps = np.concatenate(list(s["stamps"].values()))
  np.testing.assert_allclose(res["network_use"],
                             [np.mean(stamps == k) for k in (1, 2, 3)])
  assert res["network_use"][0] == 0.5
  # Task 0 is predicted without the units added after it: its outputs do
  # not move when their weights do.
  params = jax.device_get(res["final_state"].params)
  newer = [s["stamps"][i] >= 2 for i in (0, 1)]
  moved = jax.tree.map(np.array, params)
  moved["layers"][0]["kernel"][:, newer[0]] += 1.0
  moved["layers"][1]["kernel"][newer[0]] += 1.0
  moved["layers"][1]["kernel"][:, newer[1]] += 1.0
  moved["head"]["kernel"][newer[1]] += 1.0
  x = jnp.asarray(stream.tasks[0].test.x)
  logits = [model.apply(m.eval_params(s, p, {}, 0, 2)[0], {}, x)[0][0]
            for p in (params, moved)]
  np.testing.assert_allclose(logits[0], logits[1], rtol=1e-5, atol=1e-5)
  now = [model.apply(m.eval_params(s, p, {}, 2, 2)[0], {}, x)[0][0]
         for p in (params, moved)]
  assert not np.allclose(now[0], now[1])  # the last task uses them


def test_refusals(digits):
  with pytest.raises(ValueError, match="task-incremental"):
    methods.DEN().check(data.class_splits(digits, 2))
  stream = data.class_splits(digits, 2, incremental="task")
  cnn = models.build_model("cnn", stream.input_shape, 10)
  with pytest.raises(ValueError, match="mlp"):
    methods.DEN().init_state(cnn, stream)
  for kw, match in ((dict(ex_k=0), "ex_k"), (dict(l1=-1.0), "l1"),
                    (dict(initial_units=0.0), "initial_units")):
    with pytest.raises(ValueError, match=match):
      methods.DEN(**kw)
