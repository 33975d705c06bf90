"""Hyperparameters as data: a vmapped sweep equals its members run one by
one, for every method that reads hyperparameters as data."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cljax import data, methods, models, train
from cljax.methods._base import TaskContext

# name -> (structural settings, three members' data hyperparameters)
SWEEPS = {  # two members each, far apart
    "l2": ({}, [dict(lam=0.1), dict(lam=10.0)]),
    "ewc": (dict(fisher_samples=40), [dict(lam=1.0), dict(lam=100.0)]),
    "online_ewc": (dict(fisher_samples=40), [dict(lam=1.0, gamma=0.5),
                                              dict(lam=100.0, gamma=0.9)]),
    "si": ({}, [dict(c=0.01, xi=1e-3), dict(c=1.0, xi=0.1)]),
    "rwalk": (dict(update_every=2), [dict(lam=0.1, alpha=0.5, eps=1e-3),
                                     dict(lam=10.0, alpha=0.9, eps=0.1)]),
    "mas": (dict(samples=40), [dict(lam=0.1), dict(lam=10.0)]),
    "kd": ({}, [dict(lam=0.5, temperature=1.0),
                dict(lam=4.0, temperature=4.0)]),
    "lwf": ({}, [dict(lam=0.5, temperature=1.0),
                 dict(lam=4.0, temperature=4.0)]),
    "der": (dict(memory_size=30), [dict(alpha=0.1), dict(alpha=1.0)]),
    "mir": (dict(memory_size=30, subsample=12, replay_size=4),  # selects
            [dict(virtual_lr=0.01), dict(virtual_lr=1.0)]),
    "derpp": (dict(memory_size=30), [dict(alpha=0.1, beta=0.5),
                                     dict(alpha=1.0, beta=0.1)]),
    "gem": (dict(memory_size=16), [dict(margin=0.0), dict(margin=2.0)]),
    "e2eil": (dict(memory_size=30), [dict(temperature=1.0),
                                     dict(temperature=4.0)]),
    "ucir": (dict(memory_size=30), [dict(lambda_base=1.0, margin=0.1),
                                    dict(lambda_base=10.0, margin=1.0)]),
    "wa": (dict(memory_size=30), [dict(temperature=1.0),
                                  dict(temperature=4.0)]),
    "bic": (dict(memory_size=40, val_size=10), [dict(temperature=1.0),
                                                dict(temperature=4.0)]),
    "hat": ({}, [dict(c=0.1, smax=50.0), dict(c=2.0, smax=400.0)]),
    "dgr_distill": (dict(z_dim=4, gen_units=16), [dict(temperature=1.0),
                                                  dict(temperature=4.0)]),
}
TRACEABLE_TASK_END = ("l2", "ewc", "online_ewc", "si", "rwalk", "mas", "kd",
                      "lwf")
STEPS, BATCH = 3, 16


@pytest.fixture(scope="module")
def stream(digits):
  return data.class_splits(digits, 3, task_sizes=(4, 3, 3))


def _batches(stream, task):
  split = stream.tasks[task].train
  return [{k: jnp.asarray(getattr(split, k)[i * BATCH:(i + 1) * BATCH])
           for k in "xyt"} for i in range(STEPS)]


def _ctx(stream, model, state, task, seed=0):
  return TaskContext(task, stream, model, state.params, state.batch_stats,
                     state.method_state, stream.logit_masks(task), seed)


def test_every_method_declares_its_data_hyperparameters():
  for name in SWEEPS:
    cls = methods.METHODS[name]
    hparams = methods.hyperparameters(cls)
    assert set(cls.data_hparams) <= set(hparams)
    assert all(isinstance(hparams[k], float) for k in cls.data_hparams)
  assert set(SWEEPS) == {n for n, c in methods.METHODS.items()
                         if c.data_hparams}


# Families whose case repeats another's step (the default suite skips
# them; -m slow runs them).
SLOW_SWEEPS = ("dgr_distill", "hat")


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in SLOW_SWEEPS else n
    for n in sorted(SWEEPS)])
def test_vmapped_sweep_equals_the_members_one_by_one(stream, name):
  structural, members = SWEEPS[name]
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,),
                             head=methods.METHODS[name].head)
  opt = optax.sgd(0.05, momentum=0.5)
  key = jax.random.key(3)

  def run_alone(hp):  # a method built from its constructor, jitted alone
    m = methods.build_method(name, **structural, **hp)
    o = m.optimizer(opt, model.params)
    state = train.init_train_state(model.params, model.batch_stats, o,
                                   m.init_state(model, stream),
                                   stream.logit_masks(0))
    step = jax.jit(train.make_train_step(  # after init_state, as run_stream
        m.loss_fn(model), o, update_method_state=m.update_method_state,
        extra_args=m.extra_args, batch_fn=m.batch_fn))
    for task in (0, 1):
      for b in _batches(stream, task):
        state, _ = step(state, b, key)
      if task == 0:
        state = state._replace(
            method_state=m.on_task_end(_ctx(stream, model, state, 0)),
            masks=jnp.asarray(stream.logit_masks(1)))
        state = state._replace(  # e.g. the share of old classes
            method_state=m.on_task_start(_ctx(stream, model, state, 1)))
    return state

  method = methods.build_method(name, **structural)
  hps = train.stack_hparams(method, members)
  o = method.optimizer(opt, model.params)
  one = train.init_train_state(model.params, model.batch_stats, o,
                               method.init_state(model, stream),
                               stream.logit_masks(0))
  states = train.stack([one] * len(members))
  step = train.vmap_step(method, model, opt)
  for task in (0, 1):
    for b in _batches(stream, task):
      states, terms = step(hps, states, b, key)
    if task == 0:
      if name in TRACEABLE_TASK_END:
        ms = train.vmap_task_end(method, _ctx(stream, model, one, 0), hps,
                                 states)
      else:  # host-side selection (herding): member by member
        ms = train.stack([
            method.with_hparams(**train.member(hps, k)).on_task_end(
                _ctx(stream, model, train.member(states, k), 0))
            for k in range(len(members))])
      states = states._replace(method_state=ms, masks=jnp.asarray(
          np.stack([stream.logit_masks(1)] * len(members))))
      states = states._replace(method_state=train.stack([
          method.with_hparams(**train.member(hps, k)).on_task_start(
              _ctx(stream, model, train.member(states, k), 1))
          for k in range(len(members))]))
  assert all(np.shape(v) == (len(members),) for v in terms.values())
  outs = [run_alone(hp) for hp in members]
  for k, alone in enumerate(outs):
    got = train.member(states, k)
    assert int(got.step) == int(alone.step) == 2 * STEPS
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=2e-5, atol=2e-6), (got.params, got.method_state),
                 (alone.params, alone.method_state))
  # The members differ (the hyperparameters reached the step).
  p = [jax.tree.leaves(train.member(states.params, k)) for k in range(2)]
  assert not all(np.allclose(a, b) for a, b in zip(p[0], p[1]))


def test_a_diverging_member_stops_and_the_others_go_on(stream):
  """Learning rates as data (``inject_hyperparams``): the member at lr 1e30
  goes inf and freezes; its neighbours train as they would alone."""
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,))
  opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
  method = methods.EWC(10.0, fisher_samples=40)
  one = train.init_train_state(model.params, model.batch_stats,
                               method.optimizer(opt, model.params),
                               method.init_state(model, stream),
                               stream.logit_masks(0))
  lrs = (0.1, 1e30, 0.05)
  states = train.stack([one._replace(opt_state=train._phases.set_learning_rate(
      one.opt_state, lr)) for lr in lrs])
  step = train.vmap_step(method, model, opt)
  hps = train.stack_hparams(method, [{}] * 3)
  for b in _batches(stream, 0):
    states, _ = step(hps, states, b, jax.random.key(0))
  assert train.diverged(states).tolist() == [False, True, False]
  bad = train.member(states, 1)
  assert int(bad.nonfinite_step) == 1  # step 0 made it huge, step 1 inf
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(bad.params))
  for k in (0, 2):
    assert int(train.member(states, k).nonfinite_step) == -1


def test_a_phase_of_its_own_sweeps_too(stream):
  """LwF's head-only warm-up: the vmapped phase step equals each member's
  phase step as run_stream builds it (``phase_parts``)."""
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,))
  opt = optax.sgd(0.05)
  phase = methods.LwF().phases(1)[0]
  assert phase.head_only
  members = [dict(lam=0.5, temperature=1.0), dict(lam=2.0, temperature=4.0)]
  key, batches = jax.random.key(1), _batches(stream, 1)

  def start(m):
    ms = m.init_state(model, stream)
    one = train.init_train_state(model.params, model.batch_stats,
                                 m.optimizer(opt, model.params), ms,
                                 stream.logit_masks(0))
    ms = m.on_task_end(_ctx(stream, model, one, 0))
    _, o = train._phases.phase_parts(m, model, m.optimizer(opt, model.params),
                                   phase)
    return train.init_train_state(model.params, model.batch_stats, o, ms,
                                  stream.logit_masks(1)), o

  alone = []
  for hp in members:
    m = methods.LwF(**hp)
    state, _ = start(m)
    loss_fn, o = train._phases.phase_parts(m, model, m.optimizer(
        opt, model.params), phase)
    step = jax.jit(train.make_train_step(loss_fn, o))
    for b in batches:
      state, _ = step(state, b, key)
    alone.append(state)
  method = methods.LwF()
  one, _ = start(method)
  states = train.stack([one] * 2)
  step = train.vmap_step(method, model, opt, phase=phase)
  hps = train.stack_hparams(method, members)
  for b in batches:
    states, _ = step(hps, states, b, key)
  for k, a in enumerate(alone):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5,
                                                         atol=2e-6),
                 train.member(states, k).params, a.params)
  # Head only: the backbone did not move.
  np.testing.assert_array_equal(
      train.member(states, 0).params["layers"][0]["kernel"],
      model.params["layers"][0]["kernel"])


def test_bad_sweeps_are_refused():
  with pytest.raises(ValueError, match="gamma must be finite and in"):
    train.stack_hparams(methods.OnlineEWC(), [dict(lam=1.0, gamma=3.0)])
  with pytest.raises(ValueError, match="lam"):
    train.stack_hparams(methods.EWC(), [dict(lam=1.0), dict(lam=-5.0)])
  with pytest.raises(ValueError, match="temperature must be finite and > 0"):
    train.stack_hparams(methods.LwF(), [dict(temperature=0.0)])
  with pytest.raises(ValueError, match="at least one member"):
    train.stack_hparams(methods.EWC(), [])
  with pytest.raises(ValueError, match=r"\['gamma'\] not among"):
    train.stack_hparams(methods.EWC(), [dict(gamma=0.5)])
  with pytest.raises(ValueError, match=r"\['memory_size'\] not among"):
    methods.ER().with_hparams(memory_size=3)


# run_sweep: (structural settings, two members with float32-exact values,
# loop). Every family: a penalty, a per-step state, distillation with a
# teacher, a projection, a reservoir, herding with a predictor, a phase of
# its own, start and end hooks.
RUNS = {
    "ewc": (dict(fisher_samples=40), [dict(lam=1.0), dict(lam=64.0)],
            "scan"),
    "si": ({}, [dict(c=0.5, xi=0.125), dict(c=2.0, xi=0.5)], "host"),
    "lwf": ({}, [dict(lam=0.5, temperature=1.0),
                 dict(lam=4.0, temperature=4.0)], "scan"),
    "gem": (dict(memory_size=16), [dict(margin=0.0), dict(margin=2.0)],
            "host"),
    "mir": (dict(memory_size=30, subsample=12, replay_size=4),  # selects
            [dict(virtual_lr=0.01), dict(virtual_lr=1.0)]),
    "derpp": (dict(memory_size=30), [dict(alpha=0.25, beta=0.5),
                                     dict(alpha=1.0, beta=0.125)], "scan"),
    "e2eil": (dict(memory_size=30), [dict(temperature=1.0),
                                     dict(temperature=4.0)], "host"),
    "ucir": (dict(memory_size=30), [dict(lambda_base=1.0, margin=0.125),
                                    dict(lambda_base=8.0, margin=1.0)],
             "scan"),
    "wa": (dict(memory_size=30), [dict(temperature=1.0),
                                  dict(temperature=4.0)], "scan"),
    "bic": (dict(memory_size=40, val_size=10), [dict(temperature=1.0),
                                                dict(temperature=4.0)],
            "host"),
}
# The default suite's share (the others repeat a family; -m slow runs them).
QUICK_RUNS = ("ewc", "si", "bic")


def _run_settings(loop):
  return dict(epochs=1, batch_size=16, seed=1, eval_every=20, loop=loop,
              scan_chunk=8, progress=False)


@pytest.mark.parametrize("name", [
    n if n in QUICK_RUNS else pytest.param(n, marks=pytest.mark.slow)
    for n in sorted(RUNS)])
def test_run_sweep_equals_run_stream_member_by_member(stream, name):
  """``run_sweep``'s per-member results (accuracy matrices, curves, other
  classifiers' matrices, final parameters) are ``run_stream``'s for each
  member alone."""
  structural, members, loop = RUNS[name]
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,),
                             head=methods.METHODS[name].head)
  opt = optax.sgd(0.05, momentum=0.5)
  got = train.run_sweep(stream, methods.build_method(name, **structural),
                        members, model, opt, **_run_settings(loop))
  assert len(got) == len(members)
  for hp, res in zip(members, got):
    alone = train.run_stream(stream, methods.build_method(
        name, **structural, **hp), model, opt, **_run_settings(loop))
    for key in alone:
      if key.startswith(("accuracy_matrix", "val_accuracy", "random_init")):
        np.testing.assert_allclose(res[key], alone[key], atol=1e-6,
                                   err_msg=key)
    np.testing.assert_allclose([c["acc"] for c in res["curves"]],
                               [c["acc"] for c in alone["curves"]],
                               atol=1e-6)
    assert res["steps"] == alone["steps"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-4, atol=1e-5), res["final_state"].params,
                 alone["final_state"].params)
  assert got[0]["accuracy_matrix"] != got[1]["accuracy_matrix"] or not all(
      np.allclose(a, b) for a, b in zip(
          jax.tree.leaves(got[0]["final_state"].params),
          jax.tree.leaves(got[1]["final_state"].params)))


def test_run_sweep_predicts_with_each_members_hyperparameters(digits):
  # HAT's smax sets the gates it predicts with: each member's evaluation
  # uses its own (a sweep's member equals the run alone).
  stream = data.class_splits(digits, 2, task_sizes=(5, 5),
                             incremental="task")
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,),
                             head="gated")
  members = [dict(smax=1.0), dict(smax=400.0)]
  got = train.run_sweep(stream, methods.HAT(), members, model,
                        optax.sgd(0.05), **_run_settings("scan"))
  for hp, res in zip(members, got):
    alone = train.run_stream(stream, methods.HAT(**hp), model,
                             optax.sgd(0.05), **_run_settings("scan"))
    np.testing.assert_allclose(res["accuracy_matrix"],
                               alone["accuracy_matrix"], atol=1e-6)
  assert got[0]["accuracy_matrix"] != got[1]["accuracy_matrix"]


def test_run_sweep_reports_a_diverged_member_and_goes_on(stream):
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,))
  opt = optax.sgd(0.05)
  members = [dict(lam=1.0), dict(lam=1e38)]
  got = train.run_sweep(stream, methods.build_method("l2"), members, model,
                        opt, **_run_settings("scan"))
  assert set(got[1]) == {"diverged"}
  assert "NaN or inf" in got[1]["diverged"]
  alone = train.run_stream(stream, methods.build_method("l2", lam=1.0),
                           model, opt, **_run_settings("scan"))
  np.testing.assert_allclose(got[0]["accuracy_matrix"],
                             alone["accuracy_matrix"], atol=1e-6)


def test_run_sweep_compiles_its_step_once_and_resumes(stream, tmp_path,
                                                      monkeypatch):
  """One compilation of the vmapped step for the whole stream; a sweep
  killed after a task resumes from its checkpoint to the same results; a
  checkpoint of other members is refused."""
  from step_test import _counting
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,))
  method, wrap, counts = _counting(methods.EWC)
  members = [dict(lam=1.0), dict(lam=4.0), dict(lam=16.0)]
  kwargs = dict(_run_settings("scan"), checkpoint_dir=str(tmp_path / "ck"))
  full = train.run_sweep(stream, method, members, wrap(model),
                         optax.sgd(0.05), **kwargs)
  # eval_shape of the terms, then the one vmapped step's trace.
  assert counts["train"] == 2, counts

  class Killed(Exception):
    pass

  end, calls = methods.EWC.on_task_end, []

  def on_task_end(self, ctx):
    calls.append(ctx.index)
    if len(calls) == 4:  # task 2, first member: the process dies
      raise Killed
    return end(self, ctx)

  monkeypatch.setattr(methods.EWC, "on_task_end", on_task_end)
  kwargs["checkpoint_dir"] = str(tmp_path / "ck2")
  with pytest.raises(Killed):
    train.run_sweep(stream, methods.EWC(), members, model, optax.sgd(0.05),
                    **kwargs)
  monkeypatch.undo()
  again = train.run_sweep(stream, methods.EWC(), members, model,
                          optax.sgd(0.05), **kwargs)
  for a, b in zip(full, again):
    assert a["accuracy_matrix"] == b["accuracy_matrix"]
  with pytest.raises(ValueError, match="members"):
    train.run_sweep(stream, methods.EWC(), members[:2], model,
                    optax.sgd(0.05), **kwargs)


def test_bad_run_sweeps_are_refused(stream):
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,))
  run = lambda members, **kw: train.run_sweep(
      stream, methods.EWC(), members, model, optax.sgd(0.1),
      **{**_run_settings("scan"), **kw})
  with pytest.raises(ValueError, match="at least one member"):
    run([])
  with pytest.raises(ValueError, match="lam"):
    run([dict(lam=-1.0)])
  with pytest.raises(ValueError, match="not among"):
    run([dict(fisher_samples=3)])
  with pytest.raises(ValueError, match="one per member"):
    run([dict(lam=1.0)], writer=[])


# Seeds as members: (method, structural settings, loop).
SEED_RUNS = {"ewc": ("ewc", dict(fisher_samples=40), "scan"),
             "derpp": ("derpp", dict(memory_size=30), "host"),
             "bic": ("bic", dict(memory_size=40, val_size=10), "scan"),
             "icarl": ("icarl", dict(memory_size=30), "scan")}


@pytest.mark.parametrize("name", [
    n if n in ("ewc", "bic") else pytest.param(n, marks=pytest.mark.slow)
    for n in sorted(SEED_RUNS)])
def test_members_with_seeds_of_their_own_equal_their_runs_alone(digits,
                                                                 name):
  """``run_sweep`` with a seed, stream and initialisation per member (here
  each seed's validation carve-out and model) gives each member the results
  ``run_stream`` gives it alone: its own data, batches, keys and hooks."""
  kind, structural, loop = SEED_RUNS[name]
  seeds = [3, 5, 3]  # the third: member 0's seed with other data
  # Carve-outs with other class sizes (rehearsal pads them unequally).
  streams = [data.class_splits(digits, 3, task_sizes=(4, 3, 3),
                               val_fraction=0.25, seed=s) for s in (0, 5, 15)]
  head = methods.METHODS[kind].head
  models_ = [models.build_model("mlp", streams[0].input_shape, 10,
                                hidden=(16,), head=head, seed=s)
             for s in seeds]
  opt = optax.sgd(0.05, momentum=0.5)
  settings = dict(_run_settings(loop), seed=seeds)
  got = train.run_sweep(streams, methods.build_method(kind, **structural),
                        [{}] * 3, models_, opt, **settings)
  for m, res in enumerate(got):
    alone = train.run_stream(streams[m], methods.build_method(
        kind, **structural), models_[m], opt,
                             **dict(settings, seed=seeds[m]))
    for key in alone:
      if key.startswith(("accuracy_matrix", "val_accuracy", "random_init")):
        np.testing.assert_allclose(res[key], alone[key], atol=1e-6,
                                   err_msg=f"member {m}: {key}")
    np.testing.assert_allclose([c["acc"] for c in res["curves"]],
                               [c["acc"] for c in alone["curves"]],
                               atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-4, atol=1e-5), res["final_state"].params,
                 alone["final_state"].params)
  # The members did differ (seeds, data).
  assert len({json.dumps(r["accuracy_matrix"]) for r in got}) == 3


def test_members_with_seeds_of_their_own_resume_mid_task(digits, tmp_path,
                                                         monkeypatch):
  """Killed inside a task (after its 3rd checkpoint), a run of members with
  their own seeds and streams resumes to the uninterrupted run's results;
  a checkpoint of other seeds is refused."""
  streams = [data.class_splits(digits, 3, task_sizes=(4, 3, 3),
                               val_fraction=0.25, seed=s) for s in (0, 1)]
  model = models.build_model("mlp", streams[0].input_shape, 10,
                             hidden=(16,))
  kw = dict(_run_settings("scan"), seed=[0, 1], checkpoint_every=7,
            checkpoint_dir=str(tmp_path / "ck"))
  run = lambda **over: train.run_sweep(
      streams, methods.LwF(), [dict(lam=1.0), dict(lam=2.0)], model,
      optax.sgd(0.05), **{**kw, **over})
  full = run(checkpoint_dir=None, checkpoint_every=0)

  class Killed(Exception):
    pass

  save, saves = train.Checkpoints.save, []

  def dying_save(self, items, record):
    saves.append(record["position"])
    if len(saves) == 3:
      raise Killed
    return save(self, items, record)

  monkeypatch.setattr(train.Checkpoints, "save", dying_save)
  with pytest.raises(Killed):
    run()
  monkeypatch.undo()
  assert saves[-1] is not None  # inside a task
  again = run()
  for a, b in zip(full, again):
    np.testing.assert_allclose(a["accuracy_matrix"], b["accuracy_matrix"],
                               atol=1e-6)
  with pytest.raises(ValueError, match="other settings"):
    run(seed=[0, 2])


def test_bad_member_seeds_and_streams_are_refused(digits, stream):
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,))
  run = lambda s, md, seed: train.run_sweep(
      s, methods.EWC(), [{}, {}], md, optax.sgd(0.1),
      **{**_run_settings("scan"), "seed": seed})
  with pytest.raises(ValueError, match="one per member"):
    run(stream, model, [1, 2, 3])
  with pytest.raises(ValueError, match="seed must be finite and an integer"):
    run(stream, model, [1, -2])
  other = data.class_splits(digits, 3, task_sizes=(3, 4, 3))
  with pytest.raises(ValueError, match="member 1's stream"):
    run([stream, other], model, [0, 1])
  wide = models.build_model("mlp", stream.input_shape, 10, hidden=(8,))
  with pytest.raises(ValueError, match="member 1's model"):
    run(stream, [model, wide], [0, 1])
  half = models.build_model("mlp", stream.input_shape, 10, hidden=(16,),
                            dtype="bfloat16")
  with pytest.raises(ValueError, match="compute dtype"):
    run(stream, [model, half], [0, 1])
  with pytest.raises(ValueError, match="member 1's is not one seed"):
    run(stream, model, [0, [1, 2]])
  with pytest.raises(ValueError, match="member 1's is not one stream"):
    run([stream, None], model, [0, 1])
  with pytest.raises(ValueError, match="at least one member"):
    train.run_sweep([], methods.EWC(), [], model, optax.sgd(0.1),
                    **{**_run_settings("scan"), "seed": []})
  with pytest.raises(ValueError, match="seed must be one integer"):
    train.run_stream(stream, methods.EWC(), model, optax.sgd(0.1),
                     **{**_run_settings("scan"), "seed": [0, 1]})
