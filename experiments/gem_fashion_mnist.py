"""The GEM paper's protocol (Lopez-Paz & Ranzato 2017, sec. 5) on
Fashion-MNIST (MNIST cannot be downloaded here).

``:permuted`` or ``:rotated`` streams of 20 tasks, 1,000 training examples
per task (plus 111 held out for validation), 2,000 test examples per task,
MLP 784-100-100-10, one pass (1 epoch), batch 10, plain SGD lr 0.1; GEM and
A-GEM with 256 memories per task, GEM's memory strength (margin) 0.5, as in
facebookresearch/GradientEpisodicMemory's run script. Methods: single
(fine-tuning), independent (one network per task with 1/20 of the hidden
units, 784-5-5-10, as in the paper), EWC and RWalk (strengths chosen on
validation), A-GEM, GEM, and the online rehearsal methods MIR and GSS with
GEM's total memory. A number sets the epochs (``:rotated,5``); ``runlocal`` makes a
quick check (5 tasks of 500 examples, one EWC strength:
``:permuted,runlocal``).

    cljax run --config experiments/gem_fashion_mnist.py:permuted \
        --config.seeds=3 --config.workdir=experiments/results/gem_permuted
    (and :rotated into experiments/results/gem_rotated: the committed
    results, 3 seeds, mean +- std)
    cljax run --config experiments/gem_fashion_mnist.py:runlocal
"""

from cljax.default_config import get_config as base
from cljax.default_config import method_entry


def get_config(arg="permuted"):
  tokens = [a for a in (arg or "").split(",") if a]
  quick = "runlocal" in tokens
  epochs = [a for a in tokens if a.isdigit()]
  kinds = [a for a in tokens if a in ("permuted", "rotated")]
  if len(tokens) != quick + len(epochs) + len(kinds) or len(kinds) > 1 or (
      len(epochs) > 1):
    raise ValueError("config arg: permuted or rotated, optionally with an "
                     f"epoch count and ',runlocal', got {arg!r}")
  kind, epochs = (kinds or ["permuted"])[0], (epochs or [""])[0]
  c = base()
  c.name = (f"gem_{kind}" + (f"_{epochs}ep" if epochs else "") +
            ("_runlocal" if quick else ""))
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
  c.method.single = method_entry("finetune")
  c.method.independent = method_entry("independent", hidden=(5, 5))
  c.method.gem = method_entry("gem", memory_size=256, margin=0.5)
  c.method.agem = method_entry("agem", memory_size=256, ref_size=256)
  # The online rehearsal methods with GEM's whole budget (20 x 256) as one
  # reservoir-like memory; MIR with the paper's 50 candidates, 10 replayed,
  # its virtual step at the training rate; GSS with the authors' 10 memory
  # gradients of 10 examples.
  c.method.mir = method_entry("mir", memory_size=5120, subsample=50,
                              virtual_lr=0.1, replay_size=10)
  c.method.gss = method_entry("gss", memory_size=5120, mem_strength=10,
                              mem_batch_size=10, replay_size=10)
  entries = ["single", "independent", "agem", "gem", "mir", "gss"]
  # RWalk's strength on validation (F^ + s^ <= 2, so at lr 0.1 the
  # penalty alone is stable below lam = 5); Delta t = 10 (MNIST).
  for lam in (1.0,) if quick else (0.1, 0.3, 1.0, 3.0, 6.0, 10.0):
    entry = f"rwalk__lam{lam:g}".replace(".", "p")
    c.method[entry] = method_entry("rwalk", lam=lam, update_every=10)
    entries.insert(1, entry)
  # At lr 0.1 and batch 10, EWC diverges from about lam = 2 on (then
  # recorded as diverged): the grid reaches below.
  for lam in (1.0,) if quick else (0.01, 0.1, 0.3, 1.0, 2.0, 4.0, 10.0,
                                   100.0):
    entry = f"ewc__lam{lam:g}".replace(".", "p")
    c.method[entry] = method_entry("ewc", lam=lam)
    entries.insert(1, entry)
  c.methods = ",".join(entries)
  if quick:
    c.scenario.num_tasks = 5
    c.scenario.train_per_task = 556
    c.scenario.test_per_task = 500
    c.method.gem.memory_size = c.method.agem.memory_size = 100
    c.method.agem.ref_size = 100
    c.method.mir.memory_size = c.method.gss.memory_size = 500
  return c
