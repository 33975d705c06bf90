"""Streamed images: a prepared tfds/array_record dataset decoded on access,
never whole in memory (ImageNet-sized data).

``StreamedImages`` stands where a ``Split``'s ``x`` array would: it has the
shape ``(N, S, S, C)`` and dtype float32 of the decoded images, and indexing
it with example indices gives another lazy view (so scenarios carve tasks,
validation and subsets without decoding anything). Images are decoded only
when a batch is materialised: ``np.asarray(view)`` for evaluation and
features, ``view.augmented()`` for training. Each goes through a grain
``MapDataset`` over the tfds data source (random access; JPEG/PNG bytes
read with ``tfds.decode.SkipDecoding`` and decoded by Pillow, so no
TensorFlow), decoding a batch's images on a thread pool.

Transforms (the ImageNet recipe of He et al. 2016 / torchvision, as UCIR's
and PODNet's ImageNet code uses them):

* evaluation: resize the shorter side to ``S * 8 / 7`` (256 for 224), then
  a central ``S x S`` crop;
* training (``augmented``): a random-resized crop (scale 0.08-1, aspect
  ratio 3/4-4/3, Szegedy et al. 2015) resized to ``S x S``, then a random
  horizontal flip, drawn from a generator seeded by the batch's indices and
  the view's ``seed`` (so a resumed run draws the same crops);

then scaling to [0, 1] and standardising with ImageNet's channel mean and
standard deviation. A view with a ``Native`` recipe instead keeps the images
at their stored size and channels, scales them to [0, 1] and standardises
them with the dataset's own channel statistics, as loading it whole does
(``load_tfds``), with no augmentation on the host: the streamed form of a
dataset too large for memory (``load_tfds_streamed`` with ``image_size=0``).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
from typing import NamedTuple

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Source:
  """One split of a prepared build: a grain ``MapDataset`` of raw records
  (image bytes, label) and the build's identity (for digests)."""

  def __init__(self, version_dir: str, split: str, image_key: str,
               label_key: str):
    import grain
    from cljax.data._tfds import tfds_module
    tfds = tfds_module()
    builder = tfds.builder_from_directory(version_dir)
    self.source = builder.as_data_source(
        split=split, decoders={image_key: tfds.decode.SkipDecoding()})
    self.image_key, self.label_key = image_key, label_key
    self.dataset = grain.MapDataset.source(self.source)
    files = sorted(f for f in os.listdir(version_dir)
                   if f.startswith(f"{builder.info.name}-{split}."))
    h = hashlib.sha256(f"{builder.info.full_name}|{split}".encode())
    for f in files:
      h.update(f"{f}:{os.path.getsize(os.path.join(version_dir, f))}".encode())
    self.digest = h.hexdigest()

  def labels(self) -> np.ndarray:
    """Every example's label (reads every record, decodes no image)."""
    key = self.label_key
    return np.asarray([int(r[key]) for r in self.dataset], np.int64)

  def image(self, i: int, rgb: bool = True) -> np.ndarray:
    """Example ``i``'s image, decoded: ``(H, W, 3)`` uint8, or with
    ``rgb=False`` ``(H, W, C)`` with its stored channels (1 for grayscale;
    other modes than grayscale and RGB are converted to RGB)."""
    from PIL import Image
    raw = self.dataset[int(i)][self.image_key]
    with Image.open(io.BytesIO(raw)) as img:
      if rgb or img.mode not in ("L", "RGB"):
        return np.asarray(img.convert("RGB"))
      a = np.asarray(img)
    return a[..., None] if a.ndim == 2 else a


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
  from PIL import Image
  return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


def eval_transform(img: np.ndarray, size: int) -> np.ndarray:
  """Shorter side to ``round(size * 8 / 7)``, central ``size x size``."""
  h, w = img.shape[:2]
  short = round(size * 8 / 7)
  nh, nw = (short, max(short, round(w * short / h))) if h <= w else (
      max(short, round(h * short / w)), short)
  img = _resize(img, nh, nw)
  top, left = (nh - size) // 2, (nw - size) // 2
  return img[top:top + size, left:left + size]


def train_transform(img: np.ndarray, size: int,
                    rng: np.random.Generator) -> np.ndarray:
  """A random-resized crop (area 8-100 %, aspect 3/4-4/3; ten tries, then
  the central crop of the allowed aspect, as torchvision does) to ``size x
  size``, flipped left-right with probability 1/2."""
  h, w = img.shape[:2]
  area = h * w
  for _ in range(10):
    target = area * rng.uniform(0.08, 1.0)
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = round(np.sqrt(target * ratio)), round(np.sqrt(target / ratio))
    if 0 < cw <= w and 0 < ch <= h:
      top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
      break
  else:
    ratio = w / h
    cw, ch = (w, round(w / (3 / 4))) if ratio < 3 / 4 else (
        (round(h * 4 / 3), h) if ratio > 4 / 3 else (w, h))
    top, left = (h - ch) // 2, (w - cw) // 2
  out = _resize(img[top:top + ch, left:left + cw], size, size)
  return out[:, ::-1] if rng.random() < 0.5 else out


class Native(NamedTuple):
  """The recipe of a dataset streamed as it is stored: every image of
  ``shape`` ``(H, W, C)``, scaled to [0, 1] and standardised with the
  training split's channel ``mean`` and ``std`` (float64 ``(C,)``, the
  standard deviation plus 1e-8), as ``load_tfds`` loads it into memory."""
  shape: tuple
  mean: np.ndarray
  std: np.ndarray


class StreamedImages:
  """A lazy ``(N, S, S, 3)`` float32 array of a source's images (see the
  module docstring). ``indices`` may have any shape (e.g. ``(G, R)`` rows
  of classes); the view's shape is ``indices.shape + (S, S, 3)``, or
  ``indices.shape + native.shape`` with a ``Native`` recipe (``size`` is
  then 0)."""

  def __init__(self, source: _Source, indices, size: int, seed: int = 0,
               threads: int = 8, native: Native | None = None):
    self._source, self.size, self.seed = source, int(size), int(seed)
    self.indices = np.asarray(indices, np.int64)
    self.threads, self.native = threads, native

  # -- array-like --------------------------------------------------------------

  @property
  def shape(self) -> tuple:
    image = (tuple(self.native.shape) if self.native else
             (self.size, self.size, 3))
    return (*self.indices.shape, *image)

  @property
  def ndim(self) -> int:
    return len(self.shape)

  dtype = np.dtype(np.float32)

  @property
  def nbytes(self) -> int:
    """As if decoded (so size checks send it down the host paths)."""
    return int(np.prod(self.shape)) * 4

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, idx) -> "StreamedImages":
    """A lazy view of ``indices[idx]`` (an int array, a slice, ...)."""
    return StreamedImages(self._source, self.indices[idx], self.size,
                          self.seed, self.threads, self.native)

  def __array__(self, dtype=None, copy=None):
    out = self._decode(self._eval)
    return out if dtype is None else out.astype(dtype)

  @staticmethod
  def concat(views) -> "StreamedImages":
    """The views (of one source, size, recipe and seed) one after another."""
    first = views[0]
    if any(v._source is not first._source or v.size != first.size
           or v.native is not first.native for v in views):
      raise ValueError("can only concatenate views of one streamed source")
    return StreamedImages(first._source, np.concatenate(
        [v.indices for v in views]), first.size, first.seed, first.threads,
                          first.native)

  def digest(self) -> str:
    """The source build's identity, the indices and the image size (or the
    native recipe's shape and statistics)."""
    recipe = self.size if self.native is None else (
        f"native{tuple(self.native.shape)}{self.native.mean.tolist()}"
        f"{self.native.std.tolist()}")
    h = hashlib.sha256(f"{self._source.digest}|{recipe}|".encode())
    h.update(np.ascontiguousarray(self.indices).tobytes())
    h.update(str(self.indices.shape).encode())
    return h.hexdigest()

  # -- decoding ----------------------------------------------------------------

  def augmented(self, part: slice = slice(None)) -> np.ndarray:
    """The images ``part`` of the view (a 1-D view: a batch) with training
    augmentation (random-resized crop and flip), each drawn from a
    generator seeded by ``seed``, the whole view's indices and its
    position: a process decoding its part of a global batch draws what one
    process decoding all of it would. A ``Native`` view's images as they
    are (augmentation, if any, is the train step's, as for data in
    memory)."""
    if self.native is not None:
      return self._decode(self._eval, np.arange(self.indices.size)[part])
    key = int.from_bytes(hashlib.sha256(
        np.ascontiguousarray(self.indices).tobytes()).digest()[:8], "little")
    rngs = np.random.default_rng([self.seed, key]).spawn(self.indices.size)
    positions = np.arange(self.indices.size)[part]
    return self._decode(lambda img, i: train_transform(img, self.size,
                                                       rngs[i]), positions)

  def _eval(self, img: np.ndarray, i: int) -> np.ndarray:
    """The evaluation transform (``Native``: none, the image's shape
    checked against the recipe's)."""
    if self.native is None:
      return eval_transform(img, self.size)
    if img.shape != tuple(self.native.shape):
      raise ValueError(f"streamed image {self.indices.reshape(-1)[i]} has "
                       f"shape {img.shape}, not the build's "
                       f"{tuple(self.native.shape)}")
    return img

  def _decode(self, transform, positions=None) -> np.ndarray:
    flat = self.indices.reshape(-1)
    whole = positions is None
    positions = np.arange(flat.size) if whole else positions
    rgb = self.native is None
    imagenet_mean = np.asarray(IMAGENET_MEAN, np.float32)
    imagenet_std = np.asarray(IMAGENET_STD, np.float32)

    def one(i):
      img = transform(self._source.image(flat[i], rgb), i)
      if rgb:
        return (img.astype(np.float32) / 255.0 - imagenet_mean) / imagenet_std
      # As ``load_tfds`` then ``_standardise``: float32 in [0, 1], then
      # standardised in float64.
      return ((img.astype(np.float32) / 255.0 - self.native.mean) /
              self.native.std).astype(np.float32)

    with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
      images = list(pool.map(one, positions))
    out = (np.stack(images) if images else
           np.zeros((0, *self.shape[self.indices.ndim:]), np.float32))
    return out.reshape(self.shape) if whole else out


def materialise(x) -> np.ndarray:
  """``x`` as a NumPy array (decoding a streamed view)."""
  return x if isinstance(x, np.ndarray) else np.asarray(x)


def augmented_or_plain(x, part: slice = slice(None)) -> np.ndarray:
  """Rows ``part`` of a training batch's inputs: of a streamed view with
  its training augmentation (drawn for the whole batch), of an array as
  they are."""
  return x.augmented(part) if isinstance(x, StreamedImages) else x[part]
