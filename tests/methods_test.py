import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cljax import data, losses, methods, models, regularizers, train
from cljax.methods._base import TaskContext
from cljax.train import StepInfo

ALL = [methods.FineTune(), methods.Joint(), methods.L2(1.0),
       methods.EWC(10.0, fisher_samples=64),
       methods.OnlineEWC(10.0, gamma=0.9, fisher_samples=64),
       methods.SI(0.1), methods.RWalk(1.0, update_every=3),
       methods.MAS(0.01, samples=64), methods.KD(1.0),
       methods.LwF(1.0), methods.GEM(32, 0.5), methods.AGEM(32, 16),
       methods.AGEM(32, 16, memory="reservoir"), methods.Independent(),
       methods.ER(60), methods.ER(60, selection="random"),
       methods.ER(60, selection="reservoir"), methods.MIR(60, subsample=20),
       methods.GSS(60, mem_strength=3),
       methods.DER(memory_size=60),
       methods.DERpp(memory_size=60), methods.ICaRL(60),
       methods.E2EIL(60, balanced_passes=2), methods.PackNet(),
       methods.DGR(z_dim=4, gen_units=16),
       pytest.param(methods.DGRDistill(z_dim=4, gen_units=16),  # DGR's step
                    marks=pytest.mark.slow), methods.HAT(),
       methods.PathNet(population=4, steps_per_path=2), methods.CPG(),
       methods.DEN(ex_k=4)]


@pytest.fixture(scope="module")
def stream(digits):
  return data.class_splits(digits, 3, task_sizes=(4, 3, 3), incremental="task")


@pytest.mark.parametrize("method", ALL, ids=lambda m: m.name + str(getattr(
    m, "memory", "")) + getattr(m, "selection", ""))
def test_every_method_runs_and_compiles_once(stream, method):
  traces = [0]
  inner = method.loss_fn

  class Counted(type(method)):
    def loss_fn(self, model):
      f = inner(model)
      def loss(*a):
        traces[0] += 1
        return f(*a)
      return loss

  m = Counted.__new__(Counted)
  m.__dict__.update(method.__dict__)
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(32,),
                             head=method.head)
  res = train.run_stream(stream, m, model, optax.sgd(0.05, momentum=0.9),
                         epochs=2, batch_size=32, progress=False)
  # eval_shape + the one compilation of the step (PackNet: of each of its
  # two phases' steps, both around the same loss; DEN: of its five)
  assert traces[0] == {methods.PackNet: 4, methods.DEN: 10}.get(
      type(method), 2)
  for fn in ("_fisher", "_omega", "_add", "_select"):  # end-of-task: once
    if hasattr(m, fn):
      assert getattr(m, fn)._cache_size() == 1
  assert res["metrics"]["average_accuracy"] > 0.5  # task-IL digits


def test_lwf_warmup_trains_only_the_new_head(stream):
  traces = [0]

  class WarmupOnly(methods.LwF):
    # From task 2 on, only the warm-up phase: what it moves is all we see.
    def phases(self, index):
      return super().phases(index)[:1]

    def phase_loss_fn(self, model, name):
      f = super().phase_loss_fn(model, name)
      if name != "warmup":
        return f
      def counted(*a):
        traces[0] += 1
        return f(*a)
      return counted

  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,))
  one = train.run_stream(data.Stream(stream.name, stream.kind, stream.tasks[:1],
                                     stream.num_classes), methods.LwF(),
                         model, optax.sgd(0.05, momentum=0.9), epochs=1,
                         batch_size=32, progress=False)["final_state"]
  res = train.run_stream(stream, WarmupOnly(warmup_epochs=2), model,
                         optax.sgd(0.05, momentum=0.9), epochs=1,
                         batch_size=32, progress=False)
  p0, p1 = one.params, res["final_state"].params
  assert traces[0] == 2  # eval_shape + one compilation for tasks 2 and 3
  jax.tree.map(np.testing.assert_array_equal, p0["layers"], p1["layers"])
  old = stream.tasks[0].classes
  np.testing.assert_array_equal(p0["head"]["kernel"][:, old],
                                p1["head"]["kernel"][:, old])
  new = np.concatenate([stream.tasks[1].classes, stream.tasks[2].classes])
  assert not np.allclose(p0["head"]["kernel"][:, new],
                         p1["head"]["kernel"][:, new])


def test_independent_keeps_one_network_per_task(stream):
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,))
  res = train.run_stream(stream, methods.Independent(), model,
                         optax.sgd(0.05, momentum=0.9), epochs=1,
                         batch_size=32, progress=False)
  r, b = np.asarray(res["accuracy_matrix"]), res["random_init_accuracy"]
  np.testing.assert_array_equal(r[:, 0], r[0, 0])  # task 1's net is kept
  np.testing.assert_array_equal(r[1, 1], r[2, 1])
  assert r[0, 1] == b[1] and r[1, 2] == b[2]  # untrained tasks: the init
  assert res["metrics"]["backward_transfer"] == 0.0
  # Each task starts from the initial weights: task 2's network does not
  # depend on what task 1's data were.
  first = stream.tasks[0]
  half = first._replace(train=first.train.take(np.arange(len(first.train)
                                                          // 2)))
  other = data.Stream(stream.name, stream.kind,
                      (half, *stream.tasks[1:]), stream.num_classes)
  res2 = train.run_stream(other, methods.Independent(), model,
                          optax.sgd(0.05, momentum=0.9), epochs=1,
                          batch_size=32, progress=False)
  second = lambda out: jax.tree.map(
      lambda a: a[1], out["final_state"].method_state["params"])
  jax.tree.map(np.testing.assert_array_equal, second(res), second(res2))


def test_run_identity_ignores_private_helpers(stream):
  from cljax.train import run_identity
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(8,))
  a, b = methods.EWC(5.0), methods.EWC(5.0)
  a.init_state(model, stream)  # sets a jitted helper on ``a`` only
  ident = lambda m: run_identity(stream, m, model, optax.sgd(0.1), {})
  assert ident(a) == ident(b)
  assert ident(a)["method.lam"] == 5.0
  assert ident(methods.EWC(6.0))["method.lam"] == 6.0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gem_step_gradient_satisfies_the_memory_constraints(stream, dtype):
  """Also with a bfloat16 network: the gradients, the QP and the
  projection stay float32, so the constraints hold as tightly."""
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,),
                             dtype=dtype)
  m = methods.GEM(16, margin=0.0)
  s = m.init_state(model, stream)
  for k in range(2):
    s = m.on_task_end(_ctx(stream, model, model.params, s, k))
  masks = jnp.asarray(stream.logit_masks(2))
  task = stream.tasks[2].train
  batch = {"x": task.x[:32], "y": task.y[:32], "t": task.t[:32]}
  g = jax.grad(lambda p: m.loss_fn(model)(p, model.batch_stats, s, batch,
                                          masks, None)[0])(model.params)
  kw = m.extra_args(model.params, model.batch_stats, s, batch, masks, None)
  assert np.asarray(kw["memory_mask"]).tolist() == [True, True, False]
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(
      (g, kw["memory_grads"])))
  opt = m.optimizer(optax.sgd(1.0), model.params)
  upd, _ = opt.update(g, opt.init(model.params), model.params, **kw)
  dots = [sum(float(jnp.vdot(-u, mg[k])) for u, mg in zip(
      jax.tree.leaves(upd), jax.tree.leaves(kw["memory_grads"])))
          for k in range(2)]
  assert min(dots) >= -1e-5  # the projected step does not raise old losses


def _ctx(stream, model, params, state, k=0):
  return TaskContext(k, stream, model, params, model.batch_stats, state,
                     stream.logit_masks(k))


@pytest.mark.parametrize("samples,path", [(12, "layerwise"), (12, "vmap"),
                                          (10**4, "layerwise")])
def test_ewc_fisher_matches_a_loop(stream, samples, path):
  # 10**4 > the task's size: all examples, padded with zero weight.
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(8,))
  m = methods.EWC(1.0, fisher_samples=samples, chunk_size=5, path=path)
  state = m.init_state(model, stream)
  new = m.on_task_end(_ctx(stream, model, model.params, state))
  sample = stream.tasks[0].train.take(
      np.sort(np.random.default_rng([0, 0]).permutation(
          len(stream.tasks[0].train))[:samples]))
  mask = stream.logit_masks(0)[0]

  g = jax.jit(jax.grad(lambda p, x, y: losses.masked_cross_entropy(
      model.apply(p, model.batch_stats, x[None])[0][0], y[None], mask)[0]))
  want = jax.tree.map(lambda *a: np.mean(np.square(np.stack(a)), 0),
                      *[g(model.params, x, y) for x, y in
                        zip(sample.x, sample.y)])
  got = new["importance"]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-9), got, want)
  # The penalty then is lam/2 sum F (theta - theta*)^2 with that F.
  shifted = jax.tree.map(lambda p: p + 0.1, model.params)
  np.testing.assert_allclose(
      m.penalty(shifted, new),
      regularizers.ewc_penalty(shifted, model.params, got), rtol=1e-5)


@pytest.mark.parametrize("name,kw", [
    ("l2", {"lam": 0.5}), ("ewc", {"lam": 30.0, "fisher_samples": 64}),
    ("online_ewc", {"lam": 30.0, "gamma": 0.8, "fisher_samples": 64}),
    ("si", {"c": 0.5}), ("mas", {"lam": 0.5, "samples": 64})])
def test_penalty_forms_give_the_same_run(stream, name, kw):
  # The optax-transform form and the loss form of each penalty: same
  # trajectory (SI's path integral included) and the same accuracy matrix.
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,))
  out = [train.run_stream(stream, methods.build_method(name, form=form, **kw),
                          model, optax.sgd(0.05, momentum=0.9), epochs=1,
                          batch_size=32, progress=False)
         for form in ("transform", "loss")]
  a, b = (o["final_state"] for o in out)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-4,
                                                       atol=2e-5),
               (a.params, a.method_state), (b.params, b.method_state))
  np.testing.assert_allclose(out[0]["accuracy_matrix"],
                             out[1]["accuracy_matrix"], atol=0.01)


def test_si_accumulates_the_task_loss_gradient(stream):
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(8,))
  m = methods.SI(c=3.0, form="loss")
  rng = np.random.default_rng(0)
  s = m.init_state(model, stream)
  s = {**s, "importance": jax.tree.map(
      lambda a: jnp.asarray(rng.uniform(size=a.shape), a.dtype), s["omega"]),
       "anchor": jax.tree.map(lambda a: a + 0.05, model.params)}
  batch = {"x": stream.tasks[0].train.x[:16], "y": stream.tasks[0].train.y[:16],
           "t": stream.tasks[0].train.t[:16]}
  masks = jnp.asarray(stream.logit_masks(0))
  loss = m.loss_fn(model)
  total_g = jax.grad(lambda p: loss(p, model.batch_stats, s, batch, masks,
                                    None)[0])(model.params)
  ce_g = jax.grad(lambda p: loss(p, model.batch_stats, s, batch, masks,
                                 None)[1][0]["ce"])(model.params)
  new_params = jax.tree.map(lambda p, g: p - 0.1 * g, model.params, total_g)
  out = m.update_method_state(s, model.params, new_params, total_g, StepInfo(
      batch, {}, None, lambda x: x, (0, 1),
      updates=jax.tree.map(jnp.subtract, new_params, model.params)))
  want = jax.tree.map(lambda g, a, b: -g * (b - a), ce_g, model.params,
                      new_params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-9),
               out["omega"], want)


def test_si_step_updates_parameters_in_place(stream):
  # SI reads the step's change from the optimizer's updates: read from the
  # old parameters, it made XLA copy every parameter array each step
  # (fine-tuning's compiled step copies none).
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(32, 32))
  shapes = {tuple(a.shape) for a in jax.tree.leaves(model.params)}
  batch = {k: getattr(stream.tasks[0].train, k)[:16] for k in "xyt"}

  def param_copies(m):
    opt = m.optimizer(optax.adam(1e-3), model.params)
    step = train.make_train_step(m.loss_fn(model), opt,
                                 update_method_state=m.update_method_state,
                                 extra_args=m.extra_args)
    state = train.init_train_state(model.params, model.batch_stats, opt,
                                   m.init_state(model, stream),
                                   stream.logit_masks(0))
    text = jax.jit(step, donate_argnums=0).lower(
        state, batch, jax.random.key(0)).compile().as_text()
    copied = re.findall(r"= f32\[([\d,]*)\]\S* copy\(", text)
    return sum(tuple(int(d) for d in c.split(",") if d) in shapes
               for c in copied)

  assert param_copies(methods.SI(1.0)) <= param_copies(methods.FineTune())


def test_path_integral_methods_need_the_step_updates(stream):
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(8,))
  for m in (methods.SI(1.0), methods.RWalk(1.0)):
    s = m.init_state(model, stream)
    with pytest.raises(ValueError, match="needs StepInfo.updates"):
      m.update_method_state(s, model.params, model.params, model.params,
                            StepInfo({}, {}, None, lambda x: x, (0, 1)))


@pytest.mark.parametrize("form", ["transform", "loss"])
def test_si_step_accumulates_the_parameter_change(stream, form):
  # Through the train step: omega gains -g * (new - old), with g the task
  # loss's gradient at the old parameters.
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(8,))
  m = methods.SI(c=2.0, form=form)
  rng = np.random.default_rng(1)
  s = m.init_state(model, stream)
  s = {**s, "importance": jax.tree.map(
      lambda a: jnp.asarray(rng.uniform(size=a.shape), a.dtype), s["omega"]),
       "anchor": jax.tree.map(lambda a: a + 0.05, model.params)}
  opt = m.optimizer(optax.sgd(0.1), model.params)
  step = train.make_train_step(m.loss_fn(model), opt,
                               update_method_state=m.update_method_state,
                               extra_args=m.extra_args)
  state = train.init_train_state(model.params, model.batch_stats, opt, s,
                                 stream.logit_masks(0))
  batch = {k: getattr(stream.tasks[0].train, k)[:16] for k in "xyt"}
  new, _ = jax.jit(step)(state, batch, jax.random.key(0))
  masks = jnp.asarray(stream.logit_masks(0))
  ce_g = jax.grad(lambda p: m.loss_fn(model)(
      p, model.batch_stats, s, batch, masks, None)[1][0]["ce"])(model.params)
  want = jax.tree.map(lambda g, a, b: -g * (b - a), ce_g, model.params,
                      new.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3,
                                                       atol=1e-9),
               new.method_state["omega"], want)


def test_distillation_off_on_first_task_on_after(stream):
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(8,))
  for m in (methods.KD(1.0, 2.0), methods.LwF(1.0, 2.0)):
    s = m.init_state(model, stream)
    batch = {"x": stream.tasks[1].train.x[:8], "y": stream.tasks[1].train.y[:8],
             "t": stream.tasks[1].train.t[:8]}
    masks = jnp.asarray(stream.logit_masks(1))
    loss = m.loss_fn(model)
    moved = jax.tree.map(lambda p: p * 1.5, model.params)
    terms = loss(moved, model.batch_stats, s, batch, masks, None)[1][0]
    assert float(terms[m.term]) == 0.0
    s = m.on_task_end(_ctx(stream, model, model.params, s))
    terms = loss(moved, model.batch_stats, s, batch, masks, None)[1][0]
    assert float(terms[m.term]) > 0.0
    (zs, _), _ = model.apply(moved, model.batch_stats, batch["x"])
    (zt, _), _ = model.apply(model.params, model.batch_stats, batch["x"])
    old = np.zeros(10, bool)
    old[stream.tasks[0].classes] = True
    want = (losses.kd_loss(zs, zt, 2.0, old) if m.name == "kd" else
            losses.lwf_loss(zs, zt, np.stack([old, ~old & False,
                                              ~old & False]), 2.0))
    np.testing.assert_allclose(terms[m.term], want, rtol=1e-5)


def _soft_ce_loop(zs, zt, classes, temp):
  """mean_i -sum_{c in classes} softmax(zt_i/T)_c log softmax(zs_i/T)_c,
  the softmaxes over ``classes`` only, in float64."""
  out = []
  for s_i, t_i in zip(np.asarray(zs, np.float64), np.asarray(zt, np.float64)):
    a, b = t_i[classes] / temp, s_i[classes] / temp
    p = np.exp(a - a.max())
    p /= p.sum()
    logq = b - b.max() - np.log(np.exp(b - b.max()).sum())
    out.append(-(p * logq).sum())
  return np.mean(out)


@pytest.mark.parametrize("incremental,heads,expect", [
    ("task", "auto", "per_task"), ("class", "auto", "sigmoid"),
    ("domain", "auto", "joint"), ("class", "per_task", "per_task"),
    ("class", "joint", "joint"), ("task", "joint", "joint"),
    ("task", "sigmoid", "sigmoid")])
def test_lwf_heads_by_scenario(digits, incremental, heads, expect):
  # In class-IL, distilling inside each old task's own softmax equalled
  # fine-tuning for every lambda; LwF.MC distils all old classes jointly. In
  # domain-IL every old task is all the classes: distil once, not per task.
  stream = data.class_splits(digits, 5, incremental=incremental)
  model = models.build_model("mlp", stream.input_shape, stream.num_classes,
                             hidden=(8,))
  m = methods.LwF(1.0, 2.0, heads=heads)
  s = m.init_state(model, stream)
  for k in range(3):  # three old tasks
    s = m.on_task_end(_ctx(stream, model, model.params, s, k))
  batch = {k: getattr(stream.tasks[3].train, k)[:8] for k in "xyt"}
  moved = jax.tree.map(lambda p: p * 1.5, model.params)
  terms = m.loss_fn(model)(moved, model.batch_stats, s, batch,
                           jnp.asarray(stream.logit_masks(3)), None)[1][0]
  (zs, _), _ = model.apply(moved, model.batch_stats, batch["x"])
  (zt, _), _ = model.apply(model.params, model.batch_stats, batch["x"])
  groups = [np.unique(stream.tasks[k].classes) for k in range(3)]
  old = np.unique(np.concatenate(groups))
  if expect == "joint":
    want = _soft_ce_loop(zs, zt, old, 2.0)
  elif expect == "sigmoid":  # LwF.MC: BCE against the old sigmoid outputs
    sig = lambda a: 1 / (1 + np.exp(-np.asarray(a, np.float64)))
    active = np.asarray(stream.logit_masks(3))[np.asarray(batch["t"])]
    want = np.mean([sum(-(sig(zt[i, c]) * np.log(sig(zs[i, c])) +
                          (1 - sig(zt[i, c])) * np.log(1 - sig(zs[i, c])))
                        for c in old if active[i, c]) for i in range(8)])
  else:
    want = sum(_soft_ce_loop(zs, zt, g, 2.0) for g in groups)
  np.testing.assert_allclose(terms["lwf"], want, rtol=1e-4)


@pytest.mark.parametrize("name,kw,match", [
    ("ewc", {"lam": -1.0}, "lam"), ("l2", {"lam": -0.1}, "lam"),
    ("lwf", {"heads": "both"}, "heads"),
    ("si", {"xi": 0.0}, "xi"), ("si", {"c": -1.0}, "c"),
    ("mas", {"lam": -2.0}, "lam"), ("kd", {"temperature": 0.0}, "temperature"),
    ("lwf", {"temperature": -1.0}, "temperature"),
    ("online_ewc", {"gamma": 1.5}, "gamma"),
    ("ewc", {"chunk_size": 0}, "chunk_size"), ("ewc", {"nope": 1}, "nope"),
    ("ewc", {"path": "batch"}, "path"), ("mas", {"samples": 0}, "samples"),
    ("online_ewc", {"estimator": "minibatch"}, "estimator"),
    ("si", {"form": "optax"}, "form"), ("gem", {"margin": -1.0}, "margin"),
    ("gem", {"memory_size": 0}, "memory_size"),
    ("agem", {"ref_size": 0}, "ref_size"),
    ("lwf", {"warmup_epochs": -1}, "warmup_epochs"),
    ("agem", {"memory": "ring"}, "memory"),
    ("dgr", {"gen_units": 0}, "gen_units"),
    # strings, inf and booleans (a plain comparison took or crashed on them)
    ("packnet", {"prune": "0.5"}, "prune must be a real number"),
    ("cpg", {"prune": 1.0}, "prune must be finite and in"),
    ("rwalk", {"alpha": float("inf")}, "alpha"),
    ("gem", {"margin": "a"}, "margin must be a real number"),
    ("kd", {"temperature": float("inf")}, "temperature must be finite"),
    ("e2eil", {"temperature": "2"}, "temperature"),
    ("wa", {"temperature": float("nan")}, "temperature must be finite"),
    ("online_ewc", {"gamma": True}, "gamma must be a real number"),
    ("si", {"xi": float("inf")}, "xi must be finite")])
def test_bad_hyperparameters(name, kw, match):
  with pytest.raises(ValueError, match=match):
    methods.build_method(name, **kw)


@pytest.mark.parametrize("method", ALL, ids=lambda m: m.name + str(getattr(
    m, "memory", "")) + getattr(m, "selection", ""))
def test_scan_and_host_loops_are_bit_identical(stream, method):
  # The same batches, the same step: as a lax.scan over device-resident
  # data or fed from the host, the same parameters, matrices and curves.
  out = {}
  for loop in ("host", "scan"):
    model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,),
                               head=method.head)
    out[loop] = train.run_stream(
        stream, type(method)(**{k: v for k, v in vars(method).items()
                                if not k.startswith("_") and k in
                                methods.hyperparameters(type(method))}),
        model, optax.sgd(0.05, momentum=0.9), epochs=1, batch_size=32,
        eval_every=5, progress=False, loop=loop, scan_chunk=4)
  a, b = out["host"], out["scan"]  # (evaluated split by split / on device)
  for key in a:
    if key.startswith("accuracy_matrix"):  # iCaRL's nearest mean too
      assert a[key] == b[key], key
  assert a["curves"] == b["curves"] and a["steps"] == b["steps"]
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(a["final_state"].params),
               jax.device_get(b["final_state"].params))


@pytest.mark.parametrize("name,net", [
    ("finetune", "cnn"), ("agem", "cnn"), ("ewc", "cnn"), ("ewc", "resnet")])
def test_scan_and_host_loops_are_bit_identical_for_conv_nets(stream, name,
                                                             net):
  # In the scan their convolutions' gradients run inside a loop, where
  # XLA:CPU does not rewrite them into its fast form itself
  # (cljax.models._conv): the same results to the bit as at the host loop's
  # top level. The ResNet: BatchNorm, strided and 1x1 projection convs.
  out = {}
  for loop in ("host", "scan"):
    model = models.build_model("cnn", stream.input_shape, 10) if (
        net == "cnn") else models.functional(models.ResNet(
            1, 10, widths=(4, 8), blocks=(1, 1), shortcut="B",
            rngs=nnx.Rngs(0)))
    out[loop] = train.run_stream(
        stream, methods.build_method(name), model, optax.sgd(0.05),
        epochs=1, batch_size=32, eval_every=5, progress=False, loop=loop,
        scan_chunk=4)
  a, b = out["host"], out["scan"]
  assert a["accuracy_matrix"] == b["accuracy_matrix"]
  assert a["curves"] == b["curves"]
  jax.tree.map(np.testing.assert_array_equal,
               jax.device_get(a["final_state"].params),
               jax.device_get(b["final_state"].params))
