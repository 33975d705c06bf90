"""Riemannian Walk (Chaudhry et al. 2018) against a plain NumPy loop of the
paper's equations 6-8, on random steps, and its empirical Fisher against a
loop of single-example gradients."""

import jax
import numpy as np
import optax
import pytest

from cljax import data, methods, models, regularizers, train
from cljax.methods._base import TaskContext
from cljax.train import StepInfo


def _tree(rng, scale=1.0):
  return {"a": (scale * rng.normal(size=(3, 4))).astype(np.float32),
          "b": (scale * rng.normal(size=(5,))).astype(np.float32)}


def test_pieces_against_numpy():
  rng = np.random.default_rng(0)
  f, sq, s, w, p, p0 = (_tree(rng) for _ in range(6))
  sq = {k: np.abs(v) for k, v in sq.items()}
  f = {k: np.abs(v) for k, v in f.items()}
  got = regularizers.rwalk_fisher(f, sq, 4.0, 0.9)
  score = regularizers.rwalk_score_step(s, w, f, p, p0, 1e-3)
  norm = regularizers.minmax_normalise(p)
  lo = min(a.min() for a in p.values())
  hi = max(a.max() for a in p.values())
  for k in f:
    np.testing.assert_allclose(got[k], 0.9 * sq[k] / 4 + 0.1 * f[k],
                               rtol=1e-6)
    np.testing.assert_allclose(score[k], s[k] + np.maximum(
        0, w[k] / (0.5 * f[k] * (p[k] - p0[k]) ** 2 + 1e-3)), rtol=1e-5)
    np.testing.assert_allclose(norm[k], (p[k] - lo) / (hi - lo), rtol=1e-6,
                               atol=1e-7)
  constant = regularizers.minmax_normalise({"a": np.full((2,), 3.0)})
  np.testing.assert_array_equal(constant["a"], 0.0)
  for call, match in [
      (lambda: regularizers.rwalk_fisher(f, sq, 0.0, 0.9), "steps"),
      (lambda: regularizers.rwalk_fisher(f, sq, 4.0, 1.5), "alpha"),
      (lambda: regularizers.rwalk_fisher(f, {"a": sq["a"]}, 4.0, 0.9),
       "window_fisher must match fisher"),
      (lambda: regularizers.rwalk_score_step(s, w, f, p, {"a": p0["a"]},
                                             1e-3), "window_start"),
      (lambda: regularizers.rwalk_score_step(s, w, f, p, p0, 0.0), "eps"),
      (lambda: regularizers.minmax_normalise({}), "at least one array")]:
    with pytest.raises(ValueError, match=match):
      call()


def _reference(tasks, lam, alpha, eps, every, theta0):
  """The paper's RWalk, a plain loop over steps: ``tasks`` is a list of
  tasks, each a list of (grad, new params) steps from ``theta0``. Returns
  the importance F^ + s^ and the anchor after the last task."""
  keys = list(theta0)
  zero = {k: np.zeros_like(theta0[k], np.float64) for k in keys}
  fisher, score = dict(zero), dict(zero)  # the Fisher starts at 0
  theta = {k: theta0[k].astype(np.float64) for k in keys}
  for t, steps in enumerate(tasks):
    task_score, omega, sq = dict(zero), dict(zero), dict(zero)
    start, n = dict(theta), 0

    def close():
      nonlocal omega, sq, start, n
      for k in keys:  # the score with the Fisher as it was, then the Fisher
        task_score[k] = task_score[k] + np.maximum(0.0, omega[k] / (
            0.5 * fisher[k] * (theta[k] - start[k]) ** 2 + eps))
        fisher[k] = alpha * sq[k] / n + (1 - alpha) * fisher[k]
      omega, sq, start, n = dict(zero), dict(zero), dict(theta), 0

    for grad, new in steps:
      for k in keys:
        omega[k] = omega[k] - grad[k] * (new[k] - theta[k])
        sq[k] = sq[k] + grad[k] ** 2
      theta = {k: new[k].astype(np.float64) for k in keys}
      n += 1
      if n == every:
        close()
    if n:
      close()
    score = task_score if t == 0 else {
        k: (score[k] + task_score[k]) / 2 for k in keys}

  def mm(tree):  # over every parameter together
    lo = min(a.min() for a in tree.values())
    hi = max(a.max() for a in tree.values())
    return {k: (a - lo) / (hi - lo) for k, a in tree.items()}
  f_hat, s_hat = mm(fisher), mm(score)
  return {k: f_hat[k] + s_hat[k] for k in keys}, theta


@pytest.mark.parametrize("form", ["transform", "loss"])
def test_state_after_three_tasks_matches_a_loop_of_the_equations(form):
  # (The authors' squared batch gradients as the batches' Fisher: the
  # steps' gradients here are random trees, with no model to take
  # per-example gradients of; the empirical Fisher has its own test.)
  rng = np.random.default_rng(1)
  theta0 = _tree(rng)
  method = methods.RWalk(lam=2.0, alpha=0.8, eps=1e-2, update_every=3,
                         fisher="minibatch", form=form)

  class Model:  # what init_state reads
    params = theta0
  s = method.init_state(Model, None)
  update = jax.jit(lambda s, old, new, g, upd: method.update_method_state(
      s, old, new, g, StepInfo({}, {}, None, lambda x: x, (0, 1),
                               updates=upd)))
  tasks, theta = [], theta0
  for t, n_steps in enumerate((7, 5, 4)):  # partial last windows
    steps = []
    for _ in range(n_steps):
      grad, new = _tree(rng), {k: v + _tree(rng, 0.1)[k]
                               for k, v in theta.items()}
      steps.append((grad, new))
      # The step hands the method the loss's gradient: in the loss form
      # that includes the penalty's, which the method takes back out.
      seen = grad if form == "transform" else jax.tree.map(
          np.add, grad, method.penalty_grad(theta, s))
      s = update(s, theta, new, seen, jax.tree.map(np.subtract, new, theta))
      theta = new
    tasks.append(steps)
    s = method.on_task_end(TaskContext(t, None, None, theta, {}, s, None))
  importance, anchor = _reference(tasks, 2.0, 0.8, 1e-2, 3, theta0)
  for k in theta0:
    np.testing.assert_allclose(s["importance"][k], importance[k], rtol=2e-4,
                               atol=2e-5)
    np.testing.assert_allclose(s["anchor"][k], anchor[k], rtol=1e-6)
  # L = CE + lam * sum I (theta - anchor)^2
  moved = _tree(rng)
  want = 2.0 * sum(np.sum(importance[k] * (moved[k] - anchor[k]) ** 2)
                   for k in theta0)
  np.testing.assert_allclose(method.penalty(moved, s), want, rtol=1e-4)


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_the_empirical_fisher_is_the_mean_of_per_example_squares(model_name):
  # Each step adds the batch's mean squared per-example gradient of the
  # (masked) cross-entropy at the parameters before the step: against a
  # loop of single-example gradients.
  rng = np.random.default_rng(3)
  model = models.build_model(model_name, (8, 8, 1), 6, hidden=(7,), seed=1)
  method = methods.RWalk(update_every=100, chunk_size=3)
  s = method.init_state(model, None)
  masks = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  old = model.params
  total = jax.tree.map(np.zeros_like, old)
  for step in range(2):
    x = rng.normal(size=(5, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 6 if step else 3, 5).astype(np.int32)
    t = np.full(5, step, np.int32)
    new = jax.tree.map(lambda p: p + 0.01, old)
    s = method.update_method_state(
        s, old, new, jax.tree.map(np.zeros_like, old), StepInfo(
            {"x": x, "y": y, "t": t}, {}, None, lambda a: a, (0, 1), masks,
            model.batch_stats, jax.tree.map(np.subtract, new, old)))

    def ce(p, i):
      logits = model.apply(p, model.batch_stats, x[i:i + 1])[0][0][0]
      logits = np.where(masks[step], 0, -np.inf) + logits
      return jax.nn.logsumexp(logits) - logits[y[i]]

    for i in range(5):
      total = jax.tree.map(lambda a, g: a + np.square(g) / 5, total,
                           jax.grad(ce)(old, i))
    old = new
  assert int(s["window_steps"]) == 2
  jax.tree.map(lambda got, want: np.testing.assert_allclose(
      got, want, rtol=1e-4, atol=1e-7), s["window_fisher"], total)


def test_the_forgetting_intransigence_trade_off(digits):
  # Permuted digits (the network is shared by every task): the penalty
  # keeps the first task better than fine-tuning does, and a larger lam
  # learns the last task less well (the paper's intransigence).
  stream = data.permuted(digits, 3)
  acc = {}
  for method in (methods.FineTune(), methods.RWalk(lam=1.0),
                 methods.RWalk(lam=3.0)):
    model = models.build_model("mlp", stream.input_shape, 10, hidden=(32,))
    acc[getattr(method, "lam", 0.0)] = np.asarray(train.run_stream(
        stream, method, model, optax.sgd(0.1), epochs=2, batch_size=32,
        progress=False)["accuracy_matrix"])
  assert acc[1.0][-1, 0] > acc[0.0][-1, 0] + 0.05, acc
  assert acc[0.0][-1, -1] > acc[1.0][-1, -1] > acc[3.0][-1, -1], acc


def test_bad_hyperparameters_are_refused():
  for kw, match in [(dict(lam=-1.0), "lam"), (dict(alpha=0.0), "alpha"),
                    (dict(alpha=1.5), "alpha"), (dict(eps=0.0), "eps"),
                    (dict(update_every=0), "update_every"),
                    (dict(update_every=2.5), "update_every"),
                    (dict(update_every=True), "update_every"),
                    (dict(eps="1"), "eps"),
                    (dict(fisher="batch"), "fisher must be"),
                    (dict(chunk_size=0), "chunk_size")]:
    with pytest.raises(ValueError, match=match):
      methods.RWalk(**kw)
