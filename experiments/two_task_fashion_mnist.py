"""The seeds' two-task experiment (Striveworks' sequential learning).

Task A = Fashion-MNIST classes 0-4, then task B = classes 5-9, both ways:
by default task B gets a new head (two heads, task identity given:
task-incremental); ``:shared`` extends the one head to task B's outputs and
evaluates without task identity (the seed's own setup: class-incremental),
where fine-tuning drops task A to 0%. Techniques, each at the standard lr
(0.01) and at a 10x lower lr (0.001): fine-tuning, EWC and Hinton KD from
the task-A model. Task A is always trained at the standard lr for 5 epochs
(``train.first_task_lr``, ``train.first_task_epochs``); the technique's lr
applies to task B, which the low-lr entries train for 20 epochs (at 5 they
were still improving at the last evaluation). EWC's lambda and KD's weight
are chosen per technique and lr on the *validation* Score (the seed's
metric: the best mean of task-A and task-B validation accuracy over the
evaluations made while training task B; see ``cljax.metrics.score``). Test
accuracies are reported for the chosen runs.

    cljax run --config experiments/two_task_fashion_mnist.py \
        --config.workdir=experiments/results/two_task_fashion_mnist \
        --config.sweep.vmap=True
    cljax run --config experiments/two_task_fashion_mnist.py:shared \
        --config.workdir=experiments/results/two_task_fashion_mnist_shared \
        --config.sweep.vmap=True
    cljax run --config experiments/two_task_fashion_mnist.py:runlocal
"""

from cljax.default_config import get_config as base
from cljax.default_config import method_entry

LRS = {"": (0.01, 5), "_lowlr": (0.001, 20)}  # task B's lr and epochs
EWC_LAMBDAS = (10.0, 100.0, 1000.0, 10000.0)
KD_LAMBDAS = (0.5, 1.0, 2.0, 4.0)
# Past the grids' edges where a winner sat on one (KD's highest weight in
# both setups; low-lr EWC's highest lambda with the shared head; then, on 3
# seeds, low-lr KD's 16 with the shared head).
EXTENSIONS = {"kd": (8.0, 16.0), "kd_lowlr": (8.0, 16.0)}
SHARED_EXTENSIONS = {**EXTENSIONS, "ewc_lowlr": (1e5,),
                     "kd_lowlr": (8.0, 16.0, 32.0, 64.0)}


def get_config(arg=None):
  tokens = [a for a in (arg or "").split(",") if a]
  if set(tokens) - {"shared", "runlocal"}:
    raise ValueError(f"config arg: shared and/or runlocal, got {arg!r}")
  c = base()
  c.name = "two_task_fashion_mnist" + "".join(f"_{t}" for t in tokens)
  c.data.name = "fashion_mnist"
  c.scenario.kind = "two_task"
  c.scenario.two_task_head = "shared" if "shared" in tokens else "new"
  c.scenario.classes_a = (0, 1, 2, 3, 4)
  c.scenario.classes_b = (5, 6, 7, 8, 9)
  c.scenario.val_fraction = 0.1
  c.model.name = "mlp"
  c.model.hidden = (400, 400)
  c.train.epochs = 5
  c.train.batch_size = 128
  c.train.momentum = 0.9
  c.train.first_task_lr = 0.01
  c.train.first_task_epochs = 5
  c.train.eval_every = 50
  c.select = "val_score"
  c.seeds = 3  # the committed tables' (``runlocal``: one)
  entries = []
  extensions = SHARED_EXTENSIONS if "shared" in tokens else EXTENSIONS
  for suffix, (lr, epochs) in LRS.items():
    fam = "finetune" + suffix
    c.method[fam] = method_entry("finetune", lr=lr, epochs=epochs)
    entries.append(fam)
    for kind, lams in (("ewc", EWC_LAMBDAS), ("kd", KD_LAMBDAS)):
      for lam in lams + extensions.get(kind + suffix, ()):
        entry = f"{kind}{suffix}__lam{lam:g}".replace(".", "p")
        c.method[entry] = method_entry(kind, lr=lr, lam=lam, epochs=epochs)
        entries.append(entry)
  c.methods = ",".join(entries)
  if "runlocal" in tokens:  # a quick check: 1 epoch, 2,000 images a task
    c.seeds = 1
    c.train.first_task_epochs = 1
    for e in entries:
      c.method[e].epochs = 1
    c.train.eval_every = 5
    c.scenario.train_per_task = 2000
    c.scenario.test_per_task = 500
    c.methods = ",".join(e for e in entries if "lam" not in e or
                         e.endswith(("lam100", "lam1")))
  return c
