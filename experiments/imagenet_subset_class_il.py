"""The ImageNet-100 class-incremental protocols (UCIR, Hou et al. 2019;
PODNet, Douillard et al. 2020) on a prepared tfds ``imagenet2012``,
streamed: images decoded on access (random-resized crop and flip for
training, resize and central crop for testing), never the whole dataset
in memory.

* The 100 classes: UCIR's ``seed_1993_subset_100_imagenet`` (its
  ``gen_imagenet_subset.py``: ``np.random.seed(1993)``, then
  ``np.random.choice`` of 100 of the 1,000 synsets in sorted order, which
  are tfds's label ids), relabelled 0..99 in sorted order.
* Their order: the seed-1993 permutation of UCIR's main script (the same
  as CIFAR-100's, ``cifar100_class_il.class_order``).
* ``:b50_5`` (default) and ``:b50_10``: 50 classes first, then 5 steps of
  10 or 10 of 5 (UCIR's and PODNet's tables).
* ResNet-18, 224x224, SGD lr 0.1 (momentum 0.9, weight decay 1e-4), batch
  128, 90 epochs a task, the rate divided by 10 after 30 and 60 (UCIR);
  20 exemplars per class (UCIR's ``nb_protos``), herding; top-5 beside
  top-1.
* Methods: fine-tuning, LwF, iCaRL, End-to-End IL, ER, DER++, UCIR, BiC,
  IL2M and WA; their end-of-task work on a task's images (herding, UCIR's
  imprinting, IL2M's statistics) decodes one class at a time.

``runlocal`` makes a quick check on a small build at 32x32 (one epoch, a
few images a class; the test suite's synthetic build).

    cljax run --config experiments/imagenet_subset_class_il.py:b50_10 \\
        --config.data.data_dir=DIR --config.workdir=runs/imagenet100_b50_10
"""

import os
import sys

import numpy as np


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cifar100_class_il import parse_arg, protocol  # noqa: E402

SPLITS = {"b50_5": (50, 10), "b50_10": (50, 5)}
METHODS = ("finetune", "lwf", "icarl", "e2eil", "er", "derpp", "ucir", "bic",
           "il2m", "wa")
# Herding, 20 a class (BiC: 2,000 in all, its validation part inside).
REHEARSAL = ("icarl", "e2eil", "er", "ucir", "il2m", "wa")


def subset_labels() -> tuple:
  """The 100 tfds labels of UCIR's ImageNet-100, ascending."""
  rng = np.random.RandomState(1993)
  return tuple(sorted(int(c) for c in rng.choice(1000, 100, replace=False)))


def get_config(arg="b50_5"):
  name, quick = parse_arg(arg, SPLITS, "b50_5")
  first, step = SPLITS[name]
  sizes = (first,) + (step,) * ((100 - first) // step)
  c = protocol(sizes, "resnet18", METHODS, weight_decay=1e-4, epochs=90,
               decay_at=(30, 60))
  c.name = f"imagenet100_class_il_{name}" + ("_runlocal" if quick else "")
  c.data.name = "tfds:imagenet2012"
  c.data.image_size = 224
  c.data.classes = subset_labels()
  c.data.test_split = "validation"
  c.train.eval_batch_size = 250
  c.log.every = 100
  for name in REHEARSAL:
    c.method[name].budget = "per_class"
    c.method[name].per_class = 20
    c.method[name].memory_size = 2000
  c.method.derpp.memory_size = 2000  # its reservoir, as many slots
  c.method.bic.memory_size = 2000
  if quick:
    c.data.image_size = 32
    c.train.epochs = 1
    # A few steps at batch 8 on random images: at lr 0.1 LwF's warm-up (in
    # eval mode, on BatchNorm statistics of 18 steps) diverged.
    c.train.lr = 0.01
    c.train.batch_size = 8
    c.train.eval_batch_size = 50
    for name in REHEARSAL:
      c.method[name].per_class = 1
      c.method[name].memory_size = 100
    c.method.derpp.memory_size = 100
    # 1 validation image a class at the end (of 3), 120 exemplar slots.
    c.method.bic.memory_size = 220
    c.method.bic.val_size = 100
  return c
