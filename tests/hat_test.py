"""Hard Attention to the Task: gates, gradient conditioning, compensation,
the attention regulariser and a task-IL stream whose old tasks keep their
outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax import data, methods, models, train
from cljax.methods.hat import (annealed_scale, apply_gates,
                               attention_regularizer, compensation,
                               conditioning)


def test_gated_mlp_equals_a_loop_of_gated_units():
  rng = np.random.default_rng(0)
  model = models.build_model("mlp", (2, 3, 1), 5, hidden=(4, 3),
                             head="gated")
  gates = [rng.uniform(size=4).astype(np.float32),
           rng.uniform(size=3).astype(np.float32)]
  x = rng.normal(size=(7, 2, 3, 1)).astype(np.float32)
  (got, _), _ = model.apply(apply_gates(model.params, gates), {}, x)
  p = jax.device_get(model.params)
  h = x.reshape(7, -1)
  for layer, a in zip((p["layers"][0], p["layers"][1]), gates):
    h = a * np.maximum(h @ layer["kernel"] + layer["bias"], 0)
  want = h @ p["head"]["kernel"] + p["head"]["bias"]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_conditioning_against_a_loop():
  rng = np.random.default_rng(1)
  params = models.build_model("cnn", (8, 8, 1), 5, head="gated").params
  previous = [rng.uniform(size=g.shape).astype(np.float32)
              for _, g in sorted(params["gates"].items())]
  got = jax.device_get(conditioning(params, previous))
  c0, c1, d = previous
  k0 = got["convs"][0]["kernel"]
  assert np.allclose(k0, np.broadcast_to(1 - c0, k0.shape))
  k1 = got["convs"][1]["kernel"]
  for i in range(k1.shape[2]):
    for o in range(k1.shape[3]):
      assert np.allclose(k1[:, :, i, o], 1 - min(c1[o], c0[i]))
  kd = got["dense"]["kernel"]  # inputs: (row, col, channel) flattened
  for r in rng.choice(kd.shape[0], 40):
    for o in rng.choice(kd.shape[1], 5):
      assert np.isclose(kd[r, o], 1 - min(d[o], c1[r % c1.shape[0]]))
  for key, p in ((("convs", 0), c0), (("convs", 1), c1), (("dense",), d)):
    layer = got
    for k in key:
      layer = layer[k]
    np.testing.assert_allclose(layer["bias"], 1 - p)
  assert all(np.all(v == 1) for v in jax.tree.leaves(got["head"]))


def test_regulariser_scale_and_compensation_against_numpy():
  rng = np.random.default_rng(2)
  a = [rng.uniform(size=5), rng.uniform(size=3)]
  p = [rng.uniform(size=5), rng.uniform(size=3)]
  want = sum((x * (1 - y)).sum() for x, y in zip(a, p)) / sum(
      (1 - y).sum() for y in p)
  np.testing.assert_allclose(attention_regularizer(a, p), want, rtol=1e-6)
  zeros = [np.zeros(5), np.zeros(3)]
  np.testing.assert_allclose(attention_regularizer(a, zeros),
                             np.concatenate(a).mean(), rtol=1e-6)
  np.testing.assert_allclose(
      [annealed_scale(b, 11, 400.0) for b in (0, 5, 10)],
      [1 / 400, 1 / 400 + (400 - 1 / 400) / 2, 400.0], rtol=1e-6)
  e, s = rng.normal(size=6) * 3, 7.0
  np.testing.assert_allclose(
      compensation(e, s, 400.0),
      400 * (np.cosh(np.clip(s * e, -50, 50)) + 1) / (s * (np.cosh(e) + 1)),
      rtol=1e-5)


@pytest.fixture(scope="module")
def stream(digits):
  return data.class_splits(digits, 3, task_sizes=(4, 3, 3), incremental="task")


def _task0_logits(stream, method, tasks):
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(64, 64),
                             head=method.head)
  res = train.run_stream(stream._replace(tasks=stream.tasks[:tasks]), method,
                         model, optax.adam(1e-3), epochs=10, batch_size=32,
                         progress=False)
  fs = res["final_state"]
  params, stats = method.eval_params(fs.method_state, fs.params,
                                     fs.batch_stats, 0, tasks - 1)
  (z, _), _ = model.apply(params, stats, jnp.asarray(stream.tasks[0].test.x))
  return np.asarray(z)[:, stream.tasks[0].classes], res


def test_old_tasks_keep_their_outputs(stream):
  # Task 0's logits after task 0 and after the whole stream: fine-tuning
  # moves them by several units, HAT's hard gates (smax = 400) keep them.
  before, _ = _task0_logits(stream, methods.HAT(), 1)
  after, res = _task0_logits(stream, methods.HAT(), 3)
  np.testing.assert_allclose(after, before, atol=1e-4 * np.abs(before).max())
  assert res["metrics"]["average_accuracy"] > 0.9
  ft_before, _ = _task0_logits(stream, methods.FineTune(), 1)
  ft_after, _ = _task0_logits(stream, methods.FineTune(), 3)
  assert np.abs(ft_after - ft_before).max() > 0.1 * np.abs(ft_before).max()
  # Each task used part of the units: the cumulative gates are 0/1 and the
  # regulariser left some units free.
  prev = np.concatenate([np.ravel(v) for v in jax.tree.leaves(
      res["final_state"].method_state["previous"])])
  assert np.all((prev < 1e-3) | (prev > 1 - 1e-3))
  assert 0.05 < prev.mean() < 0.95
  # network_use: each task's open gates, whose union is the units taken.
  emb = res["final_state"].method_state["embeddings"]
  table = np.concatenate([np.asarray(emb[i]) for i in sorted(emb)], -1)
  use = res["network_use"]
  assert len(use) == 3 and all(0 < u < 1 for u in use)
  np.testing.assert_allclose(use, np.mean(table > 0, axis=1))
  np.testing.assert_allclose(np.mean(np.any(table > 0, axis=0)),
                             np.mean(prev > 0.5))


def test_fully_used_units_do_not_move(stream):
  # With every unit taken by earlier tasks, a step moves only the head and
  # the embeddings (clamped to [-6, 6]).
  m = methods.HAT(lr=100.0)  # a step that would carry gates past 6
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,),
                             head="gated")
  o = m.optimizer(optax.adam(1.0), model.params)  # HAT's own SGD instead
  s = m.init_state(model, stream)
  s = {**s, "previous": jax.tree.map(jnp.ones_like, s["previous"]),
       "n_train": jnp.asarray(100, jnp.int32)}
  params = {**model.params, "gates": {0: jnp.full((16,), 0.5)}}
  state = train.init_train_state(params, {}, o, s, stream.logit_masks(1))
  step = jax.jit(train.make_train_step(
      m.loss_fn(model), o, update_method_state=m.update_method_state,
      extra_args=m.extra_args, batch_fn=m.batch_fn))
  split = stream.tasks[1].train
  batch = {k: jnp.asarray(getattr(split, k)[:32]) for k in "xyt"}
  new, _ = step(state, batch, jax.random.key(0))
  old, got = jax.device_get((params, new.params))
  np.testing.assert_array_equal(got["layers"][0]["kernel"],
                                old["layers"][0]["kernel"])
  np.testing.assert_array_equal(got["layers"][0]["bias"],
                                old["layers"][0]["bias"])
  assert not np.allclose(got["head"]["kernel"], old["head"]["kernel"])
  assert np.all(np.abs(got["gates"][0]) <= 6.0)
  assert np.any(np.abs(got["gates"][0]) == 6.0)  # clamped
  assert int(new.method_state["count"]) == 1


def test_refusals(stream, digits):
  with pytest.raises(ValueError, match="task-incremental"):
    methods.HAT().check(data.class_splits(digits, 3, task_sizes=(4, 3, 3)))
  plain = models.build_model("mlp", stream.input_shape, 10, hidden=(8,))
  with pytest.raises(ValueError, match="gated"):
    methods.HAT().init_state(plain, stream)
  with pytest.raises(ValueError, match="BatchNorm"):
    models.build_model("resnet32", (32, 32, 3), 10, head="gated")
  with pytest.raises(ValueError, match="smax"):
    methods.HAT(smax=0.5)
  with pytest.raises(ValueError, match="c"):
    methods.HAT(c=-1.0)
