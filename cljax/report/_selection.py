"""Hyperparameter selection on validation data, never on test data.

Run entries named ``family__variant`` (e.g. ``ewc__lam100``) are candidates
of one family; each family keeps the candidate with the best validation
criterion, and only that candidate's test numbers are reported.
"""

from __future__ import annotations

import numpy as np

from cljax import metrics

CRITERIA = ("val_acc", "val_score")


def family(entry: str) -> str:
  return entry.split("__")[0]


def validation_value(run: dict, criterion: str) -> float:
  """``"val_acc"``: the final average validation accuracy over all tasks;
  ``"val_score"``: the seeds' two-task Score (``metrics.score``) on the
  validation curves recorded while training the last task."""
  if criterion == "val_acc":
    rows = run["val_accuracy_matrix"]
    if not rows:
      raise ValueError("val_acc needs validation splits (val_fraction > 0)")
    return float(np.mean(rows[-1]))
  if criterion == "val_score":
    last = run["curves"][-1]["task"] if run["curves"] else None
    points = [c["acc"] for c in run["curves"] if c["task"] == last]
    if not points or len(points[0]) != 2:
      raise ValueError("val_score needs a two-task run with eval_every > 0")
    a, b = np.asarray(points).T
    return metrics.score(a, b)["score"]
  raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")


def select(runs: dict, criterion: str) -> dict:
  """``{family: {"entry", "value", "candidates": {entry: value}}}``."""
  out = {}
  for entry, run in runs.items():
    fam = out.setdefault(family(entry), {"candidates": {}})
    fam["candidates"][entry] = validation_value(run, criterion)
  for fam in out.values():
    best = max(fam["candidates"], key=fam["candidates"].get)
    fam.update(entry=best, value=fam["candidates"][best])
  return out


def selection_table(runs: dict, selection: dict, criterion: str) -> str:
  """Markdown: per family, the chosen entry, its validation value and its
  test metrics (and, for two-task runs, the Score parts on validation)."""
  two_task = criterion == "val_score"
  head = ["family", "chosen", criterion, "test ACC", "test BWT"]
  if two_task:
    head = ["technique", "chosen", "Score", "Score_A", "Score_B",
            "test A", "test B"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for fam, sel in selection.items():
    run = runs[sel["entry"]]
    m = run["metrics"]
    if two_task:
      last = run["curves"][-1]["task"]
      a, b = np.asarray([c["acc"] for c in run["curves"]
                         if c["task"] == last]).T
      s = metrics.score(a, b)
      final = run["accuracy_matrix"][-1]
      cells = [fam, sel["entry"], f"{100 * s['score']:.1f}",
               f"{100 * s['score_a']:.1f}", f"{100 * s['score_b']:.1f}",
               f"{100 * final[0]:.1f}", f"{100 * final[1]:.1f}"]
    else:
      cells = [fam, sel["entry"], f"{100 * sel['value']:.1f}",
               f"{100 * m['average_accuracy']:.1f}",
               f"{100 * m['backward_transfer']:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)
