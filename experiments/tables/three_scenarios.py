"""The three-scenarios table: our final runs (mean ± std over seeds) beside
van de Ven & Tolias (2019), Table 4-5 (split and permuted MNIST; ours are
on Fashion-MNIST, so absolute numbers are lower: the pattern is what must
hold). Writes ``experiments/results/three_scenarios.md``.

    python experiments/tables/three_scenarios.py
"""

import json
import os
import sys

from _markdown import RESULTS, write

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
import three_scenarios_fashion_mnist as protocol_config  # noqa: E402
SCENARIOS = ("task", "domain", "class")
# van de Ven & Tolias 2019 (split MNIST; permuted MNIST), final average
# accuracy in percent, task / domain / class.
PAPER = {
    "split": {"finetune": (87.19, 59.21, 19.90), "ewc": (98.64, 63.95, 20.01),
              "online_ewc": (99.12, 64.32, 19.96), "si": (99.09, 65.36, 19.99),
              "lwf": (99.57, 71.50, 23.85), "joint": (99.66, 98.42, 97.94)},
    "permuted": {"finetune": (81.79, 78.51, 17.26),
                 "ewc": (94.74, 94.31, 25.04),
                 "online_ewc": (95.96, 94.42, 33.88),
                 "si": (94.75, 95.33, 29.31), "lwf": (69.84, 72.64, 22.64),
                 "joint": None},
}
# DGR and DGR+distill on split MNIST (the paper's Table 4).
PAPER["split"].update(dgr=(99.50, 95.72, 90.79),
                      dgr_distill=(99.61, 96.83, 91.79))
NAMES = {"finetune": "none (fine-tune)", "joint": "joint", "ewc": "EWC",
         "online_ewc": "online EWC", "si": "SI", "lwf": "LwF",
         "dgr": "DGR", "dgr_distill": "DGR+distill",
         "packnet": "PackNet (task-IL only)", "hat": "HAT (task-IL only)",
         "pathnet": "PathNet (task-IL only)", "cpg": "CPG (task-IL only)",
         "den": "DEN (task-IL only)",
         "cpg_growing": "CPG growing from 25% (task-IL only)"}
TASK_ONLY = ("packnet", "hat", "pathnet", "cpg", "den", "cpg_growing")
# Final runs of families run in workdirs of their own
# (``<name>_<suffix>``) beside the main final run; a later suffix's entry
# replaces an earlier one's (``cpg``, ``cpg_growing``: CPG rerun with the
# ratio choice and the mask's retraining, over the ``isolation`` run's).
SUFFIXES = ("dgr", "packnet", "hat", "isolation", "ext", "cpg",
            "cpg_growing")
# Validation accuracies this close are a tie (the same count of correct
# predictions, summed in another order).
TIE = 1e-9


def _finals(name: str) -> dict:
  """``{entry: record}`` of the final runs of ``name``: the entries that
  finished all their seeds (a run in progress writes the seeds done so
  far)."""
  runs = {}
  for n in (name, *(f"{name}_{suffix}" for suffix in SUFFIXES)):
    path = os.path.join(RESULTS, n, "results.json")
    if os.path.exists(path):
      with open(path) as f:
        result = json.load(f)
      seeds = result["config"]["seeds"]
      runs.update({e: r for e, r in result["runs"].items()
                   if len(r.get("seeds", [0])) == seeds})
  return runs


def _ours(protocol, scenario):
  """``{family: (cell, entry)}``: each tuned family's winner over all its
  tune runs (``protocol.selection``: validation accuracy), from the final
  runs (3 seeds) if one of them ran it or an entry tied with it, else from
  the tune run (one seed, marked with a dagger); families never tuned from
  the final runs. ``None`` if there is nothing yet."""
  name = f"{protocol}_{scenario}"
  final = _finals(f"three_scenarios_{name}")
  chosen = protocol_config.selection(name)
  tuned = protocol_config.tune_runs(name)
  runs = {}
  for fam, sel in chosen.items():
    best = sel["value"]
    tied = [e for e, v in sel["candidates"].items() if v >= best - TIE]
    done = [e for e in tied if e in final]
    runs[fam] = ((done[0], final[done[0]]) if done else
                 (sel["entry"], {**tuned[sel["entry"]], "tune": True}))
  for entry, run in final.items():
    fam = entry.split("__")[0]
    if fam not in chosen:
      if fam in runs:
        raise ValueError(f"{name}: two untuned final entries of {fam}: "
                         f"{runs[fam][0]}, {entry}")
      runs[fam] = (entry, run)
  if not runs:
    return None
  out = {}
  for fam, (entry, run) in runs.items():
    if "diverged" in run:
      out[fam] = ("diverged", entry)
      continue
    m, sd = run["metrics"], run.get("metrics_std", {})
    acc = 100 * m["average_accuracy"]
    cell = f"{acc:.1f} ± {100 * sd['average_accuracy']:.1f}" if sd else (
        f"{acc:.1f}" + (" †" if run.get("tune") else ""))
    out[fam] = (cell, entry)
  return out


def table(protocol: str) -> str:
  ours = {s: _ours(protocol, s) for s in SCENARIOS}
  head = ("| method | " + " | ".join(f"{s}-IL ours | {s}-IL paper"
                                     for s in SCENARIOS) + " |")
  lines = [head, "|---" * 7 + "|"]
  for fam, name in NAMES.items():
    cells = []
    for k, s in enumerate(SCENARIOS):
      o = ours[s]
      cells.append(o[fam][0] if o and fam in o else
                   "-" if fam in TASK_ONLY and s != "task" else "(not run)")
      paper = PAPER[protocol].get(fam)
      cells.append(f"{paper[k]:.2f}" if paper else "-")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  chosen = {s: sorted(e for _, e in ours[s].values() if "__" in e)
            for s in SCENARIOS if ours[s]}
  notes = "; ".join(f"{s}-IL: {', '.join(c)}" for s, c in chosen.items())
  return "\n".join(lines) + (f"\n\nChosen on validation: {notes}." if notes
                             else "")


def lines() -> list[str]:
  """The markdown file's lines, from the committed results."""
  text = ["# Three scenarios (van de Ven & Tolias 2019) on Fashion-MNIST",
          "",
          "Final average test accuracy (%), mean ± std over 3 seeds of the "
          "entries chosen on one seed's validation accuracy over all the "
          "scenario's tune runs (`selection()` in "
          "`experiments/three_scenarios_fashion_mnist.py`; an exact tie "
          "resolves to a tied entry that has a final run); † marks an entry "
          "whose 3-seed final run is still to do: the tune run's chosen "
          "entry, one seed. The paper's numbers are on MNIST.", ""]
  for protocol, what in (("split", "Split (5 tasks x 2 classes, MLP 2x400, "
                          "Adam 1e-3, 2,000 iterations a task)"),
                         ("permuted", "Permuted (10 tasks, MLP 2x1000, Adam "
                          "1e-4, 500 iterations a task: a tenth of the "
                          "paper's 5,000, which do not fit 2 CPU cores)")):
    text += [f"## {what}", "", table(protocol), ""]
  return text


def main():
  write("three_scenarios.md", lines())


if __name__ == "__main__":
  main()
