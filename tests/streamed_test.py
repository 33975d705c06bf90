"""Streamed images (``cljax.data._streamed``) on the synthetic ImageNet
build (tests/data/build_tfds_imagenet.py): lazy views, decoding against
tfds's own decoder, the class subset, deterministic augmentation, and the
methods that refuse streamed data."""

import os
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("grain")

from cljax import data, methods  # noqa: E402
from cljax.data import _streamed  # noqa: E402
from cljax.data._tfds import load_tfds_streamed  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(ROOT, "tests", "data", "tfds", "array_record")
VERSION_DIR = os.path.join(DATA_DIR, "imagenet2012", "5.1.0")
sys.path.insert(0, os.path.join(ROOT, "experiments"))
from imagenet_subset_class_il import subset_labels  # noqa: E402


@pytest.fixture(scope="module")
def subset():
  return load_tfds_streamed("imagenet2012", DATA_DIR, 24,
                            classes=subset_labels(), test_split="validation")


def _tfds_examples(split):
  """Every example of the build, decoded by tfds itself (uint8 images)."""
  import tensorflow_datasets as tfds
  src = tfds.builder_from_directory(VERSION_DIR).as_data_source(split=split)
  return [src[i] for i in range(len(src))]


def test_the_subset_keeps_its_classes_relabelled_in_order(subset):
  labels = subset_labels()
  for split, part in (("train", subset.train), ("validation", subset.test)):
    raw = np.asarray([int(e["label"]) for e in _tfds_examples(split)])
    keep = np.flatnonzero(np.isin(raw, labels))
    np.testing.assert_array_equal(part.x.indices, keep)
    np.testing.assert_array_equal(part.y, np.searchsorted(labels, raw[keep]))
  assert subset.num_classes == 100
  assert len(subset.train) == 300 and len(subset.test) == 100  # 10 left out


def test_decoding_matches_tfds_decoder_and_the_eval_transform(subset):
  rows = np.asarray([0, 7, 299, 7])
  got = np.asarray(subset.train.x[rows])
  assert got.shape == (4, 24, 24, 3) and got.dtype == np.float32
  examples = _tfds_examples("train")
  mean, std = np.asarray(_streamed.IMAGENET_MEAN), np.asarray(
      _streamed.IMAGENET_STD)
  for r, img in zip(rows, got):
    raw = examples[subset.train.x.indices[r]]["image"]  # tfds's decode
    want = (_streamed.eval_transform(raw, 24) / 255.0 - mean) / std
    np.testing.assert_allclose(img, want, atol=1e-5)
  # The shorter side resized to round(24 * 8 / 7) = 27, then the central
  # crop, by hand for one of them.
  raw = examples[subset.train.x.indices[0]]["image"]
  h, w = raw.shape[:2]
  scale = 27 / min(h, w)
  resized = _streamed._resize(raw, max(27, round(h * scale)),
                              max(27, round(w * scale)))
  top, left = (resized.shape[0] - 24) // 2, (resized.shape[1] - 24) // 2
  np.testing.assert_array_equal(_streamed.eval_transform(raw, 24),
                                resized[top:top + 24, left:left + 24])


def test_views_are_lazy_and_digests_follow_content(subset, monkeypatch):
  decoded = []
  image = _streamed._Source.image
  monkeypatch.setattr(_streamed._Source, "image",
                      lambda self, i, rgb=True: decoded.append(i) or image(
                          self, i, rgb))
  stream = data.class_splits(subset, 2, class_order=tuple(range(100)),
                             val_fraction=0.2, seed=3)
  stream.check()
  digest = stream.digest
  assert decoded == []  # carving tasks, checking and digests decode nothing
  part = stream.tasks[1].train
  assert isinstance(part.x, _streamed.StreamedImages)
  assert part.x.shape == (len(part), 24, 24, 3)
  assert set(part.y.tolist()) <= set(range(50, 100))
  again = data.class_splits(subset, 2, class_order=tuple(range(100)),
                            val_fraction=0.2, seed=3)
  other = data.class_splits(subset, 2, class_order=tuple(range(100)),
                            val_fraction=0.2, seed=4)
  assert again.digest == digest != other.digest
  joint = data.concat([stream.tasks[0].train, part])
  assert len(joint) == len(stream.tasks[0].train) + len(part)
  np.asarray(part.x[:2])
  assert len(decoded) == 2


def test_augmentation_is_random_per_example_and_repeatable(subset):
  view = subset.train.x[np.arange(16)]
  a, b = view.augmented(), view.augmented()
  np.testing.assert_array_equal(a, b)  # seeded by the indices: resumable
  assert a.shape == (16, 24, 24, 3)
  plain = np.asarray(view)
  assert not np.allclose(a, plain)
  reseeded = _streamed.StreamedImages(view._source, view.indices, 24, seed=1)
  assert not np.allclose(reseeded.augmented(), a)
  # A process's part of a global batch gets the crops one process would
  # give those rows (they are drawn for the whole batch).
  np.testing.assert_array_equal(view.augmented(slice(4, 12)), a[4:12])
  # Crops stay inside the image and flips are exact mirror images.
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (40, 30, 3), np.uint8)
  for _ in range(20):
    out = _streamed.train_transform(img, 24, rng)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8


def test_grouped_work_streams_class_by_class_as_in_memory(subset):
  """``Rehearsal.per_group`` on a streamed task equals the same work on the
  task decoded into memory (all classes at once), for UCIR's imprinting
  means and IL2M's statistics."""
  import jax
  from cljax import models
  stream = data.class_splits(subset, 2, class_order=tuple(range(100)))
  in_memory = stream._replace(tasks=tuple(
      t._replace(train=t.train.replace(x=np.asarray(t.train.x)))
      for t in stream.tasks))
  model = models.build_model("cnn", (24, 24, 3), 100, head="cosine")
  for name in ("ucir", "il2m"):
    got = {}
    for key, st in (("streamed", stream), ("in_memory", in_memory)):
      m = methods.build_method(name, memory_size=200)
      state = m.init_state(model, st)
      x, counts, y = m.grouped(st, 1)
      if name == "ucir":
        fn = lambda x, c, y, m=m: m._means(model.params, model.batch_stats,
                                           x, c)
      else:
        active = np.asarray(st.logit_masks(1)[1])
        fn = lambda x, c, y, m=m, active=active: m._stats(
            model.params, model.batch_stats, x, c, y, active)
      got[key] = m.per_group(fn, x, counts, y)
      del state
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                         atol=1e-6),
                 got["streamed"], got["in_memory"])


@pytest.mark.parametrize("selection", ["herding", "random"])
def test_exemplar_selection_streams_class_by_class_as_in_memory(subset,
                                                                selection):
  """The memory a streamed task's selection builds (class by class) is the
  one the same task decoded into memory builds (all classes at once)."""
  import jax
  from cljax import models
  from cljax.methods import TaskContext
  stream = data.class_splits(subset, 2, class_order=tuple(range(100)))
  in_memory = stream._replace(tasks=tuple(
      t._replace(train=t.train.replace(x=np.asarray(t.train.x)))
      for t in stream.tasks))
  model = models.build_model("cnn", (24, 24, 3), 100)
  got = {}
  for key, st in (("streamed", stream), ("in_memory", in_memory)):
    m = methods.build_method("er", memory_size=100, selection=selection)
    state = m.init_state(model, st)
    for k in range(2):
      state = m.on_task_end(TaskContext(
          k, st, model, model.params, model.batch_stats, state,
          st.logit_masks(k)))
    got[key] = jax.device_get(state["memory"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               got["streamed"], got["in_memory"])
  assert got["streamed"].valid.sum() == 100


BUILDS = os.path.join(ROOT, "tests", "data", "tfds", "array_record")


@pytest.mark.parametrize("name", ["cljax_digits", "cifar100"])
def test_native_streaming_gives_the_arrays_loading_in_memory_gives(name):
  """``image_size=0``: each image at its stored size and channels (8x8x1
  digits, 32x32x3 CIFAR), standardised with the training split's channel
  statistics from one decoding pass: the arrays of ``load_tfds``, for whole
  splits, rows in any order, and the training batches (no host
  augmentation)."""
  from cljax.data._tfds import load_tfds
  want = load_tfds(name, BUILDS)
  got = load_tfds_streamed(name, BUILDS, 0)
  assert isinstance(got.train.x, _streamed.StreamedImages)
  assert got.num_classes == want.num_classes
  rows = np.random.default_rng(0).permutation(len(want.test))[:37]
  for part in ("train", "test"):
    g, w = getattr(got, part), getattr(want, part)
    assert g.x.shape == w.x.shape
    np.testing.assert_array_equal(g.y, w.y)
    np.testing.assert_allclose(np.asarray(g.x), w.x, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g.x[rows]), w.x[rows], atol=1e-6)
    np.testing.assert_allclose(g.x[rows].augmented(), w.x[rows], atol=1e-6)
  # A stream of it is not taken for the in-memory one (their checkpoints
  # are not each other's).
  assert data.class_splits(got, 2).digest != data.class_splits(want,
                                                                2).digest


def test_a_dataset_above_the_threshold_streams_with_the_same_results(
    tmp_path, capsys):
  """``data.stream_above_mb``: the digits build (0.44 MB as float32) loads
  into memory by default and streams above 0.1 MB, and a run on it gives
  the same accuracy matrix both ways (the same batches and evaluation)."""
  from cljax import experiment
  from cljax.default_config import get_config
  results = {}
  for key, above in (("memory", 8192.0), ("streamed", 0.1)):
    c = get_config()
    c.data.name = "tfds:cljax_digits"
    c.data.data_dir = BUILDS
    c.data.stream_above_mb = above
    c.scenario.num_tasks = 2
    c.model.hidden = (16,)
    c.train.epochs = 1
    c.methods = "finetune"
    c.progress = False
    c.workdir = str(tmp_path / key)
    stream = experiment.build_stream(c)
    assert isinstance(stream.tasks[0].train.x, _streamed.StreamedImages) == (
        key == "streamed")
    results[key] = experiment.run_experiment(c)["runs"]["finetune"]
  assert "streamed (decoded on access)" in capsys.readouterr().out
  np.testing.assert_array_equal(results["streamed"]["accuracy_matrix"],
                                results["memory"]["accuracy_matrix"])


def test_transforming_scenarios_refuse_streamed_data():
  # They transform every image up front: rotating a lazy view did nothing.
  got = load_tfds_streamed("cljax_digits", BUILDS, 0)
  for build in (data.rotated, data.permuted):
    with pytest.raises(ValueError, match="in memory.*stream_above_mb"):
      build(got, 2)


def test_images_of_varying_size_need_an_image_size():
  from cljax.data._tfds import in_memory_mb
  with pytest.raises(ValueError, match="vary in size.*data.image_size"):
    in_memory_mb("imagenet2012", BUILDS, splits=("train", "validation"))
  with pytest.raises(ValueError, match="vary in size"):
    load_tfds_streamed("imagenet2012", BUILDS, 0, test_split="validation")
