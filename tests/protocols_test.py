"""The CIFAR-100 and ImageNet-100 class-IL protocols end to end on
synthetic builds (``tests/data/build_tfds_cifar100.py`` and
``build_tfds_imagenet.py``: tfds's own builders, so the features, splits
and array_record files are real builds', with random images); read without
TensorFlow. Synthetic data checks that the protocols run, never what they
score."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(ROOT, "tests", "data", "tfds", "array_record")
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import cifar100_class_il  # noqa: E402
import imagenet_subset_class_il  # noqa: E402


def test_the_class_order_and_splits_are_the_papers():
  order = cifar100_class_il.class_order()
  assert sorted(order) == list(range(100))
  assert order[:10] == (68, 56, 78, 8, 23, 84, 90, 65, 74, 76)  # PyCIL's
  for arg, sizes in (("b0_10", (10,) * 10), ("b0_20", (20,) * 5),
                     ("b50_5", (50,) + (10,) * 5),
                     ("b50_25", (50,) + (2,) * 25)):
    c = cifar100_class_il.get_config(arg)
    assert tuple(c.scenario.task_sizes) == sizes
    assert c.scenario.num_tasks == len(sizes)
  with pytest.raises(ValueError, match="config arg"):
    cifar100_class_il.get_config("b10_10")


def _run(config, model, names, workdir, *more):
  """``cljax run`` of an experiment config on the synthetic builds, in a
  subprocess; its ``results.json``."""
  out = subprocess.run(
      [sys.executable, "-m", "cljax.cli", "run", "--config",
       os.path.join(ROOT, "experiments", config),
       f"--config.data.data_dir={DATA_DIR}", f"--config.model.name={model}",
       f"--config.methods={','.join(names)}", *more,
       f"--config.workdir={workdir}", "--config.progress=False"],
      capture_output=True, text=True, cwd=ROOT, timeout=3000)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


@pytest.mark.parametrize("model", [
    "cnn", pytest.param("resnet32", marks=pytest.mark.slow)])
def test_the_protocol_runs_end_to_end(tmp_path, model):
  """The runlocal variant on the synthetic build (5 training images a
  class, so a smaller memory). The default suite runs UCIR (the cosine head,
  the exemplar memory, distillation) on the small CNN; the slow one iCaRL,
  UCIR, IL2M and WA on the protocol's ResNet-32 (minutes on 2 CPU cores)."""
  names = (["icarl", "ucir", "il2m", "wa"] if model == "resnet32"
           else ["ucir"])
  res = _run("cifar100_class_il.py:b0_20,runlocal", model, names, tmp_path,
             *[f"--config.method.{n}.memory_size=200" for n in names])
  assert res["stream"]["classes"][0] == list(
      cifar100_class_il.class_order()[:20])
  assert res["stream"]["train_sizes"] == [100] * 5
  for name in names:
    m = np.asarray(res["runs"][name]["accuracy_matrix"])
    assert m.shape == (5, 5) and np.all(np.isfinite(m))
    top5 = np.asarray(res["runs"][name]["accuracy_matrix_top5"])
    assert top5.shape == (5, 5) and np.all(top5 >= m - 1e-12)


def test_the_synthetic_build_reads_without_tensorflow():
  from tfds_test import _without_tensorflow
  out = _without_tensorflow(f"""
      from cljax.data import load_dataset
      ds = load_dataset("tfds:cifar100", data_dir={DATA_DIR!r})
      assert ds.train.x.shape == (500, 32, 32, 3), ds.train.x.shape
      assert ds.num_classes == 100 and len(ds.test.y) == 200
      assert "tensorflow" not in sys.modules
      print("ok")
      """)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "ok" in out.stdout


@pytest.mark.parametrize("model", [
    "cnn", pytest.param("resnet18", marks=pytest.mark.slow)])
def test_the_imagenet_protocol_streams_end_to_end(tmp_path, model):
  """ImageNet-100's runlocal variant on the synthetic build, streamed at
  32x32 (3 training images a class, so 1 exemplar a class). The default
  suite runs ER (herding class by class on decoded images) on the small
  CNN; the slow one the protocol's ResNet-18 with every method it lists."""
  names = (["er"] if model == "cnn" else
           list(imagenet_subset_class_il.METHODS))
  res = _run("imagenet_subset_class_il.py:b50_5,runlocal", model, names,
             tmp_path)
  order = cifar100_class_il.class_order()
  assert res["stream"]["classes"][0] == list(order[:50])
  assert res["stream"]["train_sizes"] == [150] + [30] * 5
  for name in names:
    m = np.asarray(res["runs"][name]["accuracy_matrix"])
    assert m.shape == (6, 6) and np.all(np.isfinite(m))
    assert "accuracy_matrix_top5" in res["runs"][name]
