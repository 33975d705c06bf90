import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax import regularizers as reg


def _tree(seed, shapes=((3, 4), (4,), (2, 2, 2))):
  rng = np.random.default_rng(seed)
  return {f"l{i}": jnp.asarray(rng.normal(size=s), jnp.float32)
          for i, s in enumerate(shapes)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ewc_penalty_against_numpy(seed):
  p, a = _tree(seed), _tree(seed + 10)
  f = jax.tree.map(jnp.abs, _tree(seed + 20))
  want = 0.5 * sum(np.sum(np.asarray(f[k], np.float64) *
                          (np.asarray(p[k], np.float64) - np.asarray(a[k])) ** 2)
                   for k in p)
  np.testing.assert_allclose(jax.jit(reg.ewc_penalty)(p, a, f), want,
                             rtol=1e-5)
  ones = jax.tree.map(jnp.ones_like, f)
  np.testing.assert_allclose(reg.l2_penalty(p, a), reg.ewc_penalty(p, a, ones),
                             rtol=1e-6)
  # Gradient: F * (theta - theta*)
  g = jax.grad(reg.ewc_penalty)(p, a, f)
  jax.tree.map(lambda gg, pp, aa, ff: np.testing.assert_allclose(
      gg, ff * (pp - aa), rtol=1e-5, atol=1e-7), g, p, a, f)
  jax.tree.map(lambda gg, cf: np.testing.assert_allclose(gg, cf, rtol=1e-5,
                                                         atol=1e-7),
               g, reg.ewc_penalty_grad(p, a, f))


def test_multi_ewc_penalty():
  p = _tree(0)
  anchors = [_tree(s) for s in (1, 2, 3)]
  fishers = [jax.tree.map(jnp.abs, _tree(s)) for s in (4, 5, 6)]
  stack = lambda ts: jax.tree.map(lambda *a: jnp.stack(a), *ts)
  active = jnp.array([1, 1, 0])
  got = reg.multi_ewc_penalty(p, stack(anchors), stack(fishers), active)
  want = sum(reg.ewc_penalty(p, a, f) for a, f in zip(anchors[:2], fishers[:2]))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # A wrong-length active, or anchors without the task axis: named (an
  # incompatible-shapes error and a bare vmap error before).
  with pytest.raises(ValueError, match="anchors must match params with a "
                     "leading task axis of 2"):
    reg.multi_ewc_penalty(p, stack(anchors), stack(fishers), active[:2])
  with pytest.raises(ValueError, match="anchors must match"):
    reg.multi_ewc_penalty(p, anchors[0], stack(fishers), active)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ewc_merge_equals_one_penalty_per_task(seed):
  # Folding tasks one by one gives the multi-task penalty's value and
  # gradient at random points, also where some Fisher entries are 0.
  rng = np.random.default_rng(seed)
  t = 4
  anchors = [_tree(seed * 10 + s) for s in range(t)]
  fishers = [jax.tree.map(lambda a: jnp.abs(a) * (rng.random(a.shape) < 0.6),
                          _tree(seed * 10 + 5 + s)) for s in range(t)]
  stack = lambda ts: jax.tree.map(lambda *a: jnp.stack(a), *ts)
  f = jax.tree.map(jnp.zeros_like, anchors[0])
  m, c = _tree(99), jnp.zeros(())
  merge = jax.jit(reg.ewc_merge)
  for k in range(t):
    f, m, c = merge(f, m, c, fishers[k], anchors[k])
    active = jnp.arange(t) <= k
    for point in (_tree(50 + k), anchors[k]):
      want_v, want_g = jax.value_and_grad(reg.multi_ewc_penalty)(
          point, stack(anchors), stack(fishers), active)
      got_v, got_g = jax.value_and_grad(
          lambda p: reg.ewc_penalty(p, m, f) + c)(point)
      np.testing.assert_allclose(got_v, want_v, rtol=1e-5, atol=1e-6)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(
          a, b, rtol=1e-5, atol=1e-6), got_g, want_g)


def test_tree_mismatch_is_rejected():
  p = _tree(0)
  with pytest.raises(ValueError, match="fisher"):
    reg.ewc_penalty(p, p, {"l0": p["l0"]})
  bad = dict(p, l1=jnp.zeros(5))
  with pytest.raises(ValueError, match="anchor"):
    reg.ewc_penalty(p, bad, p)


def test_online_ewc_and_si_updates():
  a, b = (jax.tree.map(jnp.abs, _tree(k)) for k in (0, 1))  # Fishers >= 0
  got = reg.online_ewc_update(a, b, 0.9)
  jax.tree.map(lambda g, x, y: np.testing.assert_allclose(g, 0.9 * x + y,
                                                          rtol=1e-6), got, a, b)
  for gamma in (-0.5, 2.0):  # (2.0 was accepted: a Fisher that grows)
    with pytest.raises(ValueError, match="gamma"):
      reg.online_ewc_update(a, b, gamma)
  omega, g, old, new = _tree(2), _tree(3), _tree(4), _tree(5)
  got = reg.si_accumulate(omega, g, jax.tree.map(np.subtract, new, old))
  jax.tree.map(lambda r, w, gg, o, n: np.testing.assert_allclose(
      r, w - gg * (n - o), rtol=1e-5, atol=1e-6), got, omega, g, old, new)
  big = reg.si_consolidate(omega, omega, new, old, 0.1)
  jax.tree.map(lambda r, w, n, o: np.testing.assert_allclose(
      r, w + w / ((n - o) ** 2 + 0.1), rtol=1e-5), big, omega, new, old)
  for xi in (-1.0, 0.0):  # (0 was accepted: an infinite importance)
    with pytest.raises(ValueError, match="xi"):
      reg.si_consolidate(omega, omega, new, old, xi)


def test_updates_never_broadcast_and_refuse_negative_fishers():
  # A (1, 4) leaf against (3, 4) broadcast: the state changed shape.
  a = _tree(0)
  one_row = {**a, "l0": a["l0"][:1]}
  calls = {
      "fisher_new": lambda: reg.online_ewc_update(jax.tree.map(jnp.abs, a),
                                                  one_row, 0.9),
      "grads": lambda: reg.si_accumulate(a, one_row, a),
      "delta": lambda: reg.si_accumulate(a, a, one_row),
      "task_start_params": lambda: reg.si_consolidate(a, a, a, one_row, 0.1),
      "new_fisher": lambda: reg.ewc_merge(
          jax.tree.map(jnp.abs, a), a, 0.0, a, a),
      "lam": lambda: reg.check_strength("lam", jnp.array([1.0, 2.0])),
  }
  for name, call in calls.items():
    with pytest.raises(ValueError, match=name):
      call()


def test_si_path_integral_is_exact_for_a_quadratic():
  """On L = 0.5 ||theta||^2 with tiny SGD steps, sum_t -g dtheta equals the
  loss decrease L(start) - L(end) (Zenke et al. 2017, eq. 3)."""
  theta = _tree(0)
  start = theta
  omega = jax.tree.map(jnp.zeros_like, theta)
  for _ in range(2000):
    g = theta
    new = jax.tree.map(lambda t, gg: t - 1e-3 * gg, theta, g)
    omega = reg.si_accumulate(omega, g, jax.tree.map(jnp.subtract, new,
                                                     theta))
    theta = new
  loss = lambda t: 0.5 * sum(jnp.sum(x ** 2) for x in jax.tree.leaves(t))
  total = sum(jnp.sum(w) for w in jax.tree.leaves(omega))
  np.testing.assert_allclose(total, loss(start) - loss(theta), rtol=2e-3)


@pytest.mark.parametrize("strength", [0.0, 0.7, 5.0])
def test_optax_form_matches_loss_form(strength):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(32, 6)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(32, 2)), jnp.float32)
  params0 = {"w": jnp.asarray(rng.normal(size=(6, 2)), jnp.float32),
             "b": jnp.zeros(2)}
  anchor = jax.tree.map(lambda a: a + 0.3, params0)
  fisher = {"w": jnp.asarray(rng.uniform(size=(6, 2)), jnp.float32),
            "b": jnp.asarray([0.5, 2.0])}
  task = lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

  opt = optax.adam(1e-2)
  total = lambda p: task(p) + strength * reg.ewc_penalty(p, anchor, fisher)
  p1, s1 = params0, opt.init(params0)
  chained = optax.chain(reg.add_quadratic_penalty(strength), optax.adam(1e-2))
  p2, s2 = params0, chained.init(params0)
  for _ in range(50):
    u, s1 = opt.update(jax.grad(total)(p1), s1, p1)
    p1 = optax.apply_updates(p1, u)
    u, s2 = chained.update(jax.grad(task)(p2), s2, p2, anchor=anchor,
                           importance=fisher)
    p2 = optax.apply_updates(p2, u)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6), p1, p2)


def test_optax_form_bad_input():
  with pytest.raises(ValueError, match="strength"):
    reg.add_quadratic_penalty(-1.0)
  t = reg.add_quadratic_penalty(1.0)
  p = _tree(0)
  with pytest.raises(ValueError, match="anchor"):
    t.update(p, t.init(p), p)


def test_negative_fisher_is_refused():
  # ewc_penalty used to return -6.0 for a negative Fisher.
  p = {"w": jnp.ones(4)}
  a = {"w": jnp.zeros(4)}
  for bad in (-jnp.ones(4), np.full(4, -1.0), jnp.array([1.0, jnp.nan, 0, 0])):
    with pytest.raises(ValueError, match="fisher must be finite and >= 0"):
      reg.ewc_penalty(p, a, {"w": bad})
    with pytest.raises(ValueError, match="fisher"):
      reg.ewc_penalty_grad(p, a, {"w": bad})


def test_penalty_gradient_never_broadcasts():
  # A (1, 4) Fisher used to broadcast against (3, 4) parameters.
  p = {"w": jnp.ones((3, 4))}
  with pytest.raises(ValueError, match="fisher must match params"):
    reg.ewc_penalty_grad(p, p, {"w": jnp.ones((1, 4))})
  with pytest.raises(ValueError, match="anchor must match params"):
    reg.ewc_penalty_grad(p, {"w": jnp.ones(4)}, p)
  with pytest.raises(ValueError, match="anchor"):
    reg.ewc_penalty(p, {"v": jnp.ones((3, 4))}, p)
  with pytest.raises(ValueError, match="anchor contains NaN"):
    reg.ewc_penalty(p, {"w": jnp.full((3, 4), jnp.nan)}, p)


@pytest.mark.parametrize("value", [jnp.array(-1.0), np.float64(-2.0),
                                   np.array(np.inf)])
def test_strengths_of_any_type_are_checked(value):
  with pytest.raises(ValueError, match="strength"):
    reg.add_quadratic_penalty(value)
  with pytest.raises(ValueError, match="gamma"):
    reg.online_ewc_update({"w": jnp.ones(2)}, {"w": jnp.ones(2)}, value)


@pytest.mark.parametrize("batch", [8, 32])
def test_lambda_convention_against_minibatch_squared_gradients(digits,
                                                               batch):
  # Our per-example (empirical) Fisher against the PyTorch libraries'
  # squared minibatch-mean gradient: E[g_bar^2] = E[g]^2 (1 - 1/B) +
  # E[g^2] / B, so on a trained model the ratio is close to B, never above.
  from cljax import data, methods, models, train
  from cljax.losses import masked_cross_entropy
  stream = data.class_splits(digits, 1)
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(32,))
  params = train.run_stream(stream, methods.FineTune(), model,
                            optax.adam(1e-2), epochs=10, batch_size=32,
                            progress=False)["final_state"].params
  logits = lambda p, x: model.apply(p, model.batch_stats, x)[0][0]
  task = stream.tasks[0].train
  xs, ys = task.x[:512], task.y[:512]
  ours = reg.fisher_diagonal(
      lambda p, x, y: masked_cross_entropy(logits(p, x[None]), y[None])[0],
      params, xs, ys)
  mean_loss = lambda p, x, y: jnp.mean(masked_cross_entropy(logits(p, x), y))
  grads = [jax.grad(mean_loss)(params, xs[i:i + batch], ys[i:i + batch])
           for i in range(0, len(xs), batch)]
  theirs = jax.tree.map(lambda *g: jnp.mean(jnp.stack([a ** 2 for a in g]),
                                            axis=0), *grads)
  total = lambda t: float(sum(jnp.sum(a) for a in jax.tree.leaves(t)))
  ratio = total(ours) / total(theirs)
  assert batch / 2 < ratio <= batch * 1.05, ratio
