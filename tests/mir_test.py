"""Maximally Interfered Retrieval (Aljundi et al. 2019): the interference
score, the retrieval and the loss against direct computations on random
inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import data, memory as mem, methods, models


def _setup(seed=0, n_mem=40, b=8):
  rng = np.random.default_rng(seed)
  model = models.build_model("mlp", (1, 2, 3), 5, hidden=(12,), seed=seed)
  method = methods.MIR(memory_size=n_mem, subsample=16, virtual_lr=0.5,
                       replay_size=4)
  buf = mem.reservoir_buffer(n_mem, (1, 2, 3))
  xs = rng.normal(size=(n_mem, 1, 2, 3)).astype(np.float32)
  ys = rng.integers(0, 5, n_mem).astype(np.int32)
  ts = rng.integers(0, 3, n_mem).astype(np.int32)
  buf = mem.reservoir_add(buf, xs, ys, ts, jax.random.key(0))
  batch = {"x": rng.normal(size=(b, 1, 2, 3)).astype(np.float32),
           "y": rng.integers(0, 5, b).astype(np.int32),
           "t": np.full(b, 2, np.int32)}
  return model, method, {"memory": buf}, batch


def _ce(model, params, x, y):
  """Per-example cross-entropy over all 5 classes, written out."""
  logits = model.apply(params, model.batch_stats, x)[0][0]
  return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(
      logits, y[:, None], axis=-1)[:, 0]


def test_candidates_come_from_earlier_tasks_only():
  model, method, s, batch = _setup()
  out = method.batch_fn(s, batch, jax.random.key(3), (0, 1))
  w, t = np.asarray(out["cand_w"]), np.asarray(out["cand_t"])
  assert out["cand_x"].shape == (16, 1, 2, 3)
  assert np.all(t[w > 0] != 2) and w.sum() == 16  # 40 slots, ~2/3 allowed
  for k in "xyt":
    np.testing.assert_array_equal(out[k], batch[k])
  with pytest.raises(ValueError, match="one device"):
    method.batch_fn(s, batch, jax.random.key(3), (0, 2))


def test_interference_and_loss_against_a_direct_computation():
  model, method, s, batch = _setup(seed=1)
  out = method.batch_fn(s, batch, jax.random.key(5), (0, 1))
  masks = np.ones((3, 5), bool)
  total, (terms, _) = method.loss_fn(model)(
      model.params, model.batch_stats, s, out, masks, jax.random.key(0))
  # The virtual step on the incoming batch's mean loss, by hand.
  p = model.params
  g = jax.grad(lambda q: jnp.mean(_ce(model, q, batch["x"], batch["y"])))(p)
  virtual = jax.tree.map(lambda a, b: a - 0.5 * b, p, g)
  cx, cy = np.asarray(out["cand_x"]), np.asarray(out["cand_y"])
  score = np.asarray(_ce(model, virtual, cx, cy) - _ce(model, p, cx, cy))
  np.testing.assert_allclose(
      methods.mir.interference(lambda q, c: _ce(model, q, *c), p, virtual,
                               (cx, cy)), score, rtol=1e-5, atol=1e-6)
  top = np.argsort(-score)[:4]  # the 4 most interfered
  want_in = float(np.mean(_ce(model, p, batch["x"], batch["y"])))
  want_mir = float(np.mean(_ce(model, p, cx[top], cy[top])))
  assert float(terms["ce"]) == pytest.approx(want_in, rel=1e-5)
  assert float(terms["ce_mir"]) == pytest.approx(want_mir, rel=1e-5)
  assert float(total) == pytest.approx(want_in + want_mir, rel=1e-5)


def test_a_batch_larger_than_the_candidates_replays_each_once():
  # replay_size=0 means the batch size (20), more than the 16 candidates:
  # each candidate is replayed once (the top 16), none repeated.
  model, _, s, batch = _setup(seed=3, b=20)
  method = methods.MIR(memory_size=40, subsample=16, virtual_lr=0.5)
  out = method.batch_fn(s, batch, jax.random.key(7), (0, 1))
  _, (terms, _) = method.loss_fn(model)(
      model.params, model.batch_stats, s, out, np.ones((3, 5), bool),
      jax.random.key(0))
  cx, cy = np.asarray(out["cand_x"]), np.asarray(out["cand_y"])
  assert float(terms["ce_mir"]) == pytest.approx(
      float(np.mean(_ce(model, model.params, cx, cy))), rel=1e-5)
  with pytest.raises(ValueError, match="subsample=50 exceeds memory_size=40"):
    methods.MIR(memory_size=40, subsample=50)


def test_an_empty_memory_replays_nothing():
  model, method, _, batch = _setup(seed=2)
  s = {"memory": mem.reservoir_buffer(40, (1, 2, 3))}
  out = method.batch_fn(s, batch, jax.random.key(0), (0, 1))
  total, (terms, _) = method.loss_fn(model)(
      model.params, model.batch_stats, s, out, np.ones((3, 5), bool),
      jax.random.key(0))
  assert float(terms["ce_mir"]) == 0.0
  assert float(total) == pytest.approx(float(terms["ce"]))


def test_mir_runs_on_a_stream(digits):
  import optax
  from cljax import train
  stream = data.class_splits(digits, 3, task_sizes=(4, 3, 3))
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,))
  r = train.run_stream(stream, methods.MIR(60, subsample=20), model,
                       optax.sgd(0.1), epochs=1, batch_size=10,
                       progress=False)
  acc = np.asarray(r["accuracy_matrix"])
  assert acc[-1, 0] > 0.1  # replay keeps some of the first task's classes


def test_bad_hyperparameters_are_refused():
  for kw, match in [(dict(subsample=0), "subsample"),
                    (dict(subsample=2.5), "subsample"),
                    (dict(virtual_lr=0.0), "virtual_lr"),
                    (dict(memory_size=0), "memory_size"),
                    (dict(subsample=50, replay_size=100), "replay_size")]:
    with pytest.raises(ValueError, match=match):
      methods.MIR(**kw)
