"""The tensorflow-datasets path, offline, on the real Fashion-MNIST files.

Building needs TensorFlow (the `tfds` extra); reading does not (checked in a
subprocess where importing tensorflow fails).
"""

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cljax.data import DEBIAN_FASHION_MNIST
from cljax.data import _tfds

pytest.importorskip("tensorflow_datasets")

_SHA256 = {  # tfds's url_checksums/fashion_mnist.txt (upstream files)
    "train-images-idx3-ubyte.gz":
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz":
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz":
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz":
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
  if not os.path.isdir(DEBIAN_FASHION_MNIST):
    pytest.skip("Debian's dataset-fashion-mnist is not installed")
  out = tmp_path_factory.mktemp("manual")
  _tfds.restore_fashion_mnist_gzip_headers(DEBIAN_FASHION_MNIST, str(out))
  return out


@pytest.fixture(scope="module")
def data_dir(manual_dir, tmp_path_factory):
  pytest.importorskip("tensorflow")
  out = tmp_path_factory.mktemp("tfds")
  _tfds.prepare_tfds("fashion_mnist", str(out), str(manual_dir))
  return out


def test_restored_files_are_byte_identical_to_upstream(manual_dir):
  for name, digest in _SHA256.items():
    data = (manual_dir / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest, name


def _canonical(split):
  # Sorted by content; rounded, as two loaders may scale before
  # standardising differently (x / 16 vs x / 255: equal to ~1e-6).
  keys = [hashlib.sha1(np.round(x, 3).tobytes()).hexdigest() + str(y)
          for x, y in zip(split.x, split.y)]
  order = np.argsort(keys)
  return split.x[order], split.y[order]


def test_tfds_build_equals_idx_files(data_dir, fashion_mnist):
  # Building needs TensorFlow (skipped without it).
  from cljax.data import load_dataset
  ds = load_dataset("tfds:fashion_mnist", data_dir=str(data_dir))
  assert ds.num_classes == 10
  _same_examples(ds, fashion_mnist)


@pytest.mark.slow  # decodes 70,000 images (about 2 minutes)
def test_fashion_mnist_streams_as_it_loads(data_dir):
  """The build streamed at its own size (``image_size=0``, what a dataset
  above ``data.stream_above_mb`` gets): the arrays and batches of loading
  it into memory."""
  from cljax import data
  from cljax.data import load_dataset
  want = load_dataset("tfds:fashion_mnist", data_dir=str(data_dir))
  got = _tfds.load_tfds_streamed("fashion_mnist", str(data_dir), 0)
  np.testing.assert_allclose(np.asarray(got.test.x), want.test.x, atol=1e-6)
  streams = [data.class_splits(d, 5, val_fraction=0.1, seed=3)
             for d in (got, want)]
  rows = np.random.default_rng(0).permutation(10800)[:128]  # a batch
  for g, w in zip(*(s.tasks for s in streams)):
    np.testing.assert_array_equal(g.train.y, w.train.y)
    np.testing.assert_allclose(g.train.x[rows].augmented(), w.train.x[rows],
                               atol=1e-6)


DIGITS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                      "tfds")  # built by tests/data/build_tfds_digits.py

_NO_TENSORFLOW = textwrap.dedent("""
    import importlib.util
    import sys

    # As if tensorflow were not installed: invisible to find_spec, and
    # importing it fails.
    _find_spec = importlib.util.find_spec
    is_tf = lambda name: name.split(".")[0] == "tensorflow"
    importlib.util.find_spec = lambda name, *a: (
        None if is_tf(name) else _find_spec(name, *a))

    class NoTensorFlow:
      def find_spec(self, name, path=None, target=None):
        if is_tf(name):
          raise ModuleNotFoundError(f"No module named {name!r}")

    sys.meta_path.insert(0, NoTensorFlow())
""")


def _without_tensorflow(code):
  return subprocess.run([sys.executable, "-c", _NO_TENSORFLOW +
                         textwrap.dedent(code)], capture_output=True,
                        text=True, timeout=300)


def _same_examples(got, want):
  for a, b in [(got.train, want.train), (got.test, want.test)]:
    gx, gy = _canonical(a)
    wx, wy = _canonical(b)
    np.testing.assert_array_equal(gy, wy)
    np.testing.assert_allclose(gx, wx, atol=1e-5)


def test_prepared_build_equals_the_source_data(digits):
  # A real tfds build (array_record) of the digits, read without its builder
  # code: the same images and split as load_digits.
  from cljax.data import load_dataset
  ds = load_dataset("tfds:cljax_digits",
                    data_dir=os.path.join(DIGITS, "array_record"))
  assert ds.num_classes == 10 and ds.name == "cljax_digits"
  _same_examples(ds, digits)


def test_reading_needs_no_tensorflow():
  out = _without_tensorflow(f"""
      from cljax.data import load_dataset
      ds = load_dataset("tfds:cljax_digits",
                        data_dir={os.path.join(DIGITS, "array_record")!r})
      assert ds.train.x.shape == (1437, 8, 8, 1), ds.train.x.shape
      assert "tensorflow" not in sys.modules
      print("ok")
      """)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "ok" in out.stdout


def test_tfrecord_build_without_tensorflow_says_how_to_convert():
  # It used to end in a 33-line NotImplementedError.
  out = _without_tensorflow(f"""
      from cljax.data import load_dataset
      try:
        load_dataset("tfds:cljax_digits",
                     data_dir={os.path.join(DIGITS, "tfrecord")!r})
      except ValueError as e:
        print(e)
      """)
  assert out.returncode == 0, out.stderr[-3000:]
  msg = out.stdout.strip()
  assert len(msg.splitlines()) == 1, msg
  assert "in tfrecord format, which needs TensorFlow" in msg
  assert "tfds convert_format --dataset_version_dir=" in msg
  assert "--out_file_format=array_record" in msg


def test_tfrecord_build_with_tensorflow(digits):
  pytest.importorskip("tensorflow")
  from cljax.data import load_dataset
  ds = load_dataset("tfds:cljax_digits",
                    data_dir=os.path.join(DIGITS, "tfrecord"))
  _same_examples(ds, digits)


def test_cli_on_your_own_tfds_data_dir(tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "cljax.cli", "run",
       "--config.data.name=tfds:cljax_digits",
       f"--config.data.data_dir={os.path.join(DIGITS, 'array_record')}",
       "--config.train.epochs=1", "--config.progress=False",
       "--config.methods=finetune", f"--config.workdir={tmp_path}/w"],
      capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "class_incremental/cljax_digits" in out.stdout


def test_unprepared_dataset_is_a_clear_error(tmp_path):
  from cljax.data._tfds import load_tfds
  with pytest.raises(FileNotFoundError, match="not prepared"):
    load_tfds("fashion_mnist", str(tmp_path))


def test_without_tensorflow_datasets_the_error_says_how_to_install_it(
    monkeypatch):
  # A 25-line ModuleNotFoundError traceback from the CLI before.
  from cljax.data import load_dataset
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ValueError, match=r'need tensorflow-datasets .*pip '
                     r'install -e "\.\[tfds\]"'):
    load_dataset("tfds:cljax_digits",
                 data_dir=os.path.join(DIGITS, "array_record"))
  with pytest.raises(ValueError, match="needs data.data_dir"):  # that first
    load_dataset("tfds:cljax_digits")


def test_known_content_checksums_follow_from_upstreams(manual_dir):
  # The files are byte-identical to upstream's (above), so the SHA-256 of
  # their content that load_fashion_mnist verifies is upstream's content.
  import gzip
  from cljax.data._datasets import FASHION_MNIST_SHA256
  for name, digest in FASHION_MNIST_SHA256.items():
    content = gzip.decompress((manual_dir / (name + ".gz")).read_bytes())
    assert hashlib.sha256(content).hexdigest() == digest, name


def test_the_test_split_is_chosen_by_name():
  """``load_dataset(..., test_split=)`` (``config.data.test_split``)
  reaches the tfds reader: here the training split tested on."""
  from cljax.data import load_dataset
  ds = load_dataset("tfds:cljax_digits",
                    data_dir=os.path.join(DIGITS, "array_record"),
                    test_split="train")
  assert len(ds.test) == len(ds.train)
