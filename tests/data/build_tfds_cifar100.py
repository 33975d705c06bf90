"""Builds tests/data/tfds/array_record/cifar100: a synthetic CIFAR-100 made
through tfds's own CIFAR-100 builder (its features, splits and array_record
files exactly as a real build's: 32x32x3 uint8 images, 100 fine and 20
coarse labels), with random images in place of the archive's, 5 training
and 2 test images a class. For checking that the CIFAR-100 protocol runs,
without TensorFlow at test time; never for accuracy. Needs TensorFlow; run
once:

    python tests/data/build_tfds_cifar100.py
"""

import os
import shutil

import numpy as np
import tensorflow_datasets as tfds

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tfds",
                   "array_record")
TRAIN_PER_CLASS, TEST_PER_CLASS = 5, 2


class SyntheticCifar100(tfds.builder_cls("cifar100"),
                        skip_registration=True):
  name = "cifar100"

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._examples(0, TRAIN_PER_CLASS),
            "test": self._examples(1, TEST_PER_CLASS)}

  def _examples(self, seed, per_class):
    rng = np.random.default_rng(seed)
    for i in range(100 * per_class):
      yield i, {"id": f"synthetic_{seed}_{i}",
                "image": rng.integers(0, 256, (32, 32, 3), np.uint8),
                "label": i % 100, "coarse_label": (i % 100) // 5}


if __name__ == "__main__":
  shutil.rmtree(os.path.join(OUT, "cifar100"), ignore_errors=True)
  SyntheticCifar100(data_dir=OUT,
                    file_format="array_record").download_and_prepare()
  print("built", os.path.join(OUT, "cifar100"))
