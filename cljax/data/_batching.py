"""Fixed-shape batches from splits (in memory or streamed), and on-device
augmentation."""

from __future__ import annotations

from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from cljax.data._datasets import Split
from cljax.data._streamed import augmented_or_plain, materialise


def num_batches(n: int, batch_size: int) -> int:
  """Full batches per epoch (the remainder is dropped, reshuffled next epoch)."""
  return n // batch_size


def batch_indices(n: int, batch_size: int, rng: np.random.Generator,
                  start: int = 0, stop: int | None = None) -> np.ndarray:
  """One epoch's shuffled batches as rows of example indices: ``(k,
  batch_size)`` int32, batches ``start..stop-1`` of a permutation of
  ``0..n-1`` drawn from ``rng`` (the remainder ``n % batch_size`` left
  out, a different random subset each epoch)."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if n < batch_size:
    raise ValueError(f"a task has {n} training examples, fewer than "
                     f"batch_size={batch_size}")
  perm = rng.permutation(n).astype(np.int32)
  total = num_batches(n, batch_size)
  stop = total if stop is None else min(total, stop)
  return perm[:total * batch_size].reshape(total, batch_size)[start:stop]


def train_batches(split: Split, batch_size: int,
                  rng: np.random.Generator, start: int = 0,
                  stop: int | None = None) -> Iterator[dict]:
  """One epoch of shuffled, full-size batches ``{"x", "y", "t"}``.

  Every batch has exactly ``batch_size`` examples so the train step compiles
  once; the ``len(split) % batch_size`` examples left over in an epoch are a
  different random subset each epoch. ``start`` skips the epoch's first
  batches (the same permutation is drawn: resuming inside an epoch);
  ``stop`` ends the epoch early, after batch ``stop - 1``.
  """
  for idx in batch_indices(len(split), batch_size, rng, start, stop):
    yield {"x": augmented_or_plain(split.x[idx]), "y": split.y[idx],
           "t": split.t[idx]}


def eval_batches(split: Split, batch_size: int) -> Iterator[dict]:
  """Batches in order, the last one padded; ``"w"`` is 1 for real examples."""
  n = len(split)
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    w = (idx < n).astype(np.float32)
    idx = np.minimum(idx, n - 1)
    yield {"x": materialise(split.x[idx]), "y": split.y[idx],
           "t": split.t[idx], "w": w}


def random_crop_flip(rng: jax.Array, x: jax.Array, padding: int = 4) -> jax.Array:
  """Random crop after zero padding, and random horizontal flip.

  The standard CIFAR augmentation (He et al. 2016), on device, per example.

  Args:
    rng: a PRNG key.
    x: ``(B, H, W, C)`` images.
    padding: pixels of zero padding on each side before cropping.
  Returns:
    ``(B, H, W, C)`` augmented images.
  """
  b, h, w, c = x.shape
  k_off, k_flip = jax.random.split(rng)
  padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  offsets = jax.random.randint(k_off, (b, 2), 0, 2 * padding + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
  out = jax.vmap(crop)(padded, offsets)
  flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
  return jnp.where(flip, out[:, :, ::-1, :], out)


AUGMENTATIONS = {"none": None, "crop_flip": random_crop_flip}
