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


def _fake_fashion_mnist(directory, train_labels=None, compress=False):
  rng = np.random.default_rng(0)
  for stem, shape in [("train-images-idx3-ubyte", (20, 28, 28)),
                      ("train-labels-idx1-ubyte", (20,)),
                      ("t10k-images-idx3-ubyte", (10, 28, 28)),
                      ("t10k-labels-idx1-ubyte", (10,))]:
    hi = 10 if "labels" in stem else 256
    arr = rng.integers(0, hi, shape)
    if stem.startswith("train-labels") and train_labels is not None:
      arr = np.asarray(train_labels)
    _write_idx(str(directory / (stem + (".gz" if compress else ""))), arr,
               compress)


def test_fashion_mnist_from_any_directory(tmp_path):
  _fake_fashion_mnist(tmp_path)
  ds = data.load_fashion_mnist(str(tmp_path), verify=False)
  assert ds.train.x.shape == (20, 28, 28, 1) and ds.test.x.shape == (10, 28, 28, 1)
  assert abs(ds.train.x.mean()) < 1e-5  # standardised on the train split


def test_files_of_other_content_are_refused_unless_asked(tmp_path):
  # Same format, random pixels: used to train silently.
  _fake_fashion_mnist(tmp_path)
  with pytest.raises(ValueError, match="train-images-idx3-ubyte: content does "
                     "not match the known SHA-256.*data.verify=False"):
    data.load_fashion_mnist(str(tmp_path))
  with pytest.raises(ValueError, match="SHA-256"):
    data.load_dataset("fashion_mnist", str(tmp_path))
  data.load_dataset("fashion_mnist", str(tmp_path), verify=False)


def test_labels_out_of_range_are_refused_at_load(tmp_path):
  # Labels >= C used to be dropped silently by class splits.
  labels = np.zeros(20, int)
  labels[7] = 12
  _fake_fashion_mnist(tmp_path, train_labels=labels)
  with pytest.raises(ValueError, match=r"fashion_mnist train split: label "
                     r"y\[7\] = 12 is outside \[0, 10\)"):
    data.load_fashion_mnist(str(tmp_path), verify=False)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_gzip_names_the_file(tmp_path, damage):
  # A damaged .gz used to give a bare EOFError / BadGzipFile.
  _fake_fashion_mnist(tmp_path, compress=True)
  path = tmp_path / "t10k-images-idx3-ubyte.gz"
  raw = bytearray(path.read_bytes())
  if damage == "truncate":
    raw = raw[:len(raw) // 2]
  else:
    raw[len(raw) // 2] ^= 0xFF
  path.write_bytes(bytes(raw))
  with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz is damaged "
                     "or truncated"):
    data.load_fashion_mnist(str(tmp_path), verify=False)


def test_real_files_pass_verification(fashion_mnist):
  assert fashion_mnist.train.digest == data.load_fashion_mnist().train.digest


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
  with pytest.raises(ValueError, match=r"s: input x\[1\] contains NaN"):
    data.make_split(np.array([[0.0, 1.0], [np.nan, 1.0]]), np.array([0, 0]),
                    name="s")
  with pytest.raises(ValueError, match="integers"):
    data.make_split(np.zeros((2, 2)), np.array([0.5, 1.0]))
  with pytest.raises(ValueError):
    data.make_split(np.zeros((3, 2)), np.array([0, 1]))
  with pytest.raises(ValueError, match=r"label y\[1\] = -1 is outside"):
    data.make_split(np.zeros((2, 2)), np.array([0, -1]))
  with pytest.raises(ValueError, match=r"label y\[0\] = 3 is outside \[0, 3\)"):
    data.make_split(np.zeros((2, 2)), np.array([3, 0]), num_classes=3)
  # Checked before the cast to int32, which wraps 2**40 to class 0.
  with pytest.raises(ValueError, match=r"label y\[1\] = 1099511627776"):
    data.make_split(np.zeros((2, 2)), np.array([0, 2**40]), num_classes=10)
  with pytest.raises(ValueError, match="t must be integers"):
    data.Split(np.zeros((2, 2)), np.zeros(2, int), np.zeros(2))


def test_split_digest_follows_content(digits):
  a = digits.train
  b = a.replace(x=a.x.copy())
  assert a.digest == b.digest and len(a.digest) == 64
  x = a.x.copy()
  x[5, 0, 0, 0] += 1e-3
  assert a.replace(x=x).digest != a.digest
  assert a.replace(y=(a.y + 1) % 10).digest != a.digest


def test_load_dataset_unknown():
  with pytest.raises(ValueError, match="unknown dataset"):
    data.load_dataset("mnist_from_the_internet")
