"""Split Fashion-MNIST, class-incremental: 5 tasks x 2 classes, single head.

Fine-tuning (lower bound) vs joint training on all tasks seen so far (upper
bound), MLP 784-400-400-10, SGD with momentum. Expected: fine-tuning forgets
every old task (final ACC near 1/5 of joint's); joint stays near the i.i.d.
accuracy of the network.

    cljax run --config experiments/split_fashion_mnist.py
    cljax run --config experiments/split_fashion_mnist.py:runlocal  # quick

The committed results (3 seeds, mean +- std):

    cljax run --config experiments/split_fashion_mnist.py --config.seeds=3 \
      --config.workdir=experiments/results/split_fashion_mnist
"""

from cljax.default_config import get_config as base


def get_config(arg=None):
  c = base()
  c.name = "split_fashion_mnist"
  c.data.name = "fashion_mnist"
  c.scenario.kind = "class_incremental"
  c.scenario.num_tasks = 5
  c.scenario.val_fraction = 0.1
  c.model.name = "mlp"
  c.model.hidden = (400, 400)
  c.train.epochs = 5
  c.train.batch_size = 128
  c.train.lr = 0.01
  c.train.momentum = 0.9
  c.train.eval_every = 100
  c.methods = "finetune,joint"
  if arg == "runlocal":  # a quick check: 1 epoch on 2,000 images a task
    c.name += "_runlocal"
    c.train.epochs = 1
    c.train.eval_every = 0
    c.scenario.train_per_task = 2000
    c.scenario.test_per_task = 500
  elif arg:
    raise ValueError(f"config arg: runlocal or nothing, got {arg!r}")
  return c
