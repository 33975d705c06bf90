"""Gradient-based Sample Selection, greedy (Aljundi et al. 2019): the
insertion rule against its closed forms and Monte Carlo frequencies, the
similarities against plain loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from cljax import memory as mem, methods, models


def _buffer(k=6, filled=0):
  buf = mem.reservoir_buffer(k, (2,))
  return buf._replace(
      x=buf.x.at[:filled].set(jnp.arange(filled * 2.0).reshape(-1, 2)),
      y=buf.y.at[:filled].set(jnp.arange(filled)),
      seen=jnp.asarray(filled, jnp.int32))


def test_cosine_max_against_numpy():
  rng = np.random.default_rng(0)
  g, ref = rng.normal(size=(5, 7)), rng.normal(size=(4, 7))
  valid = np.array([True, False, True, True])
  cos = (g @ ref.T) / np.linalg.norm(g, axis=1)[:, None] / np.linalg.norm(
      ref, axis=1)[None]
  np.testing.assert_allclose(mem.cosine_max(g, ref, valid),
                             cos[:, valid].max(axis=1), rtol=1e-5)


def test_filling_takes_the_next_slots_and_drops_the_overflow():
  x = np.full((4, 2), 9.0, np.float32)
  y, t = np.arange(10, 14), np.zeros(4, np.int32)
  sims = np.array([0.3, -0.2, 0.5, 0.9], np.float32)
  buf, scores = mem.gss_insert(_buffer(), jnp.zeros(6), x, y, t, 0.0, sims,
                               jax.random.key(0))
  assert int(buf.seen) == 4
  np.testing.assert_allclose(scores[:4], 0.1)  # into an empty buffer
  buf, scores = mem.gss_insert(buf, scores, x, y + 4, t, 0.0, sims,
                               jax.random.key(1))
  assert int(buf.seen) == 6  # two places left: the rest is dropped
  np.testing.assert_array_equal(buf.y, [10, 11, 12, 13, 14, 15])
  np.testing.assert_allclose(scores[4:], sims[:2])


def test_a_full_buffer_changes_only_for_an_interfering_batch():
  buf = _buffer(filled=6)
  scores = jnp.array([0.9, 0.1, 0.5, -0.3, 0.7, 0.2])
  x, y = np.full((2, 2), -1.0, np.float32), np.array([50, 51])
  sims = np.array([-0.5, -0.5], np.float32)
  same = mem.gss_insert(buf, scores, x, y, np.zeros(2, np.int32), 0.2, sims,
                        jax.random.key(0))
  np.testing.assert_array_equal(same[0].y, buf.y)
  # Monte Carlo over keys: slot 3 (the lowest score) is never a candidate;
  # slot c is replaced with probability P(drawn) * b / (a + b).
  p = (scores - scores.min()) / (scores.max() - scores.min() + 0.01)
  a, b = (sims[0] + 1) / 2, (np.asarray(scores) + 1) / 2
  counts = np.zeros(6)
  trials = 4000
  insert = jax.jit(lambda k: mem.gss_insert(
      buf, scores, x[:1], y[:1], np.zeros(1, np.int32), -0.1, sims[:1], k))
  for k in jax.random.split(jax.random.key(1), trials):
    new, new_scores = insert(k)
    changed = np.flatnonzero(np.asarray(new.y) != np.asarray(buf.y))
    assert len(changed) <= 1
    if len(changed):
      counts[changed[0]] += 1
      assert float(new_scores[changed[0]]) == pytest.approx(-0.5)
  want = np.asarray(p / p.sum()) * b / (a + b)
  assert counts[3] == 0
  np.testing.assert_allclose(counts / trials, want, atol=0.025)


def test_slots_at_the_minimum_score_are_drawn_uniformly():
  # Every score equal (a first fill): the draw weights are all 0, and the
  # slots replaced must still be spread over the whole buffer.
  buf, scores = _buffer(filled=6), jnp.full((6,), 0.1)
  x, y = np.full((2, 2), -1.0, np.float32), np.array([50, 51])
  insert = jax.jit(lambda k: mem.gss_insert(
      buf, scores, x, y, np.zeros(2, np.int32), -0.1,
      np.array([-0.9, -0.9], np.float32), k)[0].y)
  hit = np.zeros(6)
  for k in jax.random.split(jax.random.key(2), 300):
    hit += np.asarray(insert(k)) != np.asarray(buf.y)
  assert np.all(hit > 0.5 * hit.mean()), hit


def test_gradients_against_a_loop_of_per_example_gradients():
  model = models.build_model("mlp", (1, 2, 3), 4, hidden=(5,), seed=0)
  method = methods.GSS(memory_size=20)
  method._model = model
  rng = np.random.default_rng(2)
  x = rng.normal(size=(3, 2, 1, 2, 3)).astype(np.float32)
  y = rng.integers(0, 4, (3, 2)).astype(np.int32)
  t = np.zeros((3, 2), np.int32)
  w = np.array([[1, 1], [1, 0], [0, 0]], np.float32)
  masks = np.ones((1, 4), bool)
  got = method._grads(model.params, model.batch_stats, x, y, t, masks, w)

  def ce(p, xi, yi):
    logits = model.apply(p, model.batch_stats, xi[None])[0][0][0]
    return jax.nn.logsumexp(logits) - logits[yi]

  for r in range(3):
    want = sum((w[r, j] * ravel_pytree(jax.grad(ce)(
        model.params, x[r, j], y[r, j]))[0] for j in range(2)),
               np.zeros(got.shape[1])) / max(w[r].sum(), 1.0)
    np.testing.assert_allclose(got[r], want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("capacity,filled,m,bs", [
    (20, 13, 2, 10),  # one full memory batch and a partial one
    (20, 7, 10, 10),  # one partial batch only
    (12, 5, 2, 4),  # a full batch and a partial one
    (12, 12, 2, 4)])  # full: mem_strength batches of mem_batch_size
def test_step_similarities_against_a_loop_over_memory_batches(
    monkeypatch, capacity, filled, m, bs):
  # What the step hands to gss_insert, against the authors' procedure
  # written as a loop: consecutive chunks of mem_batch_size of the shuffled
  # stored examples, at most mem_strength of them, the last one smaller;
  # the largest cosine between a gradient and the chunks' gradients.
  from cljax import train
  model = models.build_model("mlp", (1, 2, 3), 4, hidden=(5,), seed=0)
  method = methods.GSS(memory_size=capacity, mem_strength=m,
                       mem_batch_size=bs)
  method._model = model
  rng = np.random.default_rng(filled)
  mx = rng.normal(size=(capacity, 1, 2, 3)).astype(np.float32)
  my = rng.integers(0, 4, capacity).astype(np.int32)
  buf = mem.reservoir_buffer(capacity, (1, 2, 3))._replace(
      x=jnp.asarray(mx), y=jnp.asarray(my),
      seen=jnp.asarray(filled, jnp.int32))
  x = rng.normal(size=(4, 1, 2, 3)).astype(np.float32)
  y = rng.integers(0, 4, 4).astype(np.int32)
  batch = {"x": x, "y": y, "t": np.zeros(4, np.int32),
           "memory_logits": np.zeros((0, 4), np.float32)}
  key = jax.random.key(filled)
  seen = {}
  insert = mem.gss_insert

  def spy(buffer, scores, x, y, t, batch_sim, item_sims, key):
    seen.update(batch_sim=batch_sim, item_sims=item_sims)
    return insert(buffer, scores, x, y, t, batch_sim, item_sims, key)

  monkeypatch.setattr(mem, "gss_insert", spy)
  info = train.StepInfo(batch, {}, key, lambda a: a, (0, 1),
                        np.ones((1, 4), bool), model.batch_stats, None)
  method.update_method_state(  # (eagerly: the spy keeps the values)
      {"memory": buf, "scores": jnp.full((capacity,), 0.1)}, model.params,
      model.params, None, info)

  def grad(xs, ys):
    def loss(p):
      logits = model.apply(p, model.batch_stats, xs)[0][0]
      return jnp.mean(jax.nn.logsumexp(logits, -1) -
                      logits[np.arange(len(ys)), ys])
    return np.asarray(ravel_pytree(jax.grad(loss)(model.params))[0],
                      np.float64)

  # The step's shuffle: a Gumbel top-k of the filled slots (its first key).
  total = min(m * bs, capacity)
  order = np.asarray(jax.lax.top_k(
      jax.random.gumbel(jax.random.split(key)[0], (capacity,)) +
      jnp.where(jnp.arange(capacity) < filled, 0.0, -jnp.inf), total)[1])
  order = order[:min(filled, total)]
  chunks = [grad(mx[order[i:i + bs]], my[order[i:i + bs]])
            for i in range(0, len(order), bs)][:m]
  best = lambda g: max(g @ c / np.linalg.norm(g) / np.linalg.norm(c)
                       for c in chunks)
  np.testing.assert_allclose(seen["batch_sim"], best(grad(x, y)),
                             rtol=1e-4, atol=1e-6)
  if filled < capacity:  # the full buffer reads them only if interfering
    np.testing.assert_allclose(
        seen["item_sims"], [best(grad(x[i:i + 1], y[i:i + 1]))
                            for i in range(4)], rtol=1e-4, atol=1e-6)


def test_insert_refuses_inputs_of_other_shapes():
  buf = _buffer(4, 1)
  x, y, t = jnp.zeros((2, 2)), jnp.zeros(2, jnp.int32), jnp.zeros(
      2, jnp.int32)
  ok = dict(scores=jnp.zeros(4), x=x, y=y, t=t, batch_sim=jnp.float32(-1),
            item_sims=jnp.zeros(2))
  for name, bad in [("scores", jnp.zeros(6)), ("x", jnp.zeros((2, 3))),
                    ("t", jnp.zeros(3, jnp.int32)),
                    ("item_sims", jnp.zeros((2, 1))),
                    ("batch_sim", jnp.zeros(1))]:
    with pytest.raises(ValueError, match=f"{name} must have shape"):
      mem.gss_insert(buf, **{**ok, name: bad}, key=jax.random.key(0))
  mem.gss_insert(buf, **{**ok, "scores": np.zeros(4)},  # NumPy scores
                 key=jax.random.key(0))
  with pytest.raises(ValueError, match="reference must have shape"):
    mem.cosine_max(jnp.ones((2, 3)), jnp.ones((4, 5)), jnp.ones(4, bool))


def test_bad_hyperparameters_are_refused():
  for kw, match in [(dict(mem_strength=0), "mem_strength"),
                    (dict(mem_batch_size=1.5), "mem_batch_size"),
                    (dict(memory_size=0), "memory_size")]:
    with pytest.raises(ValueError, match=match):
      methods.GSS(**kw)
