"""Why does EWC, one anchor per task, fall behind online EWC, one anchor at
the latest parameters, on the short permuted domain-IL protocol of
``three_scenarios_fashion_mnist.py`` (500 iterations a task), when van de
Ven & Tolias find them level at 5,000?

The hypothesis: after 500 Adam steps at lr 1e-4 each task's anchor is far
from that task's optimum, and the sum of penalties pulls the parameters
back toward the early, under-trained anchors. If so, the gap closes when
each task trains 10x longer. This experiment measures both lengths on the
same stream: permuted Fashion-MNIST domain-IL, 5 tasks, MLP 784-400-400
(narrower than the protocol's 2x1000 so that 5,000 iterations a task fit
2 CPU cores), Adam lr 1e-4, batch 128; fine-tuning, EWC and online EWC
(gamma = 1) over the same lambda grid, chosen on validation, one seed.

The argument is ``short`` (500 iterations a task, default) or ``long``
(5,000), optionally with ``,predicted``: EWC's and online EWC's Fisher at
the labels the model predicts (van de Ven & Tolias's code) rather than the
data's (the empirical Fisher, our default), in a run named ``..._predicted``:

    cljax run --config experiments/ewc_anchors_fashion_mnist.py:short \
        --config.workdir=experiments/results/ewc_anchors_short
    cljax run --config experiments/ewc_anchors_fashion_mnist.py:long \
        --config.workdir=experiments/results/ewc_anchors_long
    cljax run --config experiments/ewc_anchors_fashion_mnist.py:short,predicted \
        --config.workdir=experiments/results/ewc_anchors_short_predicted
    cljax run --config experiments/ewc_anchors_fashion_mnist.py:runlocal
"""

from cljax.default_config import get_config as base
from cljax.default_config import method_entry

LAMBDAS = (0.1, 1.0, 10.0, 100.0, 1e3)
STEPS = {"short": 500, "long": 5000}


def get_config(arg="short"):
  tokens = [a for a in (arg or "").split(",") if a]
  quick = "runlocal" in tokens
  predicted = "predicted" in tokens
  lengths = [t for t in tokens if t not in ("runlocal", "predicted")
             ] or ["short"]
  if len(lengths) > 1 or lengths[0] not in STEPS:
    raise ValueError(f"config arg: one of {sorted(STEPS)}, optionally with "
                     f"',predicted' and ',runlocal', got {arg!r}")
  c = base()
  c.name = (f"ewc_anchors_{lengths[0]}" + ("_predicted" if predicted else "")
            + ("_runlocal" if quick else ""))
  c.data.name = "fashion_mnist"
  c.scenario.kind = "permuted"
  c.scenario.num_tasks = 5
  c.scenario.val_fraction = 0.1
  c.model.name = "mlp"
  c.model.hidden = (400, 400)
  c.train.optimizer = "adam"
  c.train.lr = 1e-4
  c.train.batch_size = 128
  c.train.steps_per_task = STEPS[lengths[0]]
  c.train.eval_every = 0
  c.select = "val_acc"
  entries = ["finetune"]
  for kind in ("ewc", "online_ewc"):
    for lam in LAMBDAS:
      entry = f"{kind}__lam{lam:g}".replace(".", "p").replace("+", "")
      c.method[entry] = method_entry(
          kind, lam=lam, **({"estimator": "predicted"} if predicted else {}))
      entries.append(entry)
  if quick:
    c.train.steps_per_task = 20
    c.scenario.num_tasks = 3
    c.scenario.train_per_task = 1000
    c.scenario.test_per_task = 300
  c.methods = ",".join(entries)
  return c
