"""Rehearsal in class-incremental learning: split Fashion-MNIST, 5 tasks x 2
classes, one head, no task identity at test time.

MLP 784-400-400, SGD with momentum 0.9, lr 0.01, batch 128, 5 epochs per
task (the recipe of ``split_fashion_mnist.py``), 10% of each task's
training data held out for validation. The argument sets the memory:

* ``k2000`` (default): K = 2,000 exemplars in all, on 3 seeds: fine-tuning,
  joint training, ER, DER, DER++, iCaRL (its nearest-mean classifier and the
  network's argmax both reported), End-to-End IL, LwF (over all old classes
  jointly: iCaRL's LwF.MC), A-GEM and GEM (K / 5 = 400 memories per task);
* ``k200``, ``k500``: ER and iCaRL with 200 and 500 exemplars, one seed;
* ``cnn``: the small CNN with random crops and flips (the image recipe) for
  ER, iCaRL and End-to-End IL at K = 2,000, one seed;
* ``bias``: the bias-correction methods at K = 2,000 on 3 seeds, beside ER
  run again in the same run: UCIR (cosine head; CNN and nearest-mean
  accuracy), BiC (corrected and uncorrected), IL2M (rectified and plain)
  and WA. They replay in the proportion of the union of new data and
  exemplars (``replay="union"``, as their papers train); ER replays an
  equal batch, and ``er__union`` as they do;
* ``later``: the families added later, on 3 seeds beside ER: RWalk
  (regularisation, its default lam), MIR and GSS (rehearsal, K = 2,000,
  their papers' defaults);
* ``reservoir``: ER with DER's memory (reservoir sampling, online) beside
  ER's default (herding at each task's end), on 3 seeds: DER and DER++
  against ER with the same memory policy;
* ``tune``: DER's alpha and DER++'s alpha and beta over grids around
  their papers' values, beside ER, one seed, chosen on the final mean
  *validation* accuracy (``selection.md`` flags edge winners); the stream's
  recipe (lr, epochs) is shared, not tuned;
* ``tuned``: ER and the ``tune`` run's winners on 3 seeds (reads its
  ``results.json`` from ``experiments/results/class_il_tune``);
* ``tune_lr``: the learning rate (0.001-0.3) of ER, iCaRL, and DER and
  DER++ at the strengths ``tune`` chose, one seed, on validation (iCaRL by
  its nearest mean, the paper's classifier: its paper trains at lr 2.0, a
  sigmoid loss at the stream's 0.01 may be far from its best);
* ``tuned_lr``: the ``tune_lr`` winners on 3 seeds
  (``experiments/results/class_il_tune_lr``).

Methods use their papers' defaults (DER alpha 0.3; DER++ alpha 0.1, beta
0.5; E2EIL T = 2, 30 balanced passes at a tenth of the lr); every
rehearsal method replays an equally sized batch of exemplars each step.

    cljax run --config experiments/class_il_fashion_mnist.py \
        --config.workdir=experiments/results/class_il_k2000
    cljax run --config experiments/class_il_fashion_mnist.py:tune \
        --config.workdir=experiments/results/class_il_tune
    cljax run --config experiments/class_il_fashion_mnist.py:tuned \
        --config.workdir=experiments/results/class_il_tuned
    cljax run --config experiments/class_il_fashion_mnist.py:tune_lr \
        --config.workdir=experiments/results/class_il_tune_lr
    cljax run --config experiments/class_il_fashion_mnist.py:tuned_lr \
        --config.workdir=experiments/results/class_il_tuned_lr
    cljax run --config experiments/class_il_fashion_mnist.py:runlocal
"""

import itertools
import json
import os

from cljax.default_config import get_config as base
from cljax.default_config import method_entry

REHEARSAL = ("er", "der", "derpp", "icarl", "e2eil")
BIAS = ("ucir", "bic", "il2m", "wa")
LATER = ("mir", "gss")  # rehearsal methods added later (the ``later`` run)
VARIANTS = ("k2000", "k200", "k500", "cnn", "bias", "later", "reservoir",
            "tune", "tuned", "tune_lr", "tuned_lr")
LRS = (0.001, 0.003, 0.01, 0.03, 0.05, 0.1, 0.2, 0.3)
# The grids of each tune variant: ``tune`` around the papers' strengths
# (DER alpha 0.3; DER++ alpha 0.1, beta 0.5; DER++'s beta was extended to
# 2 after 1 won at the grid's edge), ER beside them at the stream's lr;
# ``tune_lr`` the learning rate of ER, iCaRL and, at their ``tune``
# winners' strengths, DER and DER++.
TUNE_GRIDS = {
    "tune": {
        "der": {"alpha": (0.03, 0.1, 0.3, 1.0, 3.0)},
        "derpp": {"alpha": (0.03, 0.1, 0.3, 1.0),
                  "beta": (0.25, 0.5, 1.0, 2.0)},
    },
    "tune_lr": {
        "er": {"lr": LRS},
        "der": {"alpha": (1.0,), "lr": LRS},
        "derpp": {"alpha": (0.3,), "beta": (1.0,), "lr": LRS},
        "icarl": {"lr": LRS},
    },
}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _entry(kind: str, values: dict) -> str:
  """``derpp__alpha0p3_beta0p5``: the kind and its grid point."""
  point = "_".join(f"{k}{v:g}" for k, v in values.items())
  return f"{kind}__{point}".replace(".", "p")


def _tune_entries(c, variant: str) -> list[str]:
  entries = [] if "er" in TUNE_GRIDS[variant] else ["er"]
  for kind, grid in TUNE_GRIDS[variant].items():
    for point in itertools.product(*grid.values()):
      values = dict(zip(grid, point))
      entry = _entry(kind, values)
      c.method[entry] = method_entry(kind, **values)
      entries.append(entry)
  return entries


def _tuned_entries(c, tune: str) -> list[str]:
  """The winners of the ``tune`` variant's run, one per family, with their
  settings (ER at the stream's lr where that run did not tune it)."""
  path = os.path.join(RESULTS, f"class_il_{tune}", "results.json")
  if not os.path.exists(path):
    raise ValueError(f"no {tune} run at {path}; run that variant first")
  with open(path) as f:
    results = json.load(f)
  grids = TUNE_GRIDS[tune]
  entries = [sel["entry"] for fam, sel in results["selection"].items()
             if fam in grids]
  for entry in entries:
    kind = entry.split("__")[0]
    values = {k: results["config"]["method"][entry][k] for k in grids[kind]}
    c.method[entry] = method_entry(kind, **values)
  return entries if "er" in grids else ["er", *entries]


def get_config(arg="k2000"):
  tokens = [a for a in (arg or "").split(",") if a]
  quick = "runlocal" in tokens
  variants = [t for t in tokens if t != "runlocal"] or ["k2000"]
  variant = variants[0]
  if len(variants) > 1 or variant not in VARIANTS:
    raise ValueError(f"config arg: one of {VARIANTS}, optionally "
                     f"with ',runlocal', got {arg!r}")
  k = {"k200": 200, "k500": 500}.get(variant, 2000)
  c = base()
  c.name = f"class_il_fashion_mnist_{variant}" + ("_runlocal" if quick
                                                   else "")
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
  c.train.eval_every = 0
  if variant == "k2000":
    c.seeds = 3
    entries = ["finetune", "joint", *REHEARSAL, "lwf", "agem", "gem"]
  elif variant == "cnn":
    c.model.name = "cnn"
    c.train.augment = "crop_flip"
    c.method.icarl.nme_flip = True  # class means over the flips too
    entries = ["er", "icarl", "e2eil"]
  elif variant == "later":
    c.seeds = 3
    entries = ["er", "rwalk", *LATER]
  elif variant == "bias":
    c.seeds = 3
    # ER replaying as they do: the baseline their corrections improve on.
    c.method.er__union = method_entry("er", replay="union")
    entries = ["er", "er__union", *BIAS]
  elif variant == "reservoir":
    c.seeds = 3
    c.method.er__reservoir = method_entry("er", selection="reservoir")
    entries = ["er", "er__reservoir"]
  elif variant in TUNE_GRIDS:
    c.select = "val_acc"
    entries = _tune_entries(c, variant)
  elif variant.replace("tuned", "tune") in TUNE_GRIDS:  # tuned, tuned_lr
    c.seeds = 3
    entries = _tuned_entries(c, variant.replace("tuned", "tune"))
  else:
    entries = ["er", "icarl"]
  rehearsing = [name for name in {*REHEARSAL, *BIAS, *LATER, *entries}
                if "memory_size" in c.method[name]
                and c.method[name].kind not in ("agem", "gem")]
  for name in rehearsing:
    c.method[name].memory_size = k
  c.method.gem.memory_size = c.method.agem.memory_size = k // 5
  if quick:
    c.seeds = 1
    c.train.epochs = 1
    c.scenario.train_per_task = 600
    c.scenario.test_per_task = 200
    for name in rehearsing:
      c.method[name].memory_size = 100
    c.method.e2eil.balanced_passes = 5
    c.method.gem.memory_size = c.method.agem.memory_size = 20
    c.method.agem.ref_size = 20
  c.methods = ",".join(entries)
  return c
