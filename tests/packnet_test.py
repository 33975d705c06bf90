"""PackNet (Mallya & Lazebnik 2018): magnitude pruning against NumPy, and
the defining property on a task-IL stream: a task's accuracy never changes
once it is learnt."""

import jax
import numpy as np
import optax
import pytest

from cljax import data, methods, models, train
from cljax.methods.packnet import prune_free


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruning_keeps_the_largest_free_weights(seed):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(7, 9)).astype(np.float32)
  owner = rng.choice([0, 0, 0, 1, 2], size=w.shape).astype(np.int32)
  got = np.asarray(prune_free(w, owner, 0.6, 2))
  free = np.flatnonzero(owner.ravel() == 0)
  n_prune = int(np.floor(0.6 * len(free)))
  order = free[np.argsort(np.abs(w.ravel()[free]), kind="stable")]
  want = owner.ravel().copy()
  want[order[n_prune:]] = 3
  np.testing.assert_array_equal(got.ravel(), want)


def _model(name, stream):
  if name == "mlp":
    return models.build_model("mlp", stream.input_shape, 10, hidden=(32,))
  from flax import nnx  # a BatchNorm ResNet: running statistics per task
  return models.functional(models.ResNet(1, 10, widths=(8, 16),
                                         blocks=(1, 1), shortcut="A",
                                         rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("model", ["mlp", "bn_resnet"])
def test_a_learnt_task_is_never_forgotten(digits, model):
  stream = data.class_splits(digits, 3, task_sizes=(4, 3, 3),
                             incremental="task")
  out = {}
  for method in (methods.FineTune(), methods.PackNet(prune=0.5)):
    out[method.name] = train.run_stream(
        stream, method, _model(model, stream), optax.sgd(0.1, momentum=0.9),
        epochs=2,
        batch_size=32, progress=False, eval_every=0)
  r = np.asarray(out["packnet"]["accuracy_matrix"])
  for j in range(3):
    np.testing.assert_array_equal(r[j:, j], r[j, j])  # exactly
    assert r[j, j] > 0.8
  f = np.asarray(out["finetune"]["accuracy_matrix"])
  assert np.any(f[2, :2] != f[[0, 1], [0, 1]])  # fine-tuning does change
  if model != "mlp":
    return
  owner = out["packnet"]["final_state"].method_state["owner"]
  k = np.asarray(owner["layers"][0]["kernel"])
  n = k.size
  # 1/2 of the weights kept by task 1, 1/2 of the rest by task 2, ...
  counts = [int(np.sum(k == o)) for o in range(4)]
  assert counts[1] == n - n // 2
  assert counts[2] == (n // 2) - (n // 2) // 2
  assert sum(counts) == n
  # network_use: each task's share of all backbone weight matrices.
  sizes = [np.size(a) for a in jax.tree.leaves(owner["layers"])
           if np.ndim(a) == 2]
  owned = np.concatenate([np.ravel(owner["layers"][i]["kernel"])
                          for i in sorted(owner["layers"])])
  assert len(owned) == sum(sizes)
  np.testing.assert_allclose(out["packnet"]["network_use"],
                             [np.mean(owned == t + 1) for t in range(3)])
  assert out["packnet"]["network_use"][0] == pytest.approx(0.5, abs=0.01)
  assert "network_use" not in out["finetune"]
  params = out["packnet"]["final_state"].params
  assert np.all(np.asarray(params["layers"][0]["kernel"])[k == 0] == 0)


def test_refuses_what_it_cannot_do(digits):
  for kw, match in [(dict(prune=0.0), "prune"), (dict(prune=1.0), "prune"),
                    (dict(retrain_epochs=0), "retrain_epochs"),
                    (dict(retrain_lr_scale=0.0), "retrain_lr_scale")]:
    with pytest.raises(ValueError, match=match):
      methods.PackNet(**kw)
  with pytest.raises(ValueError, match="task-incremental"):
    methods.PackNet().check(data.class_splits(digits, 2))


def test_retraining_runs_without_the_released_weights(digits):
  # The released weights are zeroed as the retraining starts, so a learning
  # curve's point after the retraining's last step sees the network the
  # task ends with: the same accuracies as the matrix's row.
  stream = data.class_splits(digits, 2, incremental="task")
  model = models.build_model("mlp", stream.input_shape, 10, hidden=(32,))
  out = train.run_stream(stream, methods.PackNet(prune=0.75), model,
                         optax.sgd(0.1), epochs=1, batch_size=32,
                         progress=False, eval_every=1)
  r = out["accuracy_matrix"]
  for i in range(2):
    last = [c for c in out["curves"] if c["task"] == i][-1]
    np.testing.assert_array_equal(last["acc"], r[i])
