"""CIFAR-100 class-incremental protocols, for accelerators.

The standard class order of iCaRL and PyCIL (a permutation of the 100
classes drawn with seed 1993), ResNet-32, a herding memory of K = 2,000
exemplars in all. The argument picks the split:

* ``b0_5``, ``b0_10`` (default), ``b0_20``: from zero, 5, 10 or 20 classes
  per step (iCaRL's protocol);
* ``b50_5``, ``b50_10``, ``b50_25``: 50 classes first, then 5, 10 or 25
  steps (UCIR's and PODNet's);

optionally with ``,runlocal`` (a few examples, one epoch, K = 1,000: a check
that the protocol runs, on any machine). Training (iCaRL's schedule): SGD
with momentum 0.9, lr 0.1 divided by 10 at epochs 49 and 63 of 70, weight
decay 5e-4, batch 128, random crops and flips. Methods: fine-tuning,
joint, LwF (LwF.MC in class-IL), iCaRL, End-to-End IL, ER, DER++, UCIR,
BiC, IL2M, WA. Metrics: average incremental accuracy (Rebuffi et al.), final
accuracy, forgetting.

CIFAR-100 is not downloaded at run time: prepare it once where the archive
can be had (``python -c "from cljax.data import prepare_tfds;
prepare_tfds('cifar100', DIR)"``, or ``tfds build cifar100
--data_dir=DIR``), then

    cljax run --config experiments/cifar100_class_il.py:b50_10 \\
        --config.data.data_dir=DIR

Published averages of incremental accuracy on real data, to compare with:
iCaRL 64.1 at 10 classes a step (Rebuffi et al. 2017, Table 1); at B50 with
10 steps, UCIR (CNN) 61.22, BiC 53.21, iCaRL 53.78 (PODNet, Douillard et
al. 2020, Table 1); End-to-End IL 63.6 and BiC 63.5 at 10 steps (WA, Zhao
et al. 2020, Table 4). A full run trains 11 methods x 70 epochs over up to
25 tasks of ResNet-32: hours on one GPU, out of reach of 2 CPU cores.
"""

import numpy as np

from cljax.default_config import get_config as base

METHODS = ("finetune", "joint", "lwf", "icarl", "e2eil", "er", "derpp",
           "ucir", "bic", "il2m", "wa")
REHEARSAL = ("icarl", "e2eil", "er", "derpp", "ucir", "bic", "il2m", "wa")
SPLITS = {"b0_5": (0, 5), "b0_10": (0, 10), "b0_20": (0, 20),
          "b50_5": (50, 5), "b50_10": (50, 10), "b50_25": (50, 25)}


def class_order(seed: int = 1993) -> tuple[int, ...]:
  """iCaRL's and PyCIL's CIFAR-100 order: ``np.random.seed(1993);
  np.random.permutation(100)``."""
  return tuple(int(c) for c in np.random.RandomState(seed).permutation(100))


def task_sizes(base_classes: int, n: int) -> tuple[int, ...]:
  """B0: ``n`` classes a step; B50: 50 classes, then ``n`` equal steps."""
  if base_classes == 0:
    return (n,) * (100 // n)
  return (base_classes,) + ((100 - base_classes) // n,) * n


def parse_arg(arg, splits, default):
  """``(split name, quick)`` from a config arg ``"<split>[,runlocal]"``."""
  tokens = [a for a in (arg or "").split(",") if a]
  quick = "runlocal" in tokens
  names = [t for t in tokens if t != "runlocal"] or [default]
  if len(names) > 1 or names[0] not in splits:
    raise ValueError(f"config arg: one of {sorted(splits)}, optionally with "
                     f"',runlocal', got {arg!r}")
  return names[0], quick


def protocol(sizes, model, methods, *, weight_decay, epochs, decay_at):
  """What the CIFAR-100 and ImageNet-100 protocols share: class-IL in
  ``sizes`` classes a task in the seed-1993 order, no validation split,
  SGD lr 0.1 with momentum 0.9 and batch 128, the rate divided by 10 after
  the epochs ``decay_at``, top-5 beside top-1, iCaRL's nearest mean with
  flips."""
  c = base()
  c.scenario.kind = "class_incremental"
  c.scenario.num_tasks = len(sizes)
  c.scenario.task_sizes = sizes
  c.scenario.class_order = class_order()
  c.scenario.val_fraction = 0.0
  c.model.name = model
  c.train.eval_top_k = 5
  c.train.optimizer = "sgd"
  c.train.lr = 0.1
  c.train.momentum = 0.9
  c.train.weight_decay = weight_decay
  c.train.batch_size = 128
  c.train.epochs = epochs
  c.train.schedule = "multistep"
  c.train.milestones = tuple(e / epochs for e in decay_at)
  c.train.decay = 0.1
  c.train.eval_every = 0
  c.methods = ",".join(methods)
  c.method.icarl.nme_flip = True
  return c


def get_config(arg="b0_10"):
  name, quick = parse_arg(arg, SPLITS, "b0_10")
  sizes = task_sizes(*SPLITS[name])
  c = protocol(sizes, "resnet32", METHODS, weight_decay=5e-4, epochs=70,
               decay_at=(49, 63))
  c.name = f"cifar100_class_il_{name}" + ("_runlocal" if quick else "")
  c.data.name = "tfds:cifar100"
  c.train.augment = "crop_flip"
  for name in REHEARSAL:
    c.method[name].memory_size = 2000
  if quick:
    c.train.epochs = 1
    c.train.batch_size = 32
    c.scenario.train_per_task = 20 * sizes[-1]
    c.scenario.test_per_task = 4 * sizes[-1]
    for name in REHEARSAL:  # BiC's validation part: 1 a class at the end
      c.method[name].memory_size = 1000
    c.method.e2eil.balanced_passes = 1
  return c
