"""The class-IL rehearsal table: split Fashion-MNIST, 5 tasks x 2 classes,
one head (``experiments/class_il_fashion_mnist.py``), final average test
accuracy and backward transfer (%), mean ± std over seeds where there are
several. Writes ``experiments/results/class_il.md``.

    python experiments/tables/class_il.py
"""

import json
import os

from _markdown import RESULTS, write
NAMES = {"finetune": "fine-tuning", "joint": "joint (upper bound)",
         "lwf": "LwF.MC (no memory)", "er": "ER", "der": "DER", "derpp":
         "DER++", "icarl": "iCaRL", "e2eil": "End-to-End IL", "agem": "A-GEM",
         "gem": "GEM", "ucir": "UCIR", "bic": "BiC", "il2m": "IL2M",
         "wa": "WA", "er__union": "ER, union replay", "rwalk": "RWalk",
         "mir": "MIR", "gss": "GSS", "der__alpha1": "DER (alpha 1)",
         "derpp__alpha0p3_beta1": "DER++ (alpha 0.3, beta 1)",
         "er__reservoir": "ER, reservoir memory (DER's)",
         "er__lr0p003": "ER (lr 0.003)", "der__alpha1_lr0p05":
         "DER (alpha 1, lr 0.05)", "derpp__alpha0p3_beta1_lr0p01":
         "DER++ (alpha 0.3, beta 1, lr 0.01)", "icarl__lr0p05":
         "iCaRL (lr 0.05)"}
# A method's own classifiers besides the network's argmax.
PREDICTORS = (("_nme", " (nearest mean)"), ("_bic", " (bias-corrected)"),
              ("_il2m", " (rectified)"))
# Rows named for what they measure where the bare name would mislead (the
# network's argmax of a method whose own classifier is another).
LABELS = {("icarl", ""): "iCaRL, the network's argmax",
          ("icarl", "_nme"): "iCaRL, nearest mean of exemplars",
          ("icarl__lr0p05", ""): "iCaRL (lr 0.05), the network's argmax",
          ("icarl__lr0p05", "_nme"): "iCaRL (lr 0.05), nearest mean of "
                                     "exemplars",
          ("ucir", ""): "UCIR, the network",
          ("bic", ""): "BiC, uncorrected",
          ("il2m", ""): "IL2M, plain (no rectification)"}
VARIANTS = (("k2000", "MLP 2x400, K = 2,000 exemplars (A-GEM, GEM: 400 per "
             "task), 3 seeds"),
            ("k500", "MLP 2x400, K = 500, 1 seed"),
            ("k200", "MLP 2x400, K = 200, 1 seed"),
            ("cnn", "CNN with random crops and flips, K = 2,000, 1 seed"),
            ("bias", "Bias correction: MLP 2x400, K = 2,000, 3 seeds (ER "
             "again in the same run; BiC and IL2M also without their "
             "correction, UCIR also by nearest mean)"),
            ("later", "Later families: MLP 2x400, K = 2,000, 3 seeds (ER "
             "again in the same run)"),
            ("tuned", "DER and DER++ tuned: MLP 2x400, K = 2,000, 3 seeds of "
             "the strengths chosen on validation (`:tune`, one seed: DER "
             "alpha over 0.03-3, DER++ alpha 0.03-1 x beta 0.25-2; ER again "
             "in the same run)"),
            ("tuned_lr", "Learning rates tuned: MLP 2x400, K = 2,000, 3 "
             "seeds of the rates chosen on validation (`:tune_lr`, one "
             "seed, lr 0.001-0.3; DER and DER++ at the `:tune` strengths; "
             "iCaRL chosen by its nearest mean; 0.1 and above diverged for "
             "ER, DER and DER++, 0.2 and above for iCaRL)"),
            ("reservoir", "ER with DER's memory: MLP 2x400, K = 2,000, 3 "
             "seeds (`:reservoir`: reservoir sampling online, as DER and "
             "DER++ fill theirs, beside ER's herding at each task's end)"))


def _cell(metrics, std, key):
  v = 100 * metrics[key]
  return f"{v:.1f} ± {100 * std[key]:.1f}" if std else f"{v:.1f}"


def rows(run: dict, entry: str) -> list[str]:
  """One table row per classifier of ``run`` (iCaRL: network and NME)."""
  out = []
  for suffix, label in (("", ""), *PREDICTORS):
    m = run.get(f"metrics{suffix}")
    if m is None:
      continue
    sd = run.get(f"metrics{suffix}_std", {})
    name = LABELS.get((entry, suffix),
                      NAMES.get(entry, entry) + label)
    out.append(f"| {name} | {_cell(m, sd, 'average_accuracy')} | "
               f"{_cell(m, sd, 'backward_transfer')} |")
  return out


def table(variant: str) -> str | None:
  path = os.path.join(RESULTS, f"class_il_{variant}", "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    runs = json.load(f)["runs"]
  lines = ["| method | ACC | BWT |", "|---|---|---|"]
  for entry, run in runs.items():
    if "diverged" in run:
      lines.append(f"| {NAMES.get(entry, entry)} | diverged | |")
    else:
      lines += rows(run, entry)
  return "\n".join(lines)


def lines() -> list[str]:
  """The markdown file's lines, from the committed results."""
  text = ["# Rehearsal in class-incremental learning, split Fashion-MNIST",
          "",
          "5 tasks x 2 classes, one head over the 10 classes, no task id at "
          "test time; SGD with momentum 0.9, lr 0.01, batch 128, 5 epochs a "
          "task; every method at its paper's defaults (no tuning on these "
          "numbers) except in the tables of DER and DER++ tuned, whose "
          "strengths were chosen on validation data, and of the learning "
          "rates tuned, likewise. ACC: final average "
          "test accuracy; BWT: backward transfer (%).", ""]
  for variant, what in VARIANTS:
    t = table(variant)
    text += [f"## {what}", "", t if t else "(not run)", ""]
  return text


def main():
  write("class_il.md", lines())


if __name__ == "__main__":
  main()
