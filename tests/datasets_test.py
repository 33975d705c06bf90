import gzip

import numpy as np
import pytest

from cljax import data


def _write_idx(path, arr, compress):
  header = bytes([0, 0, 8, arr.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in arr.shape)
  opener = gzip.open if compress else open
  with opener(path, "wb") as f:
    f.write(header + arr.astype(np.uint8).tobytes())


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrip(tmp_path, compress):
  arr = np.random.default_rng(0).integers(0, 256, (7, 5, 3))
  path = str(tmp_path / ("a.idx" + (".gz" if compress else "")))
  _write_idx(path, arr, compress)
  np.testing.assert_array_equal(data.read_idx(path), arr)


def test_fashion_mnist_from_any_directory(tmp_path):
  rng = np.random.default_rng(0)
  for stem, shape in [("train-images-idx3-ubyte", (20, 28, 28)),
                      ("train-labels-idx1-ubyte", (20,)),
                      ("t10k-images-idx3-ubyte", (10, 28, 28)),
                      ("t10k-labels-idx1-ubyte", (10,))]:
    hi = 10 if "labels" in stem else 256
    _write_idx(str(tmp_path / stem), rng.integers(0, hi, shape), False)
  ds = data.load_fashion_mnist(str(tmp_path))
  assert ds.train.x.shape == (20, 28, 28, 1) and ds.test.x.shape == (10, 28, 28, 1)
  assert abs(ds.train.x.mean()) < 1e-5  # standardised on the train split


def test_missing_directory_is_clear(tmp_path):
  with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
    data.load_fashion_mnist(str(tmp_path / "nope"))


def test_digits(digits):
  assert digits.num_classes == 10
  assert len(digits.train) + len(digits.test) == 1797
  assert digits.train.x.shape[1:] == (8, 8, 1)
  assert set(np.unique(digits.test.y)) == set(range(10))
  # Standardised with train statistics; test split fixed independently of any seed.
  assert abs(float(digits.train.x.mean())) < 1e-4
  np.testing.assert_array_equal(data.load_digits().test.y, digits.test.y)


def test_real_fashion_mnist(fashion_mnist):
  ds = fashion_mnist
  assert ds.train.x.shape == (60000, 28, 28, 1)
  assert ds.test.x.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.train.y), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test.y), [1000] * 10)


def test_make_split_rejects_bad_input():
  with pytest.raises(ValueError, match="NaN"):
    data.make_split(np.array([[np.nan, 1.0]]), np.array([0]))
  with pytest.raises(ValueError, match="integers"):
    data.make_split(np.zeros((2, 2)), np.array([0.5, 1.0]))
  with pytest.raises(ValueError):
    data.make_split(np.zeros((3, 2)), np.array([0, 1]))


def test_load_dataset_unknown():
  with pytest.raises(ValueError, match="unknown dataset"):
    data.load_dataset("mnist_from_the_internet")
