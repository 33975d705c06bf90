"""The rehearsal methods' memories and losses, against independent
computations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cljax import data, memory, methods, models, train

from exemplars_test import _herding_loop


@pytest.fixture(scope="module")
def stream(digits):
  return data.class_splits(digits, 5, val_fraction=0.1)


def _trained(stream, method, epochs=1):
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(32,))
  res = train.run_stream(stream, method, model, optax.sgd(0.05, momentum=0.9),
                         epochs=epochs, batch_size=32, progress=False)
  return model, res


@pytest.mark.parametrize("budget,per_class", [("total", 0), ("per_class", 9)])
def test_exemplar_memory_is_class_balanced_herding(stream, budget, per_class):
  model, res = _trained(stream, methods.ER(100, budget=budget,
                                           per_class=per_class))
  mem = res["final_state"].method_state["memory"]
  valid = np.asarray(mem.valid)
  counts = np.bincount(np.asarray(mem.y)[valid], minlength=10)
  want = 100 // 10 if budget == "total" else per_class
  assert counts.tolist() == [want] * 10
  # The last task's exemplars are its classes' herding selection under the
  # final parameters, in order.
  state = res["final_state"]
  task = stream.tasks[-1]
  for c in task.classes:
    x = task.train.x[task.train.y == c]
    (_, feats), _ = model.apply(state.params, state.batch_stats, x)
    want_idx = _herding_loop(np.asarray(feats, np.float64), want)
    rows = np.flatnonzero(valid & (np.asarray(mem.y) == c))
    rows = rows[np.argsort(np.asarray(mem.rank)[rows])]
    np.testing.assert_array_equal(np.asarray(mem.x)[rows], x[want_idx])


def test_replay_loss_against_a_direct_computation(stream):
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,))
  er = methods.ER(50)
  s = er.init_state(model, stream)
  ctx = methods.TaskContext(0, stream, model, model.params,
                            model.batch_stats, s, stream.logit_masks(0))
  s = er.on_task_end(ctx)
  task = stream.tasks[1].train
  batch = {k: getattr(task, k)[:8] for k in "xyt"}
  key = jax.random.key(3)
  full = er.batch_fn(s, batch, key, (0, 1))
  assert full["x"].shape[0] == 16 and full["memory_logits"].shape[0] == 8
  np.testing.assert_array_equal(full["x"][:8], batch["x"])
  # Replayed examples are stored exemplars (of task 1's classes so far).
  assert set(np.asarray(full["y"][8:]).tolist()) <= set(
      stream.tasks[0].classes.tolist())
  masks = jnp.asarray(stream.logit_masks(1))
  ce = er.loss_fn(model)(model.params, model.batch_stats, s, full, masks,
                         key)[1][0]["ce"]
  (z, _), _ = model.apply(model.params, model.batch_stats, full["x"])
  z = np.asarray(z, np.float64)
  active = np.asarray(masks[1])
  want = []
  for zi, yi in zip(z, np.asarray(full["y"])):
    a = zi[active]
    want.append(np.log(np.exp(a - a.max()).sum()) + a.max() - zi[yi])
  np.testing.assert_allclose(ce, np.mean(want), rtol=1e-5)


def test_reservoir_memory_streams_the_current_examples(stream):
  model, res = _trained(stream, methods.ER(64, selection="reservoir"))
  buf = res["final_state"].method_state["memory"]
  n = sum(len(t.train) // 32 * 32 for t in stream.tasks)
  assert int(buf.seen) == n  # every current example once, no replayed one
  classes = np.bincount(np.asarray(buf.y), minlength=10)
  assert (classes > 0).sum() >= 8  # a uniform sample of the whole stream


def test_er_beats_finetuning_in_class_il(stream):
  _, er = _trained(stream, methods.ER(200), epochs=3)
  _, ft = _trained(stream, methods.FineTune(), epochs=3)
  assert ft["metrics"]["average_accuracy"] < 0.3
  assert er["metrics"]["average_accuracy"] > 0.7


def test_logit_matching_against_a_loop():
  rng = np.random.default_rng(0)
  z, h = rng.normal(size=(2, 6, 5))
  w = np.array([1, 1, 0, 1, 0, 1], np.float32)
  want = sum(w[i] * np.mean((z[i] - h[i]) ** 2) for i in range(6)) / w.sum()
  np.testing.assert_allclose(
      methods.der.logit_matching(jnp.asarray(z), jnp.asarray(h),
                                 jnp.asarray(w)), want, rtol=1e-6)


@pytest.mark.parametrize("cls", [methods.DER, methods.DERpp])
def test_der_loss_and_stored_logits(stream, cls):
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,))
  m = cls(memory_size=40)
  opt = optax.sgd(0.1)
  step = jax.jit(train.make_train_step(
      m.loss_fn(model), opt, update_method_state=m.update_method_state,
      batch_fn=m.batch_fn))
  state = train.init_train_state(model.params, model.batch_stats, opt,
                                 m.init_state(model, stream),
                                 stream.logit_masks(0))
  task = stream.tasks[0].train
  b0 = {k: getattr(task, k)[:8] for k in "xyt"}
  before = state.params
  state, terms = step(state, b0, jax.random.key(0))
  buf = state.method_state["memory"]
  # The reservoir took the 8 current examples with the logits the model
  # gave them in the step (before its update).
  (z0, _), _ = model.apply(before, model.batch_stats, b0["x"])
  np.testing.assert_allclose(buf.logits[:8], z0, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(buf.y[:8], b0["y"])
  assert float(terms["der"]) == 0.0  # nothing stored before this step
  # Next step: the terms against a direct computation of the batch.
  b1 = {k: getattr(task, k)[8:16] for k in "xyt"}
  full = m.batch_fn(state.method_state, b1, jax.random.key(5), (0, 1))
  _, (got, _, _) = m.loss_fn(model)(state.params, state.batch_stats,
                                    state.method_state, full, state.masks,
                                    None)
  (z, _), _ = model.apply(state.params, state.batch_stats, full["x"])
  z = np.asarray(z, np.float64)
  active = np.asarray(stream.logit_masks(0)[0])
  ce = lambda zi, yi: (np.log(np.exp(zi[active] - zi[active].max()).sum()) +
                       zi[active].max() - zi[yi])
  y = np.asarray(full["y"])
  n = 8
  np.testing.assert_allclose(got["ce"], np.mean([ce(z[i], y[i])
                                                 for i in range(8)]),
                             rtol=1e-5)
  stored = np.asarray(full["memory_logits"])
  np.testing.assert_allclose(got["der"], np.mean((z[8:8 + n] - stored[:n]) ** 2),
                             rtol=1e-5)
  if cls is methods.DERpp:
    np.testing.assert_allclose(got["der_ce"], np.mean(
        [ce(z[i], y[i]) for i in range(16, 24)]), rtol=1e-5)


def test_icarl_loss_against_a_loop():
  rng = np.random.default_rng(2)
  b, c = 6, 7
  z, zt = rng.normal(size=(2, b, c)) * 3
  y = rng.integers(0, 5, b)
  active = np.zeros((b, c), bool)
  active[:, :5] = True
  old = np.array([True, True, True, False, False, False, False])
  w = np.array([1, 1, 1, 1, 0, 1], np.float32)
  sig = lambda a: 1 / (1 + np.exp(-a))
  want = []
  for i in range(b):
    total = 0.0
    for k in range(5):
      t = sig(zt[i, k]) if old[k] else float(y[i] == k)
      p = sig(z[i, k])
      total += -(t * np.log(p) + (1 - t) * np.log(1 - p))
    want.append(total)
  want = np.dot(w, want) / w.sum()
  from cljax import losses
  got = losses.icarl_loss(jnp.asarray(z), jnp.asarray(y),
                                 jnp.asarray(zt), jnp.asarray(active),
                                 jnp.asarray(old), jnp.asarray(w))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_a_classifier_that_is_no_predictor_is_refused(stream):
  class Misnamed(methods.ICaRL):
    classifier = "nearest_mean"

  with pytest.raises(ValueError, match="classifier 'nearest_mean' is none "
                     r"of its predictors \['nme'\]"):
    _trained(stream, Misnamed(100))


def test_icarl_reports_nearest_mean_and_argmax(stream):
  model, res = _trained(stream, methods.ICaRL(100), epochs=2)
  assert len(res["accuracy_matrix_nme"]) == 5
  assert res["metrics_nme"]["average_accuracy"] > 0.6
  # The NME row equals a direct computation from the stored exemplars.
  state = res["final_state"]
  m = state.method_state["memory"]
  feats = lambda x: model.apply(state.params, state.batch_stats, x)[0][1]
  means, present = memory.class_means(feats(m.x), m.y, m.valid, 10)
  test = stream.tasks[2].test
  pred = memory.nme_predict(feats(test.x), means, present)
  acc = float(np.mean(np.asarray(pred) == test.y))
  assert res["accuracy_matrix_nme"][-1][2] == pytest.approx(acc)
  # Its validation accuracies too, which selection reads.
  assert res["classifier"] == "nme"
  val = stream.tasks[2].val
  pred = memory.nme_predict(feats(val.x), means, present)
  assert res["val_accuracy_matrix_nme"][-1][2] == pytest.approx(
      float(np.mean(np.asarray(pred) == val.y)))
  assert len(res["val_accuracy_matrix_nme"]) == 5


def _soft_ce(zs, zt, classes, temp):
  out = []
  for a, b in zip(np.asarray(zt, np.float64), np.asarray(zs, np.float64)):
    p = np.exp(a[classes] / temp - (a[classes] / temp).max())
    p /= p.sum()
    q = b[classes] / temp
    logq = q - q.max() - np.log(np.exp(q - q.max()).sum())
    out.append(-(p * logq).sum())
  return np.mean(out)


def _ce(z, y, classes):
  z = np.asarray(z, np.float64)
  return np.mean([np.log(np.exp(zi[classes] - zi[classes].max()).sum()) +
                  zi[classes].max() - zi[yi] for zi, yi in zip(z, y)])


def test_e2eil_cross_distilled_and_balanced_losses(stream):
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,))
  m = methods.E2EIL(60, balanced_passes=3)
  s = m.init_state(model, stream)
  ctx = lambda k, s: methods.TaskContext(k, stream, model, model.params,
                                         model.batch_stats, s,
                                         stream.logit_masks(k))
  for k in range(2):  # as the runner calls the hooks
    for phase in m.phases(k):
      s = m.on_phase_start(ctx(k, s), phase)
    s = m.on_task_end(ctx(k, s))
  moved = jax.tree.map(lambda p: p * 1.3, model.params)
  task = stream.tasks[2].train
  batch = m.batch_fn(s, {k: getattr(task, k)[:8] for k in "xyt"},
                     jax.random.key(1), (0, 1))
  masks = jnp.asarray(stream.logit_masks(2))
  terms = m.phase_loss_fn(model, "train")(moved, model.batch_stats, s, batch,
                                          masks, None)[1][0]
  (zs, _), _ = model.apply(moved, model.batch_stats, batch["x"])
  (zt, _), _ = model.apply(model.params, model.batch_stats, batch["x"])
  want = sum(_soft_ce(zs, zt, stream.tasks[k].classes, 2.0) for k in range(2))
  np.testing.assert_allclose(terms["distill"], want, rtol=1e-4)
  seen = np.concatenate([stream.tasks[k].classes for k in range(3)])
  np.testing.assert_allclose(terms["ce"], _ce(zs, batch["y"], seen),
                             rtol=1e-4)
  # The balanced phase: memory samples only, the new classes distilled from
  # the model at its start (here: the task's classes of task 2).
  phase = m.phases(2)[1]
  assert phase.name == "balanced" and phase.lr_scale == 0.1
  sb = m.on_phase_start(ctx(2, s), phase)
  counts = np.bincount(np.asarray(sb["memory"].y)[np.asarray(
      sb["memory"].valid)], minlength=10)
  assert counts[:6].tolist() == [10] * 6  # 60 // 6 classes: balanced
  fb = m.phase_loss_fn(model, "balanced")
  other = {**batch, "x": batch["x"].at[:8].set(0.0)}  # the current examples
  a, (tb, _) = fb(moved, model.batch_stats, sb, batch, masks, None)
  b = fb(moved, model.batch_stats, sb, other, masks, None)[0]
  assert float(a) == float(b)  # ... do not count
  (zs, _), _ = model.apply(moved, model.batch_stats, batch["x"][8:])
  (zt, _), _ = model.apply(model.params, model.batch_stats, batch["x"][8:])
  np.testing.assert_allclose(tb["distill"], _soft_ce(
      zs, zt, stream.tasks[2].classes, 2.0), rtol=1e-4)
  np.testing.assert_allclose(tb["ce"], _ce(zs, batch["y"][8:], seen),
                             rtol=1e-4)


def test_e2eil_runs_and_fine_tunes_at_a_lower_rate(stream):
  _, res = _trained(stream, methods.E2EIL(100, balanced_passes=2), epochs=2)
  n = [len(t.train) // 32 for t in stream.tasks]
  balanced = -(-2 * 100 // 32)  # two passes over a memory of 100
  assert res["steps"] == 2 * sum(n) + 4 * balanced
  assert res["metrics"]["average_accuracy"] > 0.6


def test_first_task_with_an_empty_memory_equals_finetuning(digits):
  # The replay half used to be zeros: BatchNorm normalised the current batch
  # with them. Now it is a weightless copy of the current batch.
  stream = data.class_splits(digits, 5)
  model = models.functional(models.ResNet(1, 10, widths=(8, 16),
                                          blocks=(2, 2), shortcut="A",
                                          rngs=nnx.Rngs(0)))
  task = stream.tasks[0].train
  batch = {k: getattr(task, k)[:16] for k in "xyt"}
  out = {}
  for m in (methods.FineTune(), methods.ER(50)):
    opt = optax.sgd(0.1)
    step = jax.jit(train.make_train_step(m.loss_fn(model), opt,
                                         batch_fn=m.batch_fn))
    state = train.init_train_state(model.params, model.batch_stats, opt,
                                   m.init_state(model, stream),
                                   stream.logit_masks(0))
    state, _ = step(state, batch, jax.random.key(0))
    out[m.name] = jax.device_get((state.params, state.batch_stats))
  # Equal up to float rounding through 9 BatchNorm layers (with a zero
  # replay half, ResNet-32 was off by 0.07 in the parameters and 0.5 in the
  # statistics).
  close = lambda tol: lambda a, b: np.testing.assert_allclose(a, b, atol=tol)
  jax.tree.map(close(1e-3), out["finetune"][0], out["er"][0])
  jax.tree.map(close(1e-5), out["finetune"][1], out["er"][1])


def test_replay_draws_without_replacement_from_the_filled_slots(stream):
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(8,))
  er = methods.ER(40)
  s = er.init_state(model, stream)
  valid = np.zeros(40, bool)
  valid[[1, 5, 6, 9, 12, 20, 21, 22, 30, 33, 38, 39]] = True  # 12 filled
  s["memory"] = s["memory"]._replace(valid=jnp.asarray(valid),
                                     y=jnp.arange(40, dtype=jnp.int32))
  batch = {k: getattr(stream.tasks[1].train, k)[:8] for k in "xyt"}
  seen = np.zeros(40)
  for i in range(300):
    r = er.batch_fn(s, batch, jax.random.key(i), (0, 1))
    picked = np.asarray(r["y"][8:])
    assert len(set(picked.tolist())) == 8  # no slot twice
    assert valid[picked].all() and float(r["w"][8:].min()) == 1.0
    seen[picked] += 1
  # Uniform over the 12 filled slots: each drawn 8/12 of the time.
  np.testing.assert_allclose(seen[valid] / 300, 8 / 12, atol=0.1)
  with pytest.raises(ValueError, match="replay_size=10 does not divide by "
                     "the 4 devices"):
    methods.ER(40, replay_size=10).batch_fn(s, batch, jax.random.key(0),
                                            (0, 4))


def test_memory_budgets_are_checked_and_random_selection_follows_the_seed(
    stream):
  with pytest.raises(ValueError, match="smaller than the stream's 10 "
                     "classes"):
    methods.ER(8).check(stream)
  total = sum(len(t.train) for t in stream.tasks)
  for selection in ("herding", "reservoir"):
    methods.ER(total, selection=selection).check(stream)
    with pytest.raises(ValueError, match=f"memory_size={total + 1} exceeds "
                       f"the {total} training examples"):
      methods.ER(total + 1, selection=selection).check(stream)
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(8,))
  mems = []
  for seed in (0, 0, 1):
    m = methods.ER(100, selection="random")
    s = m.init_state(model, stream)
    ctx = methods.TaskContext(0, stream, model, model.params,
                              model.batch_stats, s, stream.logit_masks(0),
                              seed)
    mems.append(np.asarray(m.on_task_end(ctx)["memory"].x))
  assert np.array_equal(mems[0], mems[1]) and not np.array_equal(mems[0],
                                                                 mems[2])
  # A budget larger than a class (more exemplars than rows): no crash.
  der = methods.DER(memory_size=2000, selection="random")
  s = der.init_state(model, stream)
  ctx = methods.TaskContext(0, stream, model, model.params, model.batch_stats,
                            s, stream.logit_masks(0))
  got = der.on_task_end(ctx)["memory"]
  assert int(got.valid.sum()) == len(stream.tasks[0].train)


def test_e2eil_compiles_each_phase_once_in_class_il(stream):
  traces = {}

  class Counted(methods.E2EIL):
    def phase_loss_fn(self, model, name):
      f = super().phase_loss_fn(model, name)

      def loss(*a):
        traces[name] = traces.get(name, 0) + 1
        return f(*a)
      return loss

  _trained(stream, Counted(60, balanced_passes=1))
  assert traces == {"train": 2, "balanced": 2}  # eval_shape + compile


def test_e2eil_resumes_inside_the_balanced_phase(stream, tmp_path,
                                                 monkeypatch):
  from cljax.train import _checkpoint
  run = lambda ckpt: train.run_stream(
      stream, methods.E2EIL(60, balanced_passes=4),
      models.build_model("mlp", stream.input_shape, 10, hidden=(16,)),
      optax.sgd(0.05, momentum=0.9), epochs=1, batch_size=32,
      progress=False, checkpoint_dir=ckpt, checkpoint_every=3)
  want = run(None)
  real, calls = _checkpoint.Checkpoints.save, []

  def save(self, items, record):
    calls.append(real(self, items, record))
    pos = record["position"]
    if pos and pos["task"] == 2 and pos["phase"] == 1:
      raise KeyboardInterrupt
    return calls[-1]

  ckpt = str(tmp_path / "ck")
  monkeypatch.setattr(_checkpoint.Checkpoints, "save", save)
  with pytest.raises(KeyboardInterrupt):
    run(ckpt)
  monkeypatch.undo()
  got = run(ckpt)
  assert got["accuracy_matrix"] == want["accuracy_matrix"]
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(want["final_state"].params),
               jax.device_get(got["final_state"].params))
