"""Run by step_test.py with 4 simulated CPU devices: the same computations on
1 device and on a 4-device mesh (shard_map, pmap) agree. (Not collected by
pytest: no test_ prefix.) Each section is its own test, so that pytest's
workers share them:

    python multidevice_check.py SECTION   # a name in SECTIONS
"""

import sys

import chex

chex.set_n_cpu_devices(4)  # before JAX starts its backend

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from cljax import _distributed, data, models, methods, train  # noqa: E402
from cljax.methods import TaskContext, _regularized  # noqa: E402
from cljax.methods._rehearsal import Rehearsal  # noqa: E402

assert jax.device_count() == 4, jax.devices()
key = jax.random.key(0)
mesh = jax.make_mesh((4,), ("data",))


def max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x, float) - np.asarray(y, float)),
                       initial=0.0))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def train_on(step, model, opt, masks, batches):
  """Parameters and BatchNorm statistics after ``step`` on ``batches``."""
  state = train.init_train_state(model.params, model.batch_stats, opt, (),
                                 masks)
  for b in batches:
    state, _ = step(state, b, key)
  return jax.device_get((state.params, state.batch_stats))


def random_batches(shape, n, seed):
  rng = np.random.default_rng(seed)
  return [{"x": rng.normal(size=(16, *shape)).astype(np.float32),
           "y": rng.integers(0, 10, 16).astype(np.int32),
           "t": np.zeros(16, np.int32)} for _ in range(n)]


def bn_resnet(in_channels):
  """A one-block-a-stage ResNet: BatchNorm as in ResNet-32's blocks."""
  return models.functional(models.ResNet(in_channels, 10, widths=(8, 16),
                                         blocks=(1, 1), shortcut="A",
                                         rngs=nnx.Rngs(0)))


def steps():
  """Fine-tuning steps on 1 device, under shard_map and (MLP) under pmap: the
  same parameters. Models without BatchNorm first (with it, each shard would
  normalise with its own batch statistics); then BatchNorm with
  cross-replica statistics (the default), running statistics included,
  while each shard normalising on its own (sync_bn=False) is a different
  computation; a batch that does not split is refused."""
  opt = optax.sgd(0.05, momentum=0.9)
  masks = np.ones((1, 10), bool)
  for name, shape in [("mlp", (8, 8, 1)), ("cnn", (8, 8, 3))]:
    model = models.build_model(name, shape, 10, hidden=(32,))
    loss = methods.FineTune().loss_fn(model)
    batches = random_batches(shape, 4, 0)
    run = lambda step: train_on(step, model, opt, masks, batches)
    single = run(jax.jit(train.make_train_step(loss, opt)))
    per_shard = train.make_train_step(loss, opt, axis_name="data")
    others = [run(train.data_parallel(per_shard, mesh))]
    if name == "mlp":  # the same step under pmap (the model is immaterial)
      pstep = jax.pmap(per_shard, axis_name="data", in_axes=(None, 0, None),
                       out_axes=None)
      split = lambda b: {k: v.reshape(4, -1, *v.shape[1:])
                         for k, v in b.items()}
      others.append(run(lambda s, b, k: pstep(s, split(b), k)))
    for other in others:
      diff = max_diff(single[0], other[0])
      print(name, "max abs diff", diff)
      assert diff < 1e-5, diff

  model = bn_resnet(3)
  loss = methods.FineTune().loss_fn(model)
  batches = random_batches((8, 8, 3), 3, 2)
  run = lambda step: train_on(step, model, opt, masks, batches)
  single = run(jax.jit(train.make_train_step(loss, opt)))
  per_shard = train.make_train_step(loss, opt, axis_name="data")
  synced = run(train.data_parallel(per_shard, mesh))
  unsynced = run(train.data_parallel(per_shard, mesh, sync_bn=False))
  print("resnet sync BN max abs diff", max_diff(single, synced),
        "unsynced", max_diff(single, unsynced))
  assert max_diff(single, synced) < 1e-4, max_diff(single, synced)
  assert max_diff(single, unsynced) > 1e-3, max_diff(single, unsynced)
  try:
    train.data_parallel(per_shard, mesh)(
        train.init_train_state(model.params, model.batch_stats, opt, (),
                               masks),
        {k: v[:6] for k, v in batches[0].items()}, key)
    raise AssertionError("a batch of 6 on 4 devices was accepted")
  except ValueError as e:
    assert "6 examples does not split over 4 devices" in str(e), e


def rows():
  """``rows_mean``: under the data axis each of the 4 shards averages its own
  quarter of the rows (shapes seen while tracing), and the mean equals one
  device's; rows that do not divide are averaged whole. ``rowwise``, on a
  mesh of Auto axes (a user's ``jax.sharding.Mesh``; cljax builds Explicit
  ones) too, splits rows that divide and computes the others whole."""
  seen = []

  def traced_mean(x):
    seen.append(x.shape)
    return x.mean(axis=1)

  x = np.random.default_rng(3).normal(size=(3, 12, 5)).astype(np.float32)
  for n_rows in (12, 10):
    seen.clear()

    def per_shard(x, n_rows=n_rows):
      with _distributed.data_axis("data"):
        return _distributed.rows_mean(traced_mean, (x[:, :n_rows],), axis=1)

    got = jax.jit(jax.shard_map(per_shard, mesh=mesh,
                                in_specs=PartitionSpec(),
                                out_specs=PartitionSpec(),
                                check_vma=False))(x)
    np.testing.assert_allclose(got, x[:, :n_rows].mean(axis=1), rtol=1e-6)
    assert seen == [(3, n_rows // 4 if n_rows % 4 == 0 else n_rows, 5)], seen

  auto = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  feats = lambda x: jax.nn.relu(x @ np.ones((5, 3), np.float32))
  for m, n_rows in ((auto, 8), (mesh, 6), (auto, 6)):
    x = np.random.default_rng(4).normal(size=(n_rows, 5)).astype(np.float32)
    f = jax.jit(lambda x: _distributed.rowwise(feats, x))
    with _distributed.data_axis_mesh(m):
      got, text = f(x), f.lower(x).compile().as_text()
    np.testing.assert_allclose(got, feats(x), rtol=1e-6)
    assert ("all-gather" in text) == (n_rows % 4 == 0), (m, n_rows)
  print("rows_mean and rowwise split the rows that divide the devices")


def memory():
  """GEM, A-GEM, ER (its sample and the reservoir), DER++: the memory is
  replicated and every random draw uses the step key shared by all shards;
  memory gradients are computed over each shard's share of the rows
  (``rows_mean``) and the reservoir takes the global batch (all-gathered)
  in order, so the update equals one device's."""
  rng = np.random.default_rng(1)
  n = 64
  split = data.Split(rng.normal(size=(n, 8, 8, 1)).astype(np.float32),
                     rng.integers(0, 10, n).astype(np.int32),
                     np.zeros(n, np.int32))
  stream = data.permuted(data.Dataset("random", split, split, 10), 3)
  model = models.build_model("mlp", (8, 8, 1), 10, hidden=(32,))
  for method in (methods.GEM(16, 0.5), methods.AGEM(16, 8), methods.ER(24),
                 methods.ER(24, selection="reservoir"),
                 methods.DERpp(memory_size=24),
                 methods.ER(24, replay_size=8)):
    opt = method.optimizer(optax.sgd(0.05), model.params)
    s0 = method.init_state(model, stream)
    for k in range(2):
      s0 = method.on_task_end(TaskContext(k, stream, model, model.params,
                                          model.batch_stats, s0,
                                          stream.logit_masks(k)))
    batches = [{k: getattr(stream.tasks[2].train, k)[16 * i:16 * i + 16]
                for k in "xyt"} for i in range(4)]

    def run(step):
      state = train.init_train_state(model.params, model.batch_stats, opt,
                                     jax.tree.map(np.array, s0),
                                     stream.logit_masks(2))
      for b in batches:
        state, _ = step(state, b, key)
      return jax.device_get((state.params, state.method_state))

    kw = dict(extra_args=method.extra_args, batch_fn=method.batch_fn,
              update_method_state=method.update_method_state)
    single = run(jax.jit(train.make_train_step(method.loss_fn(model), opt,
                                               **kw)))
    sharded = run(train.data_parallel(train.make_train_step(
        method.loss_fn(model), opt, axis_name="data", **kw), mesh))
    diff = max_diff(single, sharded)
    print(method.name, getattr(method, "selection", ""), "max abs diff", diff)
    assert diff < 1e-5, diff


def importance():
  """EWC's Fisher (empirical, expected, sampled: each example's key travels
  with it, predicted) and MAS's importance with the task's examples split
  over the 4 devices (a sample that does not divide by 4: padded with
  weight 0) equal one device's; the sampled Fisher, whose keys are the
  subtle part, and MAS on a BatchNorm model as well."""
  digits = data.class_splits(data.load_digits(), 2)
  mlp = models.build_model("mlp", digits.input_shape, 10, hidden=(16,))
  cases = [(mlp, methods.EWC(fisher_samples=50)),
           (mlp, methods.EWC(fisher_samples=None, estimator="expected")),
           (mlp, methods.EWC(fisher_samples=50, estimator="sampled")),
           (mlp, methods.EWC(fisher_samples=50, estimator="predicted")),
           (mlp, methods.MAS(samples=37)),
           (bn_resnet(1), methods.EWC(fisher_samples=50, estimator="sampled")),
           (bn_resnet(1), methods.MAS(samples=37))]
  for model, method in cases:
    s0 = method.init_state(model, digits)
    one, four = (jax.device_get(method.on_task_end(TaskContext(
        0, digits, model, model.params, model.batch_stats, s0,
        digits.logit_masks(0), 0, m))) for m in (None, mesh))
    diff = max_diff(one, four)
    scale = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(one))
    print(method.name, getattr(method, "estimator", ""), "sharded importance "
          "max abs diff", diff, "of", scale)
    assert diff < 1e-5 * max(scale, 1.0), (diff, scale)
    fn = getattr(method, "_fisher", getattr(method, "_omega", None))
    assert mesh in _regularized._SHARDED[fn], "not the sharded path"


def herding():
  """iCaRL's herding and nearest-mean classifier with their forward passes
  split over the mesh (``rowwise``): the same exemplars and class means as
  one device (an MLP and a BatchNorm model), and their compiled programs
  gather the features from the devices."""
  digits = data.class_splits(data.load_digits(), 2)
  icarl = methods.ICaRL(40)
  for model in (models.build_model("mlp", digits.input_shape, 10,
                                   hidden=(16,)), bn_resnet(1)):
    s0 = icarl.init_state(model, digits)
    ctx = TaskContext(0, digits, model, model.params, model.batch_stats, s0,
                      digits.logit_masks(0), 0)
    one, four = (jax.device_get(icarl.on_task_end(ctx._replace(mesh=m)))
                 for m in (None, mesh))
    np.testing.assert_array_equal(four["memory"].x, one["memory"].x)
    prepare = icarl.predictors(model)["nme"][0]
    means = [jax.device_get(prepare(one, model.params, model.batch_stats))]
    args = _distributed.replicate((one, model.params, model.batch_stats),
                                  NamedSharding(mesh, PartitionSpec()))
    with _distributed.data_axis_mesh(mesh):
      means.append(jax.device_get(jax.jit(prepare)(*args)))
      text = jax.jit(prepare).lower(*args).compile().as_text()
      herd = jax.jit(icarl._features).lower(
          *args[1:], one["memory"].x).compile().as_text()
    for a, b in zip(jax.tree.leaves(means[0]), jax.tree.leaves(means[1])):
      np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert "all-gather" in text and "all-gather" in herd
  print("icarl herding and class means split over 4 devices, equal to one")
  statistics(digits)


def statistics(digits):
  """IL2M's class statistics, BiC's validation pass (its bias layer's fit)
  and UCIR's imprinting at the start of task 2: on the mesh the same
  results as one device, from programs that split the forward passes over
  the devices and gather the outputs (the function of every
  ``Rehearsal.on_devices`` call compiled where that call runs it)."""
  texts = []
  on_devices = Rehearsal.on_devices

  def spying(ctx, fn, *args):
    def compiled_first(*placed):  # as on_devices calls it
      if ctx.mesh is not None:
        texts.append(jax.jit(fn).lower(*placed).compile().as_text())
      return fn(*placed)
    return on_devices(ctx, compiled_first, *args)

  Rehearsal.on_devices = staticmethod(spying)
  try:
    for method, hook, head in (
        (methods.IL2M(40), "on_task_end", "linear"),
        (methods.BiC(60, val_size=20), "on_task_end", "linear"),
        (methods.UCIR(40), "start_params", "cosine")):
      model = models.build_model("mlp", digits.input_shape, 10, hidden=(16,),
                                 head=head)
      ctx = TaskContext(0, digits, model, model.params, model.batch_stats,
                        method.init_state(model, digits),
                        digits.logit_masks(0), 0)
      ctx = ctx._replace(index=1, masks=digits.logit_masks(1),
                         method_state=method.on_task_end(ctx))
      del texts[:]
      one, four = (jax.device_get(getattr(method, hook)(ctx._replace(
          mesh=m))) for m in (None, mesh))
      assert max_diff(one, four) < 1e-5, (method.name, max_diff(one, four))
      assert texts and all("all-gather" in t for t in texts), method.name
      print(method.name, hook, "split over 4 devices, equal to one")
  finally:
    Rehearsal.on_devices = staticmethod(on_devices)


def runs():
  """Whole runs on the mesh: methods whose hooks' outputs the step and the
  evaluation read back (iCaRL's memory and class means, BiC's bias layer,
  IL2M's statistics) give one device's accuracy matrices, and RWalk's
  Fisher and importances one device's to float tolerance; a "union" replay
  whose size does not split over the devices is refused."""
  digits = data.class_splits(data.load_digits(), 2)
  mlp = lambda: models.build_model("mlp", digits.input_shape, 10,
                                   hidden=(16,))
  for method in (methods.ICaRL(40),
                 methods.BiC(60, val_size=20, replay_size=8),
                 methods.IL2M(40, replay_size=8)):
    results = [train.run_stream(digits, method, mlp(), optax.sgd(0.1),
                                epochs=1, batch_size=32, progress=False,
                                mesh=m) for m in (None, mesh)]
    for name in results[0]:
      if name.startswith("accuracy_matrix"):
        np.testing.assert_array_equal(results[1][name], results[0][name],
                                      err_msg=name)
    print(method.name, "whole run on 4 devices equals one device")
  # RWalk's empirical Fisher: each shard's examples, averaged over shards.
  states = [train.run_stream(digits, methods.RWalk(), mlp(), optax.sgd(0.1),
                             epochs=1, batch_size=32, progress=False,
                             mesh=m)["final_state"].method_state
            for m in (None, mesh)]
  for key in ("fisher", "importance"):
    diff = max_diff(states[0][key], states[1][key])
    print("rwalk", key, "on 4 devices: max abs diff", diff)
    assert diff < 1e-4, diff
  try:
    train.run_stream(digits, methods.IL2M(40), mlp(), optax.sgd(0.1),
                     epochs=1, batch_size=32, progress=False, mesh=mesh)
    raise AssertionError("a union replay of 2 on 4 devices was accepted")
  except ValueError as e:
    assert "do not split over 4 devices" in str(e), e


SECTIONS = {f.__name__: f for f in (steps, rows, memory, importance, herding,
                                    runs)}

if __name__ == "__main__":
  SECTIONS[sys.argv[1]]()
  print("max abs diff checks passed:", sys.argv[1])
