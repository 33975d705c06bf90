import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cljax import data, methods, models, train
from cljax.methods._base import Phase


def _counting(method_cls):
  """A method whose loss counts its traces (one per compilation of the
  train step) and a model whose eval-mode apply counts its traces."""
  counts = {"train": 0, "eval": 0}

  class Counted(method_cls):

    def loss_fn(self, model):
      inner = super().loss_fn(model)

      def loss(*args):
        counts["train"] += 1
        return inner(*args)

      return loss

  def wrap(model):
    def apply(params, stats, x, train=False):
      if not train:
        counts["eval"] += 1
      return model.apply(params, stats, x, train=train)
    return model._replace(apply=apply)

  return Counted(), wrap, counts


@pytest.mark.parametrize("method_cls", [methods.FineTune, methods.Joint])
def test_compile_count_two_vs_six_tasks(digits, method_cls):
  """A 2-task and a 6-task stream compile the train and eval steps equally
  often: once each (the loss is traced once more by the runner's
  ``eval_shape`` of its term names)."""
  seen = []
  for sizes in ((5, 5), (2, 2, 2, 2, 1, 1)):
    stream = data.class_splits(digits, len(sizes), task_sizes=sizes)
    method, wrap, counts = _counting(method_cls)
    model = wrap(models.build_model("mlp", stream.input_shape, 10, hidden=(16,)))
    train.run_stream(stream, method, model, optax.sgd(0.1), epochs=1,
                     batch_size=16, eval_every=7, progress=False)
    seen.append(dict(counts))
  assert seen[0] == seen[1], seen
  assert seen[0]["train"] == 2, seen


def test_nan_stops_with_step_and_term(digits):
  stream = data.class_splits(digits, 2)

  class Exploding(methods.FineTune):
    def loss_fn(self, model):
      inner = super().loss_fn(model)

      def loss(params, stats, mstate, batch, masks, rng):
        ce, (terms, stats) = inner(params, stats, mstate, batch, masks, rng)
        # Finite for the first few steps, then NaN in the "boom" term only.
        boom = jnp.where(jnp.abs(params["head"]["bias"][0]) > 1e-3,
                         jnp.nan, 0.0)
        return ce + boom, ({**terms, "boom": boom}, stats)

      return loss

  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,))
  with pytest.raises(FloatingPointError, match=r"'boom'.*step \d+"):
    train.run_stream(stream, Exploding(), model, optax.sgd(0.1), epochs=1,
                     batch_size=32, progress=False)


def _nan_case(term_value):
  def loss(params, stats, mstate, batch, masks, rng):
    value = jnp.sum(params["head"]["bias"]) * batch["x"].sum()
    other = term_value(params)
    return value + other, ({"a": value, "b": other}, stats)
  return loss


@pytest.mark.parametrize("case,opt,match", [
    # A finite term with a NaN gradient: the update used to be applied and
    # the NaN reported as "'a' at step 1".
    (lambda p: jnp.sqrt(0.0 * p["head"]["bias"][0]), optax.sgd(0.1),
     "the gradient of the total loss .* at step 0"),
    (lambda p: jnp.sum(p["head"]["bias"]) * jnp.nan, optax.sgd(0.1),
     "loss term 'b' was NaN or inf at step 0"),
    (lambda p: 0.0 * jnp.sum(p["head"]["bias"]), optax.sgd(jnp.inf),
     "the update .* at step 0"),
])
def test_nan_attribution(case, opt, match):
  model = models.build_model("mlp", (2, 2, 1), 3, hidden=(4,))
  step = jax.jit(train.make_train_step(_nan_case(case), opt))
  state = train.init_train_state(model.params, model.batch_stats, opt, (),
                                 np.ones((1, 3), bool))
  batch = {"x": np.ones((2, 2, 2, 1), np.float32), "y": np.zeros(2, np.int32),
           "t": np.zeros(2, np.int32)}
  before = jax.device_get(state.params)
  for _ in range(2):
    state, _ = step(state, batch, jax.random.key(0))
  jax.tree.map(np.testing.assert_array_equal, before,
               jax.device_get(state.params))
  with pytest.raises(FloatingPointError, match=match):
    train.check_finite(state, ["a", "b"])


def test_nan_step_skips_update():
  model = models.build_model("mlp", (2, 2, 1), 3, hidden=(4,))

  def loss(params, stats, mstate, batch, masks, rng):
    value = jnp.sum(params["head"]["bias"]) * batch["x"].sum()
    return value, ({"v": value}, stats)

  opt = optax.sgd(0.1)
  step = jax.jit(train.make_train_step(loss, opt))
  state = train.init_train_state(model.params, model.batch_stats, opt, (),
                                 np.ones((1, 3), bool))
  ok = {"x": np.ones((2, 2, 2, 1), np.float32), "y": np.zeros(2, np.int32),
        "t": np.zeros(2, np.int32)}
  bad = {**ok, "x": np.full((2, 2, 2, 1), np.inf, np.float32)}
  state, _ = step(state, ok, jax.random.key(0))
  before = jax.device_get(state.params)
  state, _ = step(state, bad, jax.random.key(0))
  state, _ = step(state, ok, jax.random.key(0))  # skipped too: stopped
  jax.tree.map(np.testing.assert_array_equal, before,
               jax.device_get(state.params))
  assert int(state.nonfinite_step) == 1
  with pytest.raises(FloatingPointError, match="'v'.*step 1"):
    train.check_finite(state, ["v"])


def test_bad_run_arguments(digits):
  stream = data.class_splits(digits, 2)
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(8,))
  with pytest.raises(ValueError, match="epochs"):
    train.run_stream(stream, methods.FineTune(), model, optax.sgd(0.1),
                     epochs=0, batch_size=32, progress=False)
  with pytest.raises(ValueError, match="batch_size"):
    train.run_stream(stream, methods.FineTune(), model, optax.sgd(0.1),
                     epochs=1, batch_size=100000, progress=False)
  small = models.build_model("mlp", stream.input_shape, 7, hidden=(8,))
  with pytest.raises(ValueError, match="head"):
    train.run_stream(stream, methods.FineTune(), small, optax.sgd(0.1),
                     epochs=1, batch_size=32, progress=False)
  with pytest.raises(ValueError, match="task_lrs"):
    train.run_stream(stream, methods.FineTune(), model, optax.sgd(0.1),
                     epochs=1, batch_size=32, progress=False,
                     task_lrs=[0.1, -1.0])
  for key, value in (("epochs", np.float32(1.5)), ("seed", -1),
                     ("eval_every", jnp.array(-2)),
                     ("checkpoint_every", 0.5)):
    kw = dict(epochs=1, batch_size=32, progress=False)
    kw[key] = value
    with pytest.raises(ValueError, match=key):
      train.run_stream(stream, methods.FineTune(), model, optax.sgd(0.1),
                       **kw)
  with pytest.raises(ValueError, match="task_lrs"):
    train.run_stream(stream, methods.FineTune(), model, optax.sgd(0.1),
                     epochs=1, batch_size=32, progress=False,
                     task_lrs=[0.1, float("nan")])
  with pytest.raises(ValueError, match="inject_hyperparams"):
    train.run_stream(stream, methods.FineTune(), model, optax.sgd(0.1),
                     epochs=1, batch_size=32, progress=False,
                     task_lrs=[0.1, 0.01])


def test_task_lrs_change_the_lr_without_recompiling(digits):
  # Task 2 at lr 0: its parameters stay those after task 1.
  stream = data.class_splits(digits, 2)
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(8,))
  opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
  traces = [0]
  inner = methods.FineTune().loss_fn(model)

  class Counted(methods.FineTune):
    def loss_fn(self, model):
      def loss(*a):
        traces[0] += 1
        return inner(*a)
      return loss

  full = train.run_stream(stream, Counted(), model, opt, epochs=1,
                          batch_size=32, progress=False, task_lrs=[0.1, 1e-30])
  one = train.run_stream(data.Stream(stream.name, stream.kind,
                                     stream.tasks[:1], stream.num_classes),
                         methods.FineTune(), model, opt, epochs=1,
                         batch_size=32, progress=False)
  assert traces[0] == 2  # eval_shape + one compilation
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               full["final_state"].params, one["final_state"].params)


def test_task_lrs_hold_in_phases_with_an_optimizer_state_of_their_own(
    digits):
  # A phase with a fresh optimizer state (or a scaled rate) starts at the
  # task's rate too: at lr ~0 in task 2, nothing moves in either phase.
  stream = data.class_splits(digits, 2)
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(8,))
  opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)

  class TwoPhases(methods.FineTune):
    def phases(self, index):
      return (Phase(), Phase("again", fresh_optimizer=True),
              Phase("scaled", lr_scale=0.5))

  full = train.run_stream(stream, TwoPhases(), model, opt, epochs=1,
                          batch_size=32, progress=False, task_lrs=[0.1, 1e-30])
  one = train.run_stream(data.Stream(stream.name, stream.kind,
                                     stream.tasks[:1], stream.num_classes),
                         TwoPhases(), model, opt, epochs=1,
                         batch_size=32, progress=False)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               full["final_state"].params, one["final_state"].params)


def test_frozen_backbone_trains_only_the_head(digits):
  stream = data.class_splits(digits, 2)
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(8,))
  res = train.run_stream(stream, methods.FineTune(freeze_backbone=True), model,
                         optax.sgd(0.1), epochs=1, batch_size=32,
                         progress=False)
  p = jax.device_get(res["final_state"].params)
  jax.tree.map(np.testing.assert_array_equal, p["layers"],
               jax.device_get(model.params["layers"]))
  assert not np.array_equal(p["head"]["kernel"],
                            np.asarray(model.params["head"]["kernel"]))


@pytest.mark.parametrize("section", ["steps", "rows", "memory", "importance",
                                     "herding", "runs"])
def test_one_vs_four_devices(section):
  """1 device and 4 (shard_map, pmap) compute the same: one section of
  ``multidevice_check.py`` (its ``SECTIONS``).

  Runs in a subprocess (chex.set_n_cpu_devices): the simulated device count
  is fixed when JAX starts.
  """
  script = os.path.join(os.path.dirname(__file__), "multidevice_check.py")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, script, section], env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  assert f"checks passed: {section}" in out.stdout


def test_float16_parameters_do_not_trip_the_finiteness_check():
  # A sum of 70,000 float16 ones overflowed float16 and read as divergence.
  params = {"head": {"w": jnp.ones((70000,), jnp.float16)}}

  def loss(params, stats, mstate, batch, masks, rng):
    value = jnp.sum(params["head"]["w"].astype(jnp.float32)) * 1e-6
    return value, ({"v": value}, stats)

  opt = optax.sgd(1e-3)
  step = jax.jit(train.make_train_step(loss, opt))
  state = train.init_train_state(params, {}, opt, (), np.ones((1, 3), bool))
  batch = {"x": np.ones((2, 1), np.float32), "y": np.zeros(2, np.int32),
           "t": np.zeros(2, np.int32)}
  state, _ = step(state, batch, jax.random.key(0))
  train.check_finite(state, ["v"])
  assert int(state.nonfinite_step) == -1


@pytest.mark.parametrize("incremental", ["class", "task"])
def test_forward_transfer_compares_like_with_like(digits, incremental):
  # In class-IL, FWT used to be -mean(b): R[j-1][j] was measured with task
  # j's classes masked (always 0), b[j] with them active.
  stream = data.class_splits(digits, 5, incremental=incremental)
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,))
  res = train.run_stream(stream, methods.FineTune(), model, optax.sgd(0.1),
                         epochs=1, batch_size=32, progress=False)
  r, b = np.asarray(res["accuracy_matrix"]), res["random_init_accuracy"]
  if incremental == "class":
    assert np.all(r[np.triu_indices(5, 1)] == 0)  # unseen classes masked
    assert "forward_transfer" not in res["metrics"]  # not applicable
  else:
    want = np.mean([r[j - 1, j] - b[j] for j in range(1, 5)])
    assert res["metrics"]["forward_transfer"] == pytest.approx(want)
    assert np.all(r[np.triu_indices(5, 1)] > 0)  # measurable before training


def test_random_init_accuracy_predicts_as_the_method_does(digits):
  # b[j] is compared with R[j-1][j], which the method predicts through its
  # eval_params (HAT's gates, PathNet's path); b[j] was measured with the
  # raw parameters. Here eval_params answers task j with the first class of
  # task j when asked as after task j - 1 (else the second), so b[j] is
  # that class's share of task j's test split.
  stream = data.class_splits(digits, 5, incremental="task")

  class FirstClass(methods.FineTune):
    def eval_params(self, s, params, batch_stats, task, current):
      first = stream.tasks[task].classes[int(current != max(task - 1, 0))]
      head = {"kernel": jnp.zeros_like(params["head"]["kernel"]),
              "bias": jnp.zeros(10).at[first].set(1.0)}
      return {**params, "head": head}, batch_stats

  model = models.build_model("mlp", stream.input_shape, 10, hidden=(16,))
  res = train.run_stream(stream, FirstClass(), model, optax.sgd(0.1),
                         epochs=1, batch_size=32, progress=False)
  want = [float(np.mean(t.test.y == t.classes[0])) for t in stream.tasks]
  np.testing.assert_allclose(res["random_init_accuracy"], want)


def test_steps_per_task_instead_of_epochs(digits):
  stream = data.class_splits(digits, 2)
  per_epoch = [len(t.train) // 32 for t in stream.tasks]
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(8,))
  res = train.run_stream(stream, methods.FineTune(), model, optax.sgd(0.1),
                         epochs=1, batch_size=32, task_steps=50,
                         progress=False)
  assert res["steps"] == 100 and min(per_epoch) < 50  # epochs cut short
  # LwF's warm-up keeps its own epochs; the main phase gets the budget.
  res = train.run_stream(stream, methods.LwF(warmup_epochs=1), model,
                         optax.sgd(0.1), epochs=1, batch_size=32,
                         task_steps=50, progress=False)
  assert res["steps"] == 100 + per_epoch[1]


def test_auto_loop_feeds_slow_convolutions_from_the_host_on_cpu():
  # XLA:CPU runs a convolution outside its fast form inside lax.scan ~20x
  # slower than outside it, so loop="auto" must not pick the scan engine
  # for a model whose gradient has one there. cljax's networks have none
  # (their convolutions take canonical_conv's VJP in the step); a grouped
  # convolution keeps JAX's own.
  from cljax.train._epochs import loops_are_slow
  x = np.zeros((1, 28, 28, 1), np.float32)
  cnn = models.build_model("cnn", (28, 28, 1), 10)
  mlp = models.build_model("mlp", (28, 28, 1), 10, hidden=(8,))
  assert not loops_are_slow(cnn, x)
  assert not loops_are_slow(mlp, x)
  assert not loops_are_slow(models.build_model("resnet32", (8, 8, 3), 10),
                            np.zeros((1, 8, 8, 3), np.float32))

  class Grouped(models.CNN):
    def __init__(self, rngs):
      super().__init__(1, 10, channels=(4, 8), rngs=rngs)
      self.convs[1] = nnx.Conv(4, 8, (3, 3), feature_group_count=2,
                               rngs=rngs)

  grouped = models.functional(Grouped(nnx.Rngs(0)))
  assert loops_are_slow(grouped, x) == (jax.default_backend() == "cpu")


def test_bfloat16_run_tracks_float32_and_compiles_once(digits):
  """A short bfloat16 run: each step's loss within a small relative
  distance of the float32 run's, and the train step compiled once for the
  stream (the same count as float32)."""
  stream = data.class_splits(digits, 2)
  terms, counts = {}, {}
  for dtype in ("float32", "bfloat16"):
    method, wrap, count = _counting(methods.FineTune)
    model = wrap(models.build_model("mlp", stream.input_shape, 10,
                                    hidden=(32,), dtype=dtype))
    seen = []

    class Writer:
      def write_scalars(self, step, scalars):
        if "train/ce" in scalars:
          seen.append(float(scalars["train/ce"]))

      def truncate(self, step):
        pass

      def close(self):
        pass

    train.run_stream(stream, method, model, optax.sgd(0.05), epochs=1,
                     batch_size=32, progress=False, writer=Writer(),
                     log_every=1)
    terms[dtype], counts[dtype] = np.asarray(seen), dict(count)
  assert len(terms["float32"]) == len(terms["bfloat16"]) > 20
  rel = np.abs(terms["bfloat16"] - terms["float32"]) / terms["float32"]
  assert rel.max() < 0.05, rel.max()
  assert counts["bfloat16"] == counts["float32"]
  assert counts["bfloat16"]["train"] == 2  # eval_shape + one compilation
