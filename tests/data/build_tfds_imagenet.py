"""Builds tests/data/tfds/array_record/imagenet2012: a synthetic ImageNet
made through tfds's own ImageNet-2012 builder (its features and splits
exactly as a real build's: variable-size JPEG images, 1,000 labels named by
WordNet synset, ``train`` and ``validation``), with small random images in
place of the archives', 3 training and 1 validation image for each of the
100 classes of ImageNet-100 (``experiments/imagenet_subset_class_il.py``)
and 1 of each of 10 other classes (which the subset must leave out). For
checking that the ImageNet-100 protocol streams and runs end to end,
without TensorFlow at test time; never for accuracy. Needs TensorFlow; run
once:

    python tests/data/build_tfds_imagenet.py
"""

import os
import shutil
import sys

import numpy as np
import tensorflow_datasets as tfds

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "experiments"))
from imagenet_subset_class_il import subset_labels  # noqa: E402

OUT = os.path.join(HERE, "tfds", "array_record")
OTHERS = 10  # classes outside the subset, one image each


class SyntheticImagenet(tfds.builder_cls("imagenet2012"),
                        skip_registration=True):
  name = "imagenet2012"

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._examples(0, 3), "validation": self._examples(1, 1)}

  def _examples(self, seed, per_class):
    rng = np.random.default_rng(seed)
    labels = list(subset_labels()) * per_class + [
        c for c in range(1000) if c not in set(subset_labels())][:OTHERS]
    for i, label in enumerate(labels):
      h, w = rng.integers(20, 48, 2)  # variable sizes, as ImageNet's
      # Smooth colour fields (small as JPEG): a random 3x3 grid, upsampled.
      grid = rng.integers(0, 256, (3, 3, 3)).astype(np.float64)
      img = _bilinear(grid, h, w)
      yield i, {"image": img.astype(np.uint8), "label": int(label),
                "file_name": f"synthetic_{seed}_{i}.JPEG"}


def _bilinear(grid, h, w):
  """``grid`` (g, g, 3) bilinearly upsampled to (h, w, 3)."""
  ys = np.linspace(0, grid.shape[0] - 1, h)
  xs = np.linspace(0, grid.shape[1] - 1, w)
  y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
  y1, x1 = np.minimum(y0 + 1, grid.shape[0] - 1), np.minimum(
      x0 + 1, grid.shape[1] - 1)
  fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
  top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x1] * fx
  bottom = grid[y1][:, x0] * (1 - fx) + grid[y1][:, x1] * fx
  return top * (1 - fy) + bottom * fy


if __name__ == "__main__":
  shutil.rmtree(os.path.join(OUT, "imagenet2012"), ignore_errors=True)
  SyntheticImagenet(data_dir=OUT,
                    file_format="array_record").download_and_prepare()
  print("built", os.path.join(OUT, "imagenet2012"))
