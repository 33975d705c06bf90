"""Parameter regularisation and distillation on Fashion-MNIST, three ways.

``:class`` split Fashion-MNIST, 5 tasks x 2 classes, one head (class-IL);
``:task``  the same tasks, one head per task (task-IL);
``:permuted`` permuted Fashion-MNIST, 5 tasks (10,000 training images each),
one 10-way head (domain-IL).

MLP 784-400-400-10, SGD with momentum, lr 0.01, 5 epochs per task, batch 128.
Methods: fine-tuning, L2, EWC, online EWC, SI, MAS, LwF, each with a small
grid of strengths chosen on the final average *validation* accuracy (10% of
each task's training data held out). Compare with van de Ven & Tolias 2019
("Three scenarios for continual learning", split/permuted MNIST):
regularisation helps in task-IL and domain-IL, barely in class-IL.

    cljax run --config experiments/regularisers_fashion_mnist.py:class \
        --config.workdir=experiments/results/regularisers_class
    cljax run --config experiments/regularisers_fashion_mnist.py:runlocal

``runlocal`` (alone or after a scenario, ``:permuted,runlocal``) is a quick
check: 1 epoch on 2,000 images a task, the middle value of each grid.
"""

from cljax.default_config import get_config as base
from cljax.default_config import method_entry

GRID = {
    "l2": ("lam", (0.01, 0.1, 1.0)),
    "ewc": ("lam", (10.0, 100.0, 1000.0)),
    "online_ewc": ("lam", (10.0, 100.0, 1000.0)),
    "si": ("c", (0.1, 1.0, 10.0)),
    "mas": ("lam", (0.1, 1.0, 10.0)),
    "lwf": ("lam", (0.5, 1.0, 2.0)),
}
SCENARIOS = {"class": "class_incremental", "task": "task_incremental",
             "permuted": "permuted"}


def get_config(arg="class"):
  tokens = [a for a in (arg or "").split(",") if a]
  quick = "runlocal" in tokens
  scenario = ([a for a in tokens if a != "runlocal"] or ["class"])[0]
  if scenario not in SCENARIOS or len(tokens) > 1 + quick:
    raise ValueError(f"config arg: one of {sorted(SCENARIOS)}, optionally "
                     f"with ',runlocal', got {arg!r}")
  c = base()
  c.name = f"regularisers_{scenario}" + ("_runlocal" if quick else "")
  c.data.name = "fashion_mnist"
  c.scenario.kind = SCENARIOS[scenario]
  c.scenario.num_tasks = 5
  c.scenario.val_fraction = 0.1
  if scenario == "permuted":
    c.scenario.train_per_task = 10000
    c.scenario.identity_first = True
  c.model.name = "mlp"
  c.model.hidden = (400, 400)
  c.train.epochs = 5
  c.train.batch_size = 128
  c.train.lr = 0.01
  c.train.momentum = 0.9
  c.train.eval_every = 0
  c.select = "val_acc"
  entries = ["finetune"]
  for kind, (name, values) in GRID.items():
    for v in values[1:2] if quick else values:
      entry = f"{kind}__{name}{v:g}".replace(".", "p")
      c.method[entry] = method_entry(kind, **{name: v})
      entries.append(entry)
  c.methods = ",".join(entries)
  if quick:
    c.train.epochs = 1
    c.scenario.train_per_task = 2000
    c.scenario.test_per_task = 500
  return c
