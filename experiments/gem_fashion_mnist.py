"""The GEM paper's protocol (Lopez-Paz & Ranzato 2017, sec. 5) on
Fashion-MNIST (MNIST cannot be downloaded here).

``:permuted`` or ``:rotated`` streams of 20 tasks, 1,000 training examples
per task (plus 111 held out for validation), 2,000 test examples per task,
MLP 784-100-100-10, one pass (1 epoch), batch 10, plain SGD lr 0.1; GEM and
A-GEM with 256 memories per task, GEM's memory strength (margin) 0.5, as in
facebookresearch/GradientEpisodicMemory's run script. Methods: single
(fine-tuning), independent (one network per task with 1/20 of the hidden
units, 784-5-5-10, as in the paper), EWC (strength chosen on validation),
A-GEM, GEM. A second
argument sets the epochs (``:rotated,5``).

    cljax run --config experiments/gem_fashion_mnist.py:permuted \
        --config.workdir=experiments/results/gem_permuted
"""

import ml_collections

from cljax.default_config import get_config as base


def get_config(arg="permuted"):
  kind, _, epochs = (arg or "permuted").partition(",")
  if kind not in ("permuted", "rotated"):
    raise ValueError(f"config arg: permuted or rotated, got {arg!r}")
  c = base()
  c.name = f"gem_{kind}" + (f"_{epochs}ep" if epochs else "")
  c.data.name = "fashion_mnist"
  c.scenario.kind = kind
  c.scenario.num_tasks = 20
  c.scenario.train_per_task = 1111
  c.scenario.test_per_task = 2000
  c.scenario.val_fraction = 0.1
  c.model.name = "mlp"
  c.model.hidden = (100, 100)
  c.train.epochs = int(epochs or 1)
  c.train.batch_size = 10
  c.train.lr = 0.1
  c.train.momentum = 0.0
  c.train.eval_every = 0
  c.select = "val_acc"
  c.method.single = ml_collections.ConfigDict({"kind": "finetune"})
  c.method.independent = ml_collections.ConfigDict(
      {"kind": "independent", "hidden": (5, 5)})
  c.method.gem = ml_collections.ConfigDict(
      {"kind": "gem", "memory_size": 256, "margin": 0.5})
  c.method.agem = ml_collections.ConfigDict(
      {"kind": "agem", "memory_size": 256, "ref_size": 256})
  entries = ["single", "independent", "agem", "gem"]
  for lam in (1.0, 10.0, 100.0):
    entry = f"ewc__lam{lam:g}"
    c.method[entry] = ml_collections.ConfigDict({"kind": "ewc", "lam": lam})
    entries.insert(1, entry)
  c.methods = ",".join(entries)
  return c
