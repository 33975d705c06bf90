"""Builds tests/data/tfds: scikit-learn's digits as a real tensorflow-datasets
build, in array_record and in tfrecord format (same images, same split as
``cljax.data.load_digits``), so the tfds reading path is tested on a real
prepared dataset without TensorFlow. Needs TensorFlow; run once:

    python tests/data/build_tfds_digits.py
"""

import os
import shutil

import numpy as np
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tfds")


class CljaxDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 digits (pixels 0-16), split as cljax's load_digits."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(num_classes=10)}),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager
    d = load_digits()
    x = d.images.astype(np.uint8)[..., None]
    tr_x, te_x, tr_y, te_y = train_test_split(
        x, d.target, test_size=0.2, random_state=0, stratify=d.target)
    return {"train": self._generate_examples(tr_x, tr_y),
            "test": self._generate_examples(te_x, te_y)}

  def _generate_examples(self, x, y):
    for i, (image, label) in enumerate(zip(x, y)):
      yield i, {"image": image, "label": int(label)}


if __name__ == "__main__":
  for fmt in ("array_record", "tfrecord"):
    out = os.path.join(HERE, fmt)
    shutil.rmtree(out, ignore_errors=True)
    CljaxDigits(data_dir=out, file_format=fmt).download_and_prepare()
    print("built", out)
