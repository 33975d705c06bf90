"""The CIFAR-100 class-IL protocol end to end on a synthetic dataset built
here, offline, with exactly CIFAR-100's tfds feature spec (32x32x3 uint8
images, 100 fine labels, 20 coarse ones); synthetic data checks that the
protocol runs, never what it scores."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")
if importlib.util.find_spec("tensorflow") is None:
  pytest.skip("building a tfds dataset needs tensorflow",
              allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments"))
import cifar100_class_il  # noqa: E402


def build_synthetic_cifar100(data_dir: str, train_per_class: int = 20,
                             test_per_class: int = 5):
  """Prepares ``cifar100`` in ``data_dir`` through tfds's own CIFAR-100
  builder (its features, splits and file format), random images in place
  of the archive's."""
  import tensorflow_datasets as tfds

  class Synthetic(tfds.builder_cls("cifar100"), skip_registration=True):
    name = "cifar100"

    def _split_generators(self, dl_manager):
      return {"train": self._examples(0, train_per_class),
              "test": self._examples(1, test_per_class)}

    def _examples(self, seed, per_class):
      rng = np.random.default_rng(seed)
      for i in range(100 * per_class):
        yield i, {"id": f"synthetic_{seed}_{i}",
                  "image": rng.integers(0, 256, (32, 32, 3), np.uint8),
                  "label": i % 100, "coarse_label": (i % 100) // 5}

  Synthetic(data_dir=data_dir,
            file_format="array_record").download_and_prepare()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("tfds"))
  build_synthetic_cifar100(out)
  return out


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


@pytest.mark.parametrize("model", [
    "cnn", pytest.param("resnet32", marks=pytest.mark.slow)])
def test_the_protocol_runs_end_to_end(data_dir, tmp_path, model):
  """The runlocal variant on the synthetic build. The default suite runs
  UCIR and BiC (the cosine head, both memories, the bias stage) on the
  small CNN; the slow one iCaRL and the whole bias-correction family on the
  protocol's ResNet-32 (minutes on 2 CPU cores)."""
  names = (["icarl", "ucir", "bic", "il2m", "wa"] if model == "resnet32"
           else ["ucir", "bic"])
  out = subprocess.run(
      [sys.executable, "-m", "cljax.cli", "run", "--config",
       os.path.join(ROOT, "experiments", "cifar100_class_il.py:b0_20,runlocal"),
       f"--config.data.data_dir={data_dir}", f"--config.model.name={model}",
       f"--config.methods={','.join(names)}",
       f"--config.workdir={tmp_path}", "--config.progress=False"],
      capture_output=True, text=True, cwd=ROOT, timeout=1500)
  assert out.returncode == 0, out.stderr[-3000:]
  import json
  with open(tmp_path / "results.json") as f:
    res = json.load(f)
  assert res["stream"]["classes"][0] == list(
      cifar100_class_il.class_order()[:20])
  for name in names:
    m = np.asarray(res["runs"][name]["accuracy_matrix"])
    assert m.shape == (5, 5) and np.all(np.isfinite(m))
