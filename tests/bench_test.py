"""``cljax bench``: what it reports, and its references."""

import glob
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from cljax import models
from cljax.bench import run_bench
from cljax.bench._models import SHAPES, jax_step, torch_model, torch_runner
from cljax.bench._suite import peak_flops, synthetic_stream


def test_bench_reports_every_method_against_both_references(tmp_path):
  out = run_bench(["ewc", "er"], ["mlp"], (8,), blocks=2, steps=2, warmup=1,
                  out_dir=str(tmp_path), hidden=(16,))
  (path,) = glob.glob(str(tmp_path / f"bench-{jax.default_backend()}-*.json"))
  assert json.load(open(path)) == json.loads(json.dumps(out))
  (group,) = out["groups"]
  rows = group["rows"]
  assert set(rows) == {"jax (hand-written)", "finetune", "ewc", "er"}
  assert rows["finetune"]["vs_finetune"] == 1.0
  assert rows["jax (hand-written)"]["vs_jax"] == 1.0
  for r in rows.values():
    assert 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
    assert np.isclose(r["steps_per_s"] * r["median_ms"], 1e3)
    assert np.isclose(r["examples_per_s"], 8 * r["steps_per_s"])
    assert r["compile_s"] > 0 and r["step_memory_mib"] > 0
  # XLA's FLOP count is exact only without branches: the hand-written step.
  assert rows["jax (hand-written)"]["flops_exact"]
  assert rows["jax (hand-written)"]["tflops_per_s"] > 0
  assert not rows["finetune"]["flops_exact"]
  assert rows["finetune"]["tflops_per_s"] is None
  # ER trains on the batch plus as many replayed examples: more FLOPs.
  assert rows["er"]["flops"] > 1.5 * rows["finetune"]["flops"]


def test_a_method_that_cannot_run_is_skipped_with_its_reason(tmp_path):
  big = "tests.bench_test:HugeMemoryER"
  out = run_bench([big], ["mlp"], (4,), blocks=1, steps=1, warmup=0,
                  out_dir=None, hidden=(8,))
  (group,) = out["groups"]
  assert big not in group["rows"] and "memory_size" in group["skipped"][big]


from cljax.methods import ER  # noqa: E402


class HugeMemoryER(ER):
  """ER asking for more exemplars than the synthetic stream holds."""

  def __init__(self):
    super().__init__(memory_size=10**7)


@pytest.mark.parametrize("args, message", [
    (["--models=vgg"], "unknown model 'vgg'"),
    (["--methods=nope"], "unknown method 'nope'"),
    (["--blocks=0"], "blocks must be a positive integer"),
    (["--batch_sizes=x"], "invalid integers value"),
    (["--batch_sizes="], "at least one"),
])
def test_bad_options_are_one_line_errors(args, message):
  out = subprocess.run([sys.executable, "-m", "cljax.cli", "bench", *args],
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr


def test_hand_written_step_is_plain_sgd_on_the_same_model():
  model = models.build_model("mlp", (28, 28, 1), 10, hidden=(16,))
  step, state = jax_step(model, 0.1)
  x = np.random.default_rng(0).normal(size=(4, 28, 28, 1)).astype(np.float32)
  y = np.arange(4, dtype=np.int32)
  params, _, _ = step(state, x, y)

  def loss(p):
    (logits, _), _ = model.apply(p, model.batch_stats, x, train=True)
    return -jax.numpy.mean(jax.nn.log_softmax(logits)[np.arange(4), y])

  grads = jax.grad(loss)(model.params)
  want = jax.tree.map(lambda p, g: p - 0.1 * g, model.params, grads)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               params, want)


def test_pytorch_runs_on_the_backend_jax_runs_on():
  pytest.importorskip("torch")
  x = np.zeros((2, 28, 28, 1), np.float32)
  y = np.zeros(2, np.int32)
  _, info = torch_runner("mlp", (28, 28, 1), 10, (8,), x, y, 0.1, "cpu")
  assert info["device"] == "cpu" and info["version"]
  with pytest.raises(RuntimeError, match="no tpu device"):
    torch_runner("mlp", (28, 28, 1), 10, (8,), x, y, 0.1, "tpu")


def test_peak_flops_match_whole_card_names():
  assert peak_flops("NVIDIA H100 80GB HBM3") == 494.7e12
  assert peak_flops("NVIDIA H100 PCIe") == 378e12
  assert peak_flops("NVIDIA L40S") == 183e12
  assert peak_flops("NVIDIA L4") == 60e12
  assert peak_flops("cpu") is None


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_pytorch_twins_have_the_same_parameter_count(name):
  pytest.importorskip("torch")
  shape, classes, _ = SHAPES[name]
  ours = models.build_model(name, shape, classes, hidden=(400, 400))
  theirs = torch_model(name, shape, classes, (400, 400))
  count = sum(int(np.size(p)) for p in jax.tree.leaves(ours.params))
  assert count == sum(p.numel() for p in theirs.parameters())


def test_synthetic_stream_is_shaped_like_the_models_data():
  for name, (shape, classes, tasks) in SHAPES.items():
    s = synthetic_stream(name, 20)
    assert s.num_tasks == tasks
    assert s.tasks[0].train.x.shape[1:] == shape
    assert len(s.tasks[1].train) >= 20 * 0.5
