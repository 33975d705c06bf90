import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import regularizers as reg

# A small softmax-regression / MLP model on random data; references are
# plain Python loops over examples in float64 numpy where possible.


def _mlp(key, d=5, h=4, c=3):
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (d, h)) * 0.5, "b1": jnp.zeros(h),
          "w2": jax.random.normal(k2, (h, c)) * 0.5, "b2": jnp.full(c, 0.1)}


def _logits(p, x):
  return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def _nll(p, x, y):
  return -jax.nn.log_softmax(_logits(p, x))[y]


def _data(n, d=5, c=3, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, d)).astype(np.float32),
          rng.integers(0, c, n).astype(np.int32))


def _assert_tree_close(got, want):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-8), got, want)


def _loop_mean(fn, n):
  outs = [fn(i) for i in range(n)]
  return jax.tree.map(lambda *a: np.mean(np.stack(a), 0), *outs)


@pytest.mark.parametrize("n,chunk", [(1, None), (7, 3), (16, 16), (33, 4),
                                     (10, 100)])
def test_empirical_fisher_against_loop(n, chunk):
  params = _mlp(jax.random.key(n))
  xs, ys = _data(n, seed=n)
  got = jax.jit(lambda p: reg.fisher_diagonal(_nll, p, xs, ys,
                                              chunk_size=chunk))(params)
  g = jax.grad(_nll)
  want = _loop_mean(lambda i: jax.tree.map(np.square, g(params, xs[i], ys[i])),
                    n)
  _assert_tree_close(got, want)


def test_empirical_fisher_is_not_squared_batch_gradient():
  params = _mlp(jax.random.key(0))
  xs, ys = _data(32)
  f = reg.fisher_diagonal(_nll, params, xs, ys)
  batch = jax.grad(lambda p: jnp.mean(jax.vmap(_nll, (None, 0, 0))(
      p, xs, ys)))(params)
  assert not np.allclose(f["w1"], np.square(batch["w1"]))


def test_expected_fisher_against_loop():
  params = _mlp(jax.random.key(1))
  xs, ys = _data(9, seed=1)
  got = reg.fisher_diagonal(_nll, params, xs, ys, estimator="expected",
                            num_classes=3, chunk_size=4)
  g = jax.grad(_nll)

  def one(i):
    p = np.asarray(jax.nn.softmax(_logits(params, xs[i])))
    return jax.tree.map(lambda *a: sum(pc * np.square(ac)
                                       for pc, ac in zip(p, a)),
                        *[g(params, xs[i], c) for c in range(3)])

  want = _loop_mean(one, 9)
  _assert_tree_close(got, want)


def test_predicted_fisher_against_loop():
  # Each example's gradient at the label the model predicts (its argmax),
  # whatever the data's label.
  params = _mlp(jax.random.key(6))
  xs, ys = _data(11, seed=6)
  got = reg.fisher_diagonal(_nll, params, xs, ys, estimator="predicted",
                            num_classes=3, chunk_size=4)
  g = jax.grad(_nll)
  pred = [int(np.argmax(np.asarray(_logits(params, x)))) for x in xs]
  assert pred != ys.tolist()  # differs from the empirical Fisher's labels
  want = _loop_mean(lambda i: jax.tree.map(np.square, g(params, xs[i],
                                                        pred[i])), 11)
  _assert_tree_close(got, want)
  with pytest.raises(ValueError, match="num_classes"):
    reg.fisher_diagonal(_nll, params, xs, ys, estimator="predicted")


def test_sampled_fisher_converges_to_expected():
  params = _mlp(jax.random.key(2))
  xs, _ = _data(1, seed=2)
  xs = np.repeat(xs, 4000, 0)  # one input, many label samples
  ys = np.zeros(4000, np.int32)
  exp = reg.fisher_diagonal(_nll, params, xs[:1], ys[:1], estimator="expected",
                            num_classes=3)
  smp = reg.fisher_diagonal(_nll, params, xs, ys, estimator="sampled",
                            num_classes=3, key=jax.random.key(0),
                            chunk_size=1000)
  np.testing.assert_allclose(smp["w2"], exp["w2"], rtol=0.1, atol=1e-3)


def test_per_example_keys_draw_what_one_key_does():
  # A device's share of a sample carries its examples' keys: fold_in(key, i)
  # for example i, so a split sample draws the whole one's labels.
  params = _mlp(jax.random.key(4))
  xs, ys = _data(7, seed=4)
  key = jax.random.key(5)
  keys = reg.example_keys(key, 7)
  np.testing.assert_array_equal(
      jax.random.key_data(keys),
      np.stack([jax.random.key_data(jax.random.fold_in(key, i))
                for i in range(7)]))
  fisher = lambda k, n: reg.fisher_diagonal(
      _nll, params, xs[:n], ys[:n], estimator="sampled", num_classes=3,
      key=k, chunk_size=3)
  jax.tree.map(np.testing.assert_array_equal, fisher(keys, 7),
               fisher(key, 7))
  # The first 4 and the last 3 examples with their own keys: weighted by
  # their counts, their means make the whole sample's.
  part = lambda sl: reg.fisher_diagonal(
      _nll, params, xs[sl], ys[sl], estimator="sampled", num_classes=3,
      key=keys[sl])
  jax.tree.map(lambda a, b, w: np.testing.assert_allclose(
      (4 * a + 3 * b) / 7, w, rtol=1e-5), part(slice(0, 4)),
               part(slice(4, 7)), fisher(key, 7))
  with pytest.raises(ValueError, match="one per example"):
    fisher(keys[:5], 7)


def test_fisher_bad_input():
  params = _mlp(jax.random.key(0))
  xs, ys = _data(4)
  with pytest.raises(ValueError, match="chunk_size"):
    reg.fisher_diagonal(_nll, params, xs, ys, chunk_size=0)
  with pytest.raises(ValueError, match="estimator"):
    reg.fisher_diagonal(_nll, params, xs, ys, estimator="minibatch")
  with pytest.raises(ValueError, match="num_classes"):
    reg.fisher_diagonal(_nll, params, xs, ys, estimator="expected")
  with pytest.raises(ValueError, match="key"):
    reg.fisher_diagonal(_nll, params, xs, ys, estimator="sampled",
                        num_classes=3)
  # (N, 1) labels failed in the per-example indexing before.
  for bad in (ys[:2], ys[:, None]):
    with pytest.raises(ValueError, match=r"ys must have shape \(4,\)"):
      reg.fisher_diagonal(_nll, params, xs, bad)


def test_mas_importance_against_loop():
  params = _mlp(jax.random.key(3))
  xs, _ = _data(11, seed=3)
  got = reg.mas_importance(_logits, params, xs, chunk_size=5)
  g = jax.grad(lambda p, x: jnp.sum(_logits(p, x) ** 2))
  want = _loop_mean(lambda i: jax.tree.map(np.abs, g(params, xs[i])), 11)
  _assert_tree_close(got, want)
  # Finite-difference check of the inner gradient on one coordinate.
  eps = 1e-3
  f = lambda p: float(jnp.sum(_logits(p, xs[0]) ** 2))
  d = jax.tree.map(jnp.zeros_like, params)
  d["w2"] = d["w2"].at[1, 2].set(eps)
  plus = jax.tree.map(lambda a, b: a + b, params, d)
  minus = jax.tree.map(lambda a, b: a - b, params, d)
  fd = (f(plus) - f(minus)) / (2 * eps)
  assert float(g(params, xs[0])["w2"][1, 2]) == pytest.approx(fd, rel=1e-2)

