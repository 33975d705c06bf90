"""tensorflow-datasets, offline: read a prepared dataset from a ``data_dir``.

Reading goes through the build's own metadata (a read-only builder: the
dataset's builder code is never loaded). A build in ``array_record`` format
is read through a tfds data source (random access), which needs no
TensorFlow. A build in tfds's default ``tfrecord`` format needs TensorFlow
to read; without it, loading stops with the ``tfds convert_format`` command
that converts it to ``array_record``. Building a dataset (``prepare_tfds``)
runs the dataset's tfds builder once, which does need TensorFlow; for
``fashion_mnist`` it can build from local files without any download (see
``restore_fashion_mnist_gzip_headers``).
"""

from __future__ import annotations

import os

import numpy as np

from cljax._quiet import drop_absl_messages
from cljax.data._datasets import Dataset, _finish

# Debian's dataset-fashion-mnist files differ from upstream's only in their
# gzip headers (strip-nondeterminism cleared FNAME and reset MTIME); these are
# upstream's header fields, so the restored files are byte-identical to the
# ones tfds checksums (url_checksums/fashion_mnist.txt).
_UPSTREAM_MTIME = {"train": 0x59A7E9DE, "t10k": 0x59A7E9F3}
_FMNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def tfds_module():
  """``tensorflow_datasets``, or a ``ValueError`` saying how to install it
  (the ``tfds`` extra), since ``pip install cljax`` alone lacks it."""
  try:
    import tensorflow_datasets
  except ImportError as e:
    raise ValueError(
        f"tfds datasets need tensorflow-datasets ({e}): pip install -e "
        "\".[tfds]\" in a checkout, or pip install \"cljax[tfds]\"") from None
  # (it decodes images with Pillow, which the tfds extra installs)
  drop_absl_messages("OpenCV is not installed")
  return tensorflow_datasets


def restore_fashion_mnist_gzip_headers(src_dir: str, dst_dir: str) -> list:
  """Writes upstream-identical copies of Debian's Fashion-MNIST files.

  Sets the gzip FNAME flag and name (the file name without ``.gz``) and the
  upstream MTIME; the deflate stream and trailer are copied unchanged. tfds's
  checksum check then passes on the result as it is.

  Returns:
    The written paths.
  """
  os.makedirs(dst_dir, exist_ok=True)
  out = []
  for name in _FMNIST_FILES:
    with open(os.path.join(src_dir, name), "rb") as f:
      data = f.read()
    if data[:3] != b"\x1f\x8b\x08":
      raise ValueError(f"{name} is not a gzip file")
    flags = data[3]
    if flags & ~0x08:
      raise ValueError(f"{name}: unexpected gzip flags {flags:#x}")
    body = 10
    if flags & 0x08:  # skip an existing name
      body = data.index(b"\x00", 10) + 1
    mtime = _UPSTREAM_MTIME[name.split("-")[0]]
    header = (b"\x1f\x8b\x08\x08" + mtime.to_bytes(4, "little") + data[8:10] +
              name[:-3].encode() + b"\x00")
    path = os.path.join(dst_dir, name)
    with open(path, "wb") as f:
      f.write(header + data[body:])
    out.append(path)
  return out


def prepare_tfds(name: str, data_dir: str, manual_dir: str | None = None):
  """Builds ``name`` as array_record in ``data_dir`` (needs TensorFlow).

  ``manual_dir`` holds files the builder would otherwise download, under
  their upstream names; nothing is fetched when they are all there.
  """
  tfds = tfds_module()
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir))
  return builder


def _to_arrays(source, image_key, label_key):
  n = len(source)
  if n == 0:
    raise ValueError("empty split")
  items = source.__getitems__(range(n)) if hasattr(
      source, "__getitems__") else [source[i] for i in range(n)]
  x = np.stack([np.asarray(it[image_key]) for it in items])
  y = np.asarray([int(it[label_key]) for it in items])
  return x, y


def load_tfds(name: str, data_dir: str | None, *, train_split: str = "train",
              test_split: str = "test", image_key: str = "image",
              label_key: str = "label") -> Dataset:
  """Loads a prepared tensorflow-datasets image dataset into memory.

  Args:
    name: the tfds name, e.g. ``"fashion_mnist"`` or ``"cifar100"``.
    data_dir: where the user prepared it (array_record format). Nothing is
      downloaded or built here.
  Returns:
    A ``Dataset`` with images scaled to [0, 1] and standardised per channel.
  """
  version_dir = _version_dir(name, data_dir)
  tfds = tfds_module()
  builder = tfds.builder_from_directory(version_dir)
  num_classes = builder.info.features[label_key].num_classes
  fmt = str(getattr(builder.info.file_format, "value",
                    builder.info.file_format))
  splits = []
  for split in (train_split, test_split):
    if fmt == "array_record":
      x, y = _to_arrays(builder.as_data_source(split=split), image_key,
                        label_key)
    else:
      x, y = _read_with_tensorflow(builder, split, image_key, label_key,
                                   version_dir, fmt)
    splits += [x.astype(np.float32) / 255.0, y]
  return _finish(name, *splits, num_classes)


def _version_dir(name: str, data_dir: str | None) -> str:
  """The latest prepared version of ``name`` in ``data_dir``. Read through
  the build's own metadata (a read-only builder), so the dataset's builder
  code, which may import TensorFlow, is never loaded."""
  if not data_dir:
    raise ValueError(f"tfds:{name} needs data.data_dir: the directory where "
                     "the dataset was prepared (--config.data.data_dir=DIR)")
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f"tfds data_dir {data_dir!r} does not exist")
  root = os.path.join(data_dir, *name.split("/"))
  versions = [v for v in (os.listdir(root) if os.path.isdir(root) else [])
              if os.path.exists(os.path.join(root, v, "dataset_info.json"))]
  if not versions:
    raise FileNotFoundError(
        f"tfds dataset {name!r} is not prepared in {data_dir!r}; build it "
        "once with cljax.data.prepare_tfds (needs tensorflow) or `tfds build`")
  latest = max(versions, key=lambda v: tuple(int(p) for p in v.split(".")))
  return os.path.join(root, latest)


def in_memory_mb(name: str, data_dir: str | None, *,
                 splits=("train", "test"), image_key: str = "image") -> float:
  """The size in MB (2**20 bytes) of ``splits`` of a prepared build loaded
  whole as float32 (``load_tfds``), from the build's metadata (nothing
  decoded). ``ValueError`` if its images vary in size (only streaming at a
  fixed ``image_size`` reads those)."""
  version_dir = _version_dir(name, data_dir)
  info = tfds_module().builder_from_directory(version_dir).info
  shape = _fixed_shape(info, image_key, name)
  return sum(info.splits[s].num_examples for s in splits) * int(
      np.prod(shape)) * 4 / 2**20


def _fixed_shape(info, image_key: str, name: str) -> tuple:
  shape = tuple(info.features[image_key].shape)
  if None in shape:
    raise ValueError(f"tfds:{name}'s images vary in size {shape}: stream "
                     "them at a fixed size (data.image_size)")
  return shape


def _channel_stats(source, n: int, shape: tuple, chunk: int = 4096):
  """The channel mean and standard deviation (plus 1e-8) of a split's
  ``n`` images scaled to [0, 1] (float32), in float64 as ``_standardise``
  computes them for data in memory, from sums over chunks decoded one at a
  time (one pass)."""
  from cljax.data._streamed import Native, StreamedImages
  c = shape[-1]
  raw = Native(shape, np.zeros(c), np.ones(c))  # x / 255 as it is
  total, squares = np.zeros(c), np.zeros(c)
  for start in range(0, n, chunk):
    x = np.asarray(StreamedImages(source, np.arange(start, min(n, start +
                                                               chunk)), 0,
                                  native=raw))
    total += x.sum(axis=(0, 1, 2), dtype=np.float64)
    squares += np.square(x, dtype=np.float64).sum(axis=(0, 1, 2))
  count = n * shape[0] * shape[1]
  mean = total / count
  return mean, np.sqrt(np.maximum(squares / count - mean**2, 0)) + 1e-8


def load_tfds_streamed(name: str, data_dir: str | None, image_size: int, *,
                       classes=(), train_split: str = "train",
                       test_split: str = "test", image_key: str = "image",
                       label_key: str = "label", seed: int = 0) -> Dataset:
  """A prepared tfds image dataset as ``StreamedImages``: decoded on
  access at ``image_size x image_size`` (see ``cljax.data._streamed``),
  never whole in memory. Only the labels are read up front (every record
  is read once, no image decoded).

  With ``image_size=0`` the images keep their stored size and channels and
  are standardised as ``load_tfds`` does in memory (``Native``; the
  training split's channel statistics come from one decoding pass over
  it): the same arrays as ``load_tfds`` gives, to float rounding, for a
  dataset too large to load.

  Args:
    name, data_dir: as ``load_tfds`` (an array_record build).
    image_size: the side of the decoded square images, or 0 (their own).
    classes: optional labels (ints or the dataset's class names) to keep,
      relabelled ``0..len(classes)-1`` in the order given (e.g. the 100
      classes of ImageNet-100).
    train_split, test_split: the build's split names (ImageNet's test
      split is ``"validation"``).
    seed: seeds the training augmentation's draws.
  """
  from cljax.data._datasets import Split
  from cljax.data._streamed import Native, StreamedImages, _Source
  version_dir = _version_dir(name, data_dir)
  tfds = tfds_module()
  info = tfds.builder_from_directory(version_dir).info
  fmt = str(getattr(info.file_format, "value", info.file_format))
  if fmt != "array_record":
    raise ValueError(f"streaming needs an array_record build; {version_dir} "
                     f"is {fmt} (convert it: tfds convert_format "
                     f"--dataset_version_dir={version_dir} "
                     "--out_file_format=array_record)")
  label_feature = info.features[label_key]
  num_classes = label_feature.num_classes
  if classes:
    names = list(label_feature.names)
    keep = np.asarray([c if isinstance(c, (int, np.integer)) else
                       names.index(c) for c in classes], np.int64)
    if len(set(keep.tolist())) != len(keep) or not (
        0 <= keep.min() and keep.max() < num_classes):
      raise ValueError(f"data.classes: {len(keep)} distinct labels in [0, "
                       f"{num_classes}) expected, got {list(classes)[:10]}...")
    relabel = np.full(num_classes, -1, np.int64)
    relabel[keep] = np.arange(len(keep))
    num_classes = len(keep)
  splits, native = [], None
  for split in (train_split, test_split):
    source = _Source(version_dir, split, image_key, label_key)
    y = source.labels()
    if not image_size and native is None:  # the training split's statistics
      shape = _fixed_shape(info, image_key, name)
      native = Native(shape, *_channel_stats(source, len(y), shape))
    idx = np.arange(len(y))
    if classes:
      idx = idx[relabel[y] >= 0]
      y = relabel[y[idx]]
    splits.append(Split(StreamedImages(source, idx, image_size, seed,
                                       native=native),
                        y.astype(np.int32), np.zeros(len(y), np.int32)))
  return Dataset(name, *splits, num_classes)


def _read_with_tensorflow(builder, split, image_key, label_key, version_dir,
                          fmt):
  """A whole split of a build in a format only TensorFlow reads."""
  import importlib.util
  if importlib.util.find_spec("tensorflow") is None:
    raise ValueError(
        f"the tfds build in {version_dir} is in {fmt} format, which needs "
        "TensorFlow to read: install it (pip install -e '.[tfds-build]'), or "
        "convert the build once to array_record, which reads without it, "
        "where TensorFlow is installed (any machine): tfds convert_format "
        f"--dataset_version_dir={version_dir} --out_file_format=array_record")
  tfds = tfds_module()
  data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1,
                                          shuffle_files=False))
  return np.asarray(data[image_key]), np.asarray(data[label_key])
