"""UCIR, BiC, IL2M and WA as methods: each step against a direct
computation, compile-once per stream, and the union replay."""

import jax
import numpy as np
import optax
import pytest
import scipy.optimize

from cljax import data, losses, methods, models, train
from cljax.methods.bic import fit_bias_layer


@pytest.fixture(scope="module")
def stream(digits):
  return data.class_splits(digits, 5, val_fraction=0.1)


def _model(stream, method):
  return models.build_model("mlp", stream.input_shape, 10, hidden=(32,),
                            head=method.head)


def _trained(stream, method, epochs=1):
  model = _model(stream, method)
  res = train.run_stream(stream, method, model, optax.sgd(0.05, momentum=0.9),
                         epochs=epochs, batch_size=32, progress=False)
  return model, res


def _perturbed(params, seed, scale):
  """A teacher near ``params``."""
  key = jax.random.key(seed)
  return jax.tree.map(lambda p: p + scale * jax.random.normal(key, p.shape),
                      params)


def _ctx(stream, model, method, s, k, params=None):
  return methods.TaskContext(k, stream, model, params or model.params,
                             model.batch_stats, s, stream.logit_masks(k))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_bias_layer_against_scipy(seed):
  rng = np.random.default_rng(seed)
  n, c = 60, 6
  logits = rng.normal(size=(n, c)) * 2
  labels = rng.integers(0, 5, n)
  valid = rng.uniform(size=n) > 0.2
  active = np.arange(c) < 5
  new = (np.arange(c) >= 3) & active
  alpha, beta = np.where(new, 1.0, rng.uniform(0.5, 1.5, c)), np.where(
      new, 0.0, rng.normal(size=c))

  def objective(p):
    a, b = np.where(new, p[0], alpha), np.where(new, p[1], beta)
    z = logits * a + b
    z = np.where(active, z, -np.inf)
    logp = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1,
                                                             keepdims=True)
                      ) - z.max(1, keepdims=True)
    ce = -logp[np.arange(n), labels]
    return (valid * ce).sum() / valid.sum() + 0.05 * ((p[0] - 1) ** 2 +
                                                      p[1] ** 2)

  want = scipy.optimize.minimize(objective, [1.0, 0.0], method="BFGS",
                                 options={"gtol": 1e-10}).x
  got = jax.jit(fit_bias_layer)(logits.astype(np.float32), labels, valid,
                                active, new, alpha.astype(np.float32),
                                beta.astype(np.float32), 0.1)
  np.testing.assert_allclose(np.array(got), want, atol=2e-4)


def test_bic_stage_two_changes_only_the_new_classes_layer(stream):
  bic = methods.BiC(100, val_size=20)
  model = _model(stream, bic)
  s = bic.init_state(model, stream)
  s = bic.on_task_end(_ctx(stream, model, bic, s, 0))
  np.testing.assert_array_equal(s["alpha"], np.ones(10))  # first: no stage 2
  s = bic.on_task_end(_ctx(stream, model, bic, s, 1))
  new = np.isin(np.arange(10), stream.tasks[1].classes)
  a, b = np.asarray(s["alpha"]), np.asarray(s["beta"])
  assert np.all(a[~new] == 1) and np.all(b[~new] == 0)
  assert len(set(a[new])) == 1 and not np.allclose(a[new], 1)
  before = (a.copy(), b.copy())
  s = bic.on_task_end(_ctx(stream, model, bic, s, 2))
  newer = np.isin(np.arange(10), stream.tasks[2].classes)
  np.testing.assert_array_equal(np.asarray(s["alpha"])[~newer],
                                before[0][~newer])
  np.testing.assert_array_equal(np.asarray(s["beta"])[~newer],
                                before[1][~newer])
  # The validation memory: balanced (20 // 6 of each class seen), held out
  # of the training split.
  val = s["val"]
  ys = np.asarray(val.y)[np.asarray(val.valid)]
  assert np.bincount(ys, minlength=10)[:6].tolist() == [3] * 6
  split = bic.train_split(stream, 2)
  held = np.asarray(val.x)[np.asarray(val.valid) & (np.asarray(val.t) == 2)]
  flat = split.x.reshape(len(split), -1)
  for x in held:
    assert not np.any(np.all(flat == x.reshape(-1), axis=1))
  assert len(split) + 2 * (20 // 6) == len(stream.tasks[2].train)


def test_bic_trains_only_through_its_stages(stream):
  model, res = _trained(stream, methods.BiC(200, val_size=40))
  assert set(res) >= {"accuracy_matrix", "accuracy_matrix_bic"}
  s = res["final_state"].method_state
  assert np.all(np.asarray(s["alpha"])[stream.tasks[0].classes] == 1)
  assert len(set(np.asarray(s["alpha"]).round(6))) > 2


def test_distillation_stage_against_a_direct_computation(stream):
  wa = methods.WA(100, temperature=2.0)
  model = _model(stream, wa)
  s = wa.init_state(model, stream)
  rng = jax.random.key(0)
  teacher = _perturbed(model.params, 0, 0.1)
  s = wa.on_task_end(_ctx(stream, model, wa, s, 0, teacher))
  s = wa.on_task_start(_ctx(stream, model, wa, s, 1))
  task = stream.tasks[1].train
  batch = wa.batch_fn(s, {k: getattr(task, k)[:8] for k in "xyt"}, rng,
                      (0, 1))
  masks = stream.logit_masks(1)
  loss, (terms, _) = wa.loss_fn(model)(model.params, model.batch_stats, s,
                                       batch, masks, rng)
  (z, _), _ = model.apply(model.params, model.batch_stats, batch["x"])
  (zt, _), _ = model.apply(teacher, model.batch_stats, batch["x"])
  z, zt, w = np.asarray(z, np.float64), np.asarray(zt, np.float64), np.asarray(
      batch["w"])
  seen = np.asarray(masks[1])
  old = np.isin(np.arange(10), stream.tasks[0].classes)
  ce, kd = [], []
  for i in range(len(w)):
    lse = np.log(np.exp(z[i][seen]).sum())
    ce.append(lse - z[i, batch["y"][i]])
    p = np.exp(zt[i][old] / 2) / np.exp(zt[i][old] / 2).sum()
    logq = z[i][old] / 2 - np.log(np.exp(z[i][old] / 2).sum())
    kd.append(-(p * logq).sum())
  lam = 2 / 4
  want = (1 - lam) * np.dot(w, ce) / w.sum() + lam * np.dot(w, kd) / w.sum()
  np.testing.assert_allclose(loss, want, rtol=1e-4)
  assert float(s["lam"]) == lam


def test_wa_aligns_the_new_classes_norms(stream):
  model, res = _trained(stream, methods.WA(100))
  kernel = np.asarray(res["final_state"].params["head"]["kernel"])
  norms = np.linalg.norm(kernel, axis=0)
  new = np.isin(np.arange(10), stream.tasks[-1].classes)
  np.testing.assert_allclose(norms[new].mean(), norms[~new].mean(),
                             rtol=1e-5)


def test_il2m_statistics_and_predictions_by_hand(stream):
  il2m = methods.IL2M(100)
  model, res = _trained(stream, il2m)
  state = res["final_state"]
  s, params = state.method_state, state.params
  k = stream.num_tasks - 1
  active = np.asarray(stream.logit_masks(k)[k])

  def scores(x):
    (z, _), _ = model.apply(params, state.batch_stats, x)
    z = np.where(active, np.asarray(z, np.float64), -np.inf)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)

  task = stream.tasks[k].train
  p = scores(task.x)
  for c in stream.tasks[k].classes:
    np.testing.assert_allclose(s["init_means"][c], p[task.y == c, c].mean(),
                               rtol=1e-4)
  np.testing.assert_allclose(s["confidence"][k], p.max(1).mean(), rtol=1e-4)
  test = stream.tasks[0].test
  q = scores(test.x)
  new = np.asarray(s["new"])
  ratio = np.asarray(s["ratio"])
  want = []
  for i in range(len(q)):
    row = q[i].copy()
    if new[np.argmax(row)]:
      row = row * ratio
    want.append(np.argmax(row))
  prepare, predict = il2m.predictors(model)["il2m"]
  got = predict(params, state.batch_stats, prepare(s, params,
                                                   state.batch_stats),
                test.x, np.broadcast_to(active, (len(test.y), 10)))
  np.testing.assert_array_equal(got, want)
  np.testing.assert_allclose(res["accuracy_matrix_il2m"][k][0],
                             np.mean(np.array(want) == test.y), atol=1e-6)


def test_ucir_loss_terms_and_imprinting(stream):
  ucir = methods.UCIR(100, lambda_base=5.0, k=2, margin=0.5)
  model = _model(stream, ucir)
  s = ucir.init_state(model, stream)
  rng = jax.random.key(1)
  teacher = _perturbed(model.params, 1, 0.05)
  s = ucir.on_task_end(_ctx(stream, model, ucir, s, 0, teacher))
  ctx = _ctx(stream, model, ucir, s, 1)
  s = ucir.on_task_start(ctx)
  params, _ = ucir.start_params(ctx._replace(method_state=s))
  # Imprinting: each new class's column is the normalised mean of its
  # examples' normalised features (up to the scale).
  task = stream.tasks[1].train
  (_, f), _ = model.apply(model.params, model.batch_stats, task.x)
  f = np.asarray(f) / np.linalg.norm(np.asarray(f), axis=1, keepdims=True)
  for c in stream.tasks[1].classes:
    mean = f[task.y == c].mean(0)
    col = np.asarray(params["head"]["kernel"])[:, c]
    np.testing.assert_allclose(col / np.linalg.norm(col),
                               mean / np.linalg.norm(mean), atol=1e-5)
  batch = ucir.batch_fn(s, {k: getattr(task, k)[:8] for k in "xyt"}, rng,
                        (0, 1))
  masks = stream.logit_masks(1)
  loss, (terms, _) = ucir.loss_fn(model)(params, model.batch_stats, s, batch,
                                         masks, rng)
  (z, f), _ = model.apply(params, model.batch_stats, batch["x"])
  (_, ft), _ = model.apply(s["teacher"], model.batch_stats, batch["x"])
  old = np.isin(np.arange(10), stream.tasks[0].classes)
  new = np.isin(np.arange(10), stream.tasks[1].classes)
  lf = losses.less_forget_loss(f, ft, batch["w"])
  mr = losses.margin_ranking_loss(z / params["head"]["sigma"], batch["y"],
                                  old, new, 0.5, 2, batch["w"])
  lam = 5.0 * np.sqrt(2 / 2)
  np.testing.assert_allclose(loss, terms["ce"] + lam * lf + mr, rtol=1e-5)
  np.testing.assert_allclose(terms["margin_ranking"], mr, rtol=1e-6)
  assert float(mr) > 0  # the exemplars in the batch are ranked


def test_ucir_needs_the_cosine_head_and_a_valid_k(stream):
  ucir = methods.UCIR(100)
  linear = models.build_model("mlp", stream.input_shape, 10, hidden=(8,))
  with pytest.raises(ValueError, match="cosine head"):
    ucir.init_state(linear, stream)
  with pytest.raises(ValueError, match="k=3 exceeds"):
    methods.UCIR(100, k=3).check(stream)


@pytest.mark.parametrize("cls", [methods.ER, methods.ICaRL])
def test_union_replay_is_in_the_memory_to_task_proportion(stream, cls):
  er, union = cls(100), cls(100, replay="union")
  model = _model(stream, er)
  task = stream.tasks[1].train
  batch = {k: getattr(task, k)[:32] for k in "xyt"}
  sizes = []
  for m in (er, union):
    s = m.init_state(model, stream)
    sizes.append(m.batch_fn(s, batch, jax.random.key(0), (0, 1))["y"].shape[0])
  n = np.mean([len(t.train) for t in stream.tasks])
  assert sizes == [64, 32 + round(32 * 100 / n)]
  with pytest.raises(ValueError, match="replay must be"):
    methods.ER(100, replay="balanced")


@pytest.mark.parametrize("cls,kw", [
    (methods.UCIR, {}), (methods.BiC, dict(val_size=20)), (methods.IL2M, {}),
    (methods.WA, {})], ids=["ucir", "bic", "il2m", "wa"])
def test_scan_and_host_loops_are_bit_identical_and_compile_once(stream, cls,
                                                                 kw):
  traces = []

  class Counted(cls):
    def loss_fn(self, model):
      f = super().loss_fn(model)

      def loss(*a):
        traces.append(1)
        return f(*a)
      return loss

  out = {}
  for loop in ("host", "scan"):
    traces.clear()
    method = Counted(100, **kw)
    out[loop] = train.run_stream(
        stream, method, _model(stream, method), optax.sgd(0.05, momentum=0.9),
        epochs=1, batch_size=32, progress=False, loop=loop, scan_chunk=4)
    assert len(traces) == 2  # eval_shape + compile, for 5 tasks
  a, b = out["host"], out["scan"]
  keys = [k for k in a if k.startswith("accuracy_matrix")]
  # The network's and the method's own classifier (WA: the network only).
  assert len(keys) == (1 if cls is methods.WA else 2)
  for key in keys:
    assert a[key] == b[key], key
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(a["final_state"].params),
               jax.device_get(b["final_state"].params))


def test_bic_memory_size_is_both_parts(stream):
  bic = methods.BiC(100, val_size=20)
  assert bic.memory_size == 100 and bic.capacity == 80
  again = type(bic)(**{k: v for k, v in vars(bic).items()
                       if k in methods.hyperparameters(methods.BiC)})
  assert again.capacity == 80
  with pytest.raises(ValueError, match="val_size=100 leaves no exemplar"):
    methods.BiC(100, val_size=100)
  with pytest.raises(ValueError, match="smaller than the stream's 10"):
    methods.BiC(100, val_size=5).check(stream)


@pytest.mark.parametrize("cls", [methods.UCIR, methods.BiC, methods.IL2M,
                                 methods.WA, methods.E2EIL])
def test_exemplar_methods_refuse_a_reservoir(cls):
  with pytest.raises(ValueError, match="'herding' or 'random'"):
    cls(selection="reservoir")
