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
import functools
import gzip
import hashlib
import os
import zlib
from typing import NamedTuple

import numpy as np

from cljax._hashing import array_digest

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
# SHA-256 of the four files' idx content (decompressed), the same for the
# upstream .gz files (whose own checksums tfds records in
# url_checksums/fashion_mnist.txt), Debian's re-headered ones and unzipped
# copies; checked by tests/datasets_test.py against tfds's record.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte":
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte":
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte":
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte":
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
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

  def __post_init__(self):
    x, y, t = self.x, self.y, self.t
    if np.ndim(x) < 2 or np.ndim(y) != 1 or np.shape(t) != np.shape(y) or (
        len(x) != len(y)):
      raise ValueError(f"Split: x {np.shape(x)}, y {np.shape(y)} and t "
                       f"{np.shape(t)} must be (N, ...), (N,) and (N,)")
    for name, a in (("y", y), ("t", t)):
      if not np.issubdtype(np.asarray(a).dtype, np.integer):
        raise ValueError(f"Split: {name} must be integers, got dtype "
                         f"{np.asarray(a).dtype}")
    # Read-only views: the content digest is computed once, so a change in
    # place (split.x[:] = 0) would leave a checkpoint of the old data
    # looking current; it raises instead. (Arrays given to a Split must not
    # be changed through other references either.)
    for name in ("x", "y", "t"):
      a = getattr(self, name)
      if isinstance(a, np.ndarray) and a.flags.writeable:
        view = a.view()
        view.flags.writeable = False
        object.__setattr__(self, name, view)

  def __len__(self) -> int:
    return len(self.y)

  @functools.cached_property
  def digest(self) -> str:
    """SHA-256 of the content (shapes, dtypes and bytes of x, y and t),
    computed once per split: the data's part of a run's identity."""
    if not self.in_memory:  # streamed: its source's digest
      return hashlib.sha256((self.x.digest() + array_digest(
          (self.y, self.t))).encode()).hexdigest()
    return array_digest((self.x, self.y, self.t))

  @property
  def in_memory(self) -> bool:
    """Whether ``x`` is an array (else streamed: decoded on access)."""
    return isinstance(self.x, np.ndarray)

  @functools.cached_property
  def _first_nonfinite(self) -> int:
    if not self.in_memory:  # decoded 8-bit images: finite by construction
      return -1
    flat = self.x.reshape(len(self.x), int(np.prod(self.x.shape[1:])))
    bad = ~np.isfinite(flat).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else -1

  def check(self, num_classes: int, name: str = "split") -> "Split":
    """Raises ``ValueError`` naming ``name`` and the first bad index unless
    every label is in ``[0, num_classes)`` and every input is finite.
    Returns the split. (The scan over ``x`` is done once per split.)"""
    bad = np.flatnonzero((self.y < 0) | (self.y >= num_classes))
    if bad.size:
      raise ValueError(f"{name}: label y[{bad[0]}] = {self.y[bad[0]]} is "
                       f"outside [0, {num_classes}) ({bad.size} such labels)")
    if self._first_nonfinite >= 0:
      raise ValueError(f"{name}: input x[{self._first_nonfinite}] contains "
                       "NaN or inf")
    return self

  def take(self, idx: np.ndarray) -> "Split":
    return Split(self.x[idx], self.y[idx], self.t[idx])

  def replace(self, **fields) -> "Split":
    return dataclasses.replace(self, **fields)


def make_split(x, y, t=None, *, num_classes: int | None = None,
               name: str = "split") -> Split:
  """Builds a checked ``Split``; ``t`` defaults to zeros.

  Raises:
    ValueError (naming ``name`` and the first bad index): shapes other than
      ``(N, ...)`` and ``(N,)``, labels that are not integers (or, given
      ``num_classes``, not in ``[0, num_classes)``; negative ones always),
      or NaN/inf inputs.
  """
  x = np.asarray(x, np.float32)
  y = np.asarray(y)
  if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
    raise ValueError(f"{name}: x {x.shape} and y {y.shape} must be (N, ...) "
                     "and (N,)")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"{name}: labels y must be integers, got dtype {y.dtype}")
  # Range first, in the labels' own dtype: a cast could wrap 2**40 to 0.
  Split(x, y, np.zeros(len(y), np.int8)).check(
      np.iinfo(np.int32).max if num_classes is None else num_classes, name)
  t = np.zeros(len(y), np.int32) if t is None else np.asarray(t, np.int32)
  return Split(x, y.astype(np.int32), t)


def concat(splits) -> Split:
  """Concatenates splits (e.g. all tasks seen so far, for joint training)."""
  splits = list(splits)
  if not all(s.in_memory for s in splits):
    from cljax.data._streamed import StreamedImages
    return Split(StreamedImages.concat([s.x for s in splits]),
                 *(np.concatenate([getattr(s, f) for s in splits])
                   for f in "yt"))
  return Split(*(np.concatenate([getattr(s, f) for s in splits])
                 for f in "xyt"))


class Dataset(NamedTuple):
  name: str
  train: Split
  test: Split
  num_classes: int

  def check(self) -> "Dataset":
    """Raises ``ValueError`` unless both splits have labels in ``[0,
    num_classes)`` and finite inputs; returns the dataset."""
    self.train.check(self.num_classes, f"{self.name} train split")
    self.test.check(self.num_classes, f"{self.name} test split")
    return self


def _standardise(train_x: np.ndarray, test_x: np.ndarray):
  axes = tuple(range(train_x.ndim - 1))
  mean = train_x.mean(axis=axes, dtype=np.float64)
  std = train_x.std(axis=axes, dtype=np.float64) + 1e-8
  f = lambda a: ((a - mean) / std).astype(np.float32)
  return f(train_x), f(test_x)


def _finish(name, train_x, train_y, test_x, test_y, num_classes) -> Dataset:
  train_x, test_x = _standardise(train_x, test_x)
  return Dataset(name, *(make_split(x, y, num_classes=num_classes,
                                    name=f"{name} {part} split")
                         for part, x, y in (("train", train_x, train_y),
                                            ("test", test_x, test_y))),
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


def _read_bytes(path: str) -> bytes:
  """The file's content, decompressed if it ends in ``.gz``; a damaged or
  truncated gzip file is a ``ValueError`` naming it."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      return f.read()
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise ValueError(f"{path} is damaged or truncated ({type(e).__name__}: "
                     f"{e})") from None


def read_idx(path: str, sha256: str | None = None) -> np.ndarray:
  """Reads an idx file (the MNIST format), gzipped or not, as a numpy array.

  Args:
    path: the file.
    sha256: if given, the expected SHA-256 of the (decompressed) content.
  Raises:
    ValueError: a damaged file, not an idx file, or a checksum mismatch (each
      naming the file).
  """
  data = _read_bytes(path)
  if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
    raise ValueError(
        f"{path}: content does not match the known SHA-256 {sha256[:12]}...; "
        "the file is corrupt or not the official one (data.verify=False "
        "loads it anyway)")
  if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
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


def load_fashion_mnist(path: str | None = None, verify: bool = True
                       ) -> Dataset:
  """Fashion-MNIST (28x28 grey, 60,000 train / 10,000 test, 10 classes).

  Args:
    path: a directory with the four standard idx files, gzipped or not.
      Defaults to Debian's ``/usr/share/datasets/fashion-mnist``.
    verify: check each file's content against the official SHA-256
      (``FASHION_MNIST_SHA256``) and refuse a mismatch.
  """
  directory = path or DEBIAN_FASHION_MNIST
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"Fashion-MNIST directory {directory!r} does not exist; "
        "`apt-get install dataset-fashion-mnist` or pass data.path")
  arr = {k: read_idx(_find_idx(directory, v),
                     FASHION_MNIST_SHA256[v] if verify else None)
         for k, v in _IDX_FILES.items()}
  scale = lambda a: (a.astype(np.float32) / 255.0)[..., None]
  return _finish("fashion_mnist", scale(arr["train_x"]), arr["train_y"],
                 scale(arr["test_x"]), arr["test_y"], 10)


def load_dataset(name: str, path: str | None = None,
                 data_dir: str | None = None, verify: bool = True,
                 test_split: str = "test") -> Dataset:
  """Loads a dataset by name: ``digits``, ``fashion_mnist`` or ``tfds:<name>``.

  ``fashion_mnist`` reads idx files from ``path`` (default: Debian's),
  checked against the official checksums unless ``verify`` is False; with
  ``data_dir`` set it reads the tensorflow-datasets build there instead
  (testing on its split ``test_split``).
  """
  if name == "digits":
    return load_digits()
  if name == "fashion_mnist" and data_dir is None:
    return load_fashion_mnist(path, verify)
  tfds_name = name[len("tfds:"):] if name.startswith("tfds:") else name
  if name.startswith("tfds:") or name == "fashion_mnist":
    from cljax.data._tfds import load_tfds
    return load_tfds(tfds_name, data_dir, test_split=test_split)
  raise ValueError(f"data.name: unknown dataset {name!r}; expected 'digits', "
                   "'fashion_mnist' or 'tfds:<name>'")
