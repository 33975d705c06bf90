"""Real datasets, loaded offline into memory as normalised numpy arrays.

Nothing here downloads. Three sources:

* scikit-learn's bundled 8x8 ``digits`` (the embedded default),
* Fashion-MNIST from a directory of the four standard idx files (gzipped or
  not), by default where Debian's ``dataset-fashion-mnist`` installs them,
* any dataset a user has prepared with tensorflow-datasets in a ``data_dir``
  (see ``_tfds.py``).

Images are stored NHWC, float32, scaled to [0, 1] and then standardised per
channel with the training split's mean and standard deviation.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from typing import NamedTuple

import numpy as np

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


@dataclasses.dataclass(frozen=True)
class Split:
  """Examples of one split, all in memory.

  Attributes:
    x: ``(N, H, W, C)`` float32 inputs.
    y: ``(N,)`` int32 labels in the dataset's global label space.
    t: ``(N,)`` int32 task index of each example (0 before a scenario assigns
      one).
  """
  x: np.ndarray
  y: np.ndarray
  t: np.ndarray

  def __len__(self) -> int:
    return len(self.y)

  def take(self, idx: np.ndarray) -> "Split":
    return Split(self.x[idx], self.y[idx], self.t[idx])

  def replace(self, **fields) -> "Split":
    return dataclasses.replace(self, **fields)


def make_split(x, y, t=None) -> Split:
  """Builds a checked ``Split``; ``t`` defaults to zeros."""
  x = np.asarray(x, np.float32)
  y = np.asarray(y)
  if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
    raise ValueError(f"x {x.shape} and y {y.shape} must be (N, ...) and (N,)")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"labels y must be integers, got dtype {y.dtype}")
  if not np.all(np.isfinite(x)):
    raise ValueError("inputs x contain NaN or inf")
  t = np.zeros(len(y), np.int32) if t is None else np.asarray(t, np.int32)
  return Split(x, y.astype(np.int32), t)


def concat(splits) -> Split:
  """Concatenates splits (e.g. all tasks seen so far, for joint training)."""
  splits = list(splits)
  return Split(*(np.concatenate([getattr(s, f) for s in splits])
                 for f in "xyt"))


class Dataset(NamedTuple):
  name: str
  train: Split
  test: Split
  num_classes: int


def _standardise(train_x: np.ndarray, test_x: np.ndarray):
  axes = tuple(range(train_x.ndim - 1))
  mean = train_x.mean(axis=axes, dtype=np.float64)
  std = train_x.std(axis=axes, dtype=np.float64) + 1e-8
  f = lambda a: ((a - mean) / std).astype(np.float32)
  return f(train_x), f(test_x)


def _finish(name, train_x, train_y, test_x, test_y, num_classes) -> Dataset:
  train_x, test_x = _standardise(train_x, test_x)
  return Dataset(name, make_split(train_x, train_y), make_split(test_x, test_y),
                 num_classes)


def load_digits(test_fraction: float = 0.2) -> Dataset:
  """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes).

  The dataset has no official test split; a stratified ``test_fraction`` is
  held out with a fixed seed (0), independent of any experiment seed, so every
  run is evaluated on the same images.
  """
  from sklearn.datasets import load_digits as _load
  from sklearn.model_selection import train_test_split
  d = _load()
  x = (d.images / 16.0).astype(np.float32)[..., None]
  tr_x, te_x, tr_y, te_y = train_test_split(
      x, d.target, test_size=test_fraction, random_state=0, stratify=d.target)
  return _finish("digits", tr_x, tr_y, te_x, te_y, 10)


def read_idx(path: str) -> np.ndarray:
  """Reads an idx file (the MNIST format), gzipped or not, as a numpy array."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if data[:2] != b"\x00\x00" or data[2] != 0x08:
    raise ValueError(f"{path} is not an idx file of unsigned bytes")
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
                for i in range(ndim))
  arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if arr.size != int(np.prod(shape)):
    raise ValueError(f"{path}: header says {shape}, found {arr.size} values")
  return arr.reshape(shape)


def _find_idx(directory: str, stem: str) -> str:
  for name in (stem + ".gz", stem):
    p = os.path.join(directory, name)
    if os.path.exists(p):
      return p
  raise FileNotFoundError(
      f"no {stem}[.gz] in {directory!r}; install Debian's "
      "'dataset-fashion-mnist' or pass the directory holding the idx files")


def load_fashion_mnist(path: str | None = None) -> Dataset:
  """Fashion-MNIST (28x28 grey, 60,000 train / 10,000 test, 10 classes).

  Args:
    path: a directory with the four standard idx files, gzipped or not.
      Defaults to Debian's ``/usr/share/datasets/fashion-mnist``.
  """
  directory = path or DEBIAN_FASHION_MNIST
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"Fashion-MNIST directory {directory!r} does not exist; "
        "`apt-get install dataset-fashion-mnist` or pass data.path")
  arr = {k: read_idx(_find_idx(directory, v)) for k, v in _IDX_FILES.items()}
  scale = lambda a: (a.astype(np.float32) / 255.0)[..., None]
  return _finish("fashion_mnist", scale(arr["train_x"]), arr["train_y"],
                 scale(arr["test_x"]), arr["test_y"], 10)


def load_dataset(name: str, path: str | None = None,
                 data_dir: str | None = None) -> Dataset:
  """Loads a dataset by name: ``digits``, ``fashion_mnist`` or ``tfds:<name>``.

  ``fashion_mnist`` reads idx files from ``path`` (default: Debian's); with
  ``data_dir`` set it reads the tensorflow-datasets build there instead.
  """
  if name == "digits":
    return load_digits()
  if name == "fashion_mnist" and data_dir is None:
    return load_fashion_mnist(path)
  tfds_name = name[len("tfds:"):] if name.startswith("tfds:") else name
  if name.startswith("tfds:") or name == "fashion_mnist":
    from cljax.data._tfds import load_tfds
    return load_tfds(tfds_name, data_dir)
  raise ValueError(f"data.name: unknown dataset {name!r}; expected 'digits', "
                   "'fashion_mnist' or 'tfds:<name>'")
