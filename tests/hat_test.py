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


def test_one_train_step_against_the_algorithm_written_out():
  # One step of task 2 on a gated MLP, by hand: the batch's scale s (eq. 3,
  # step 3 of an epoch of 10), CE over the task's classes + c R (R against
  # the cumulative gates), the weights' gradients conditioned by
  # 1 - min(a_l[i], a_{l-1}[j]) (biases by 1 - a_l), the gate embeddings'
  # compensated as the authors' code does (cosh clamped at 50), plain SGD,
  # then the embeddings clamped to [-6, 6].
  rng = np.random.default_rng(0)
  smax, lr, c = 400.0, 0.05, 0.75
  method = methods.HAT(c=c, smax=smax, lr=lr)
  model = models.build_model("mlp", (2, 3, 1), 6, hidden=(5, 4),
                             head="gated")
  prev = [rng.uniform(size=5).astype(np.float32),
          rng.uniform(size=4).astype(np.float32)]
  s = {**method.init_state(model, type("S", (), {"num_tasks": 2})),
       "previous": {0: jnp.asarray(prev[0]), 1: jnp.asarray(prev[1])},
       "n_train": jnp.asarray(80, jnp.int32),
       "count": jnp.asarray(13, jnp.int32)}
  params = {**model.params, "gates": {
      i: jnp.asarray(rng.normal(size=n) * 3, jnp.float32)
      for i, n in ((0, 5), (1, 4))}}
  opt = method.optimizer(None, params)
  masks = np.tile([0, 0, 0, 1, 1, 1], (2, 1)).astype(bool)
  step = jax.jit(train.make_train_step(
      method.loss_fn(model), opt,
      update_method_state=method.update_method_state,
      extra_args=method.extra_args, batch_fn=method.batch_fn))
  x = rng.normal(size=(8, 2, 3, 1)).astype(np.float32)
  y = rng.integers(3, 6, size=8).astype(np.int32)
  new, _ = step(train.init_train_state(params, {}, opt, s, masks),
                {"x": x, "y": y, "t": np.ones(8, np.int32)},
                jax.random.key(0))

  scale = 1 / smax + (smax - 1 / smax) * 3 / 9
  p = jax.device_get(params)

  def loss(p):
    h, gates = x.reshape(8, -1), []
    for i in range(2):
      a = jax.nn.sigmoid(scale * p["gates"][i])
      h = a * jax.nn.relu(h @ p["layers"][i]["kernel"] + p["layers"][i]["bias"])
      gates.append(a)
    z = (h @ p["head"]["kernel"] + p["head"]["bias"])[:, 3:]
    ce = jnp.mean(-jax.nn.log_softmax(z)[np.arange(8), y - 3])
    r = sum(jnp.sum(a * (1 - q)) for a, q in zip(gates, prev)) / sum(
        np.sum(1 - q) for q in prev)
    return ce + c * r

  g = jax.device_get(jax.grad(loss)(p))
  cond = [1 - prev[0][None], 1 - np.minimum(prev[1][None], prev[0][:, None])]
  for i in range(2):
    g["layers"][i]["kernel"] = g["layers"][i]["kernel"] * cond[i]
    g["layers"][i]["bias"] = g["layers"][i]["bias"] * (1 - prev[i])
    e = p["gates"][i]
    g["gates"][i] = g["gates"][i] * smax / scale * (np.cosh(np.clip(
        scale * e, -50, 50)) + 1) / (np.cosh(e) + 1)
  want = jax.tree.map(lambda a, b: a - lr * b, p, g)
  want["gates"] = {i: np.clip(e, -6, 6) for i, e in want["gates"].items()}
  assert np.any(np.abs(want["gates"][0]) == 6)  # the clamp is exercised
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6),
               jax.device_get(new.params), want)


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
  with pytest.raises(ValueError, match="one entry per gated layer"):
    attention_regularizer([jnp.ones(3)], [jnp.ones(3), jnp.ones(2)])
