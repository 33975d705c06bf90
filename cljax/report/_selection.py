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
  """``"val_acc"``: the final average validation accuracy over all tasks,
  by the method's own classifier where its paper has one (``classifier``:
  iCaRL's nearest mean), else by the network's argmax; ``"val_score"``:
  the seeds' two-task Score (``metrics.score``) on the validation curves
  recorded while training the last task. For a run under several seeds
  (``per_seed``), the mean of the seeds' values."""
  if "per_seed" in run:
    return float(np.mean([validation_value(r, criterion)
                          for r in run["per_seed"]]))
  if criterion == "val_acc":
    rows = run[_own("val_accuracy_matrix", run)]
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


def _own(key: str, run: dict) -> str:
  """``key`` of the run's own classifier (``metrics_nme`` for iCaRL)."""
  return f"{key}_{run['classifier']}" if "classifier" in run else key


def _setting(record: dict, key: str):
  return {**record.get("hparams", {}), "lr": record.get("lr")}.get(key)


def _comparable(v):
  """A setting as compared between entries (1 and 1.0 are one value)."""
  return float(v) if isinstance(v, (int, float)) else repr(v)


def _grid_keys(records: dict) -> list[str]:
  """The numeric settings (hyperparameters or ``lr``) in which a family's
  entries differ; ``[]`` if none, or if one that differs is not numeric."""
  keys = set().union(*({*r.get("hparams", {}), "lr"} for r in
                       records.values()))
  varying = sorted(k for k in keys if len({_comparable(_setting(r, k))
                                           for r in records.values()}) > 1)
  if not all(isinstance(_setting(r, k), (int, float))
             for k in varying for r in records.values()):
    return []
  return varying


# A family of several entries whose winner no setting varies alone through
# (not a grid of numeric settings, or a design with no such line).
NOT_JUDGED = "not judged: no setting varies alone through the winner"


def _edge(records: dict, best: str, diverged: dict) -> str | None:
  """Whether ``best`` sits at an edge of its family's grid, in words, and
  whether the next value beyond that edge diverged; ``None`` if interior,
  ``NOT_JUDGED`` if that cannot be told. In a grid over several settings
  (a product grid), each setting is judged along the line through ``best``
  in which only that setting varies ("of its line" where that line lacks
  values the setting takes elsewhere in the family)."""
  if len(records) < 2:
    return None
  grid = {**records, **diverged}
  keys = _grid_keys(grid)
  parts, lines = [], 0
  for key in keys:
    line = lambda entries: [e for e in entries if all(
        _setting(grid[e], k) == _setting(grid[best], k)
        for k in keys if k != key)]
    at = lambda e: _setting(grid[e], key)
    ran = sorted(line(records), key=at)
    if len(ran) < 2:
      continue
    lines += 1
    if best not in (ran[0], ran[-1]):
      continue
    side = "lowest" if best == ran[0] else "highest"
    whole = {at(e) for e in ran} == {at(e) for e in records}
    part = (f"the {side} {key} ({at(best):g}) of "
            + ("the grid" if whole else "its line"))
    beyond = [e for e in line(diverged) if (
        at(e) < at(best) if side == "lowest" else at(e) > at(best))]
    if beyond:
      nxt = min(beyond, key=lambda e: abs(at(e) - at(best)))
      part += f" (the next {key}, {at(nxt):g}, diverged)"
    parts.append(part)
  if not lines:
    return NOT_JUDGED
  return "edge: " + "; ".join(parts) if parts else None


def select(runs: dict, criterion: str, diverged: dict | None = None) -> dict:
  """``{family: {"entry", "value", "candidates": {entry: value}, "edge"}}``.

  ``edge`` is ``None`` when the chosen entry is interior to its family's
  grid (along every numeric setting that varies alone through it), else
  says which edges and whether the next value beyond one (among
  ``diverged``, entry -> record) diverged: a selection at an edge is not a
  tuned result (``NOT_JUDGED`` where no setting varies alone through it).
  """
  diverged = diverged or {}
  out = {}
  for entry, run in runs.items():
    fam = out.setdefault(family(entry), {"candidates": {}})
    fam["candidates"][entry] = validation_value(run, criterion)
  for name, fam in out.items():
    best = max(fam["candidates"], key=fam["candidates"].get)
    fam.update(entry=best, value=fam["candidates"][best], edge=_edge(
        {e: runs[e] for e in fam["candidates"]}, best,
        {e: r for e, r in diverged.items() if family(e) == name}))
  return out


def _mean_score(run: dict) -> dict:
  """The two-task Score and its parts on the last task's validation curve,
  averaged over the seeds of a run under several."""
  if "per_seed" in run:
    parts = [_mean_score(r) for r in run["per_seed"]]
    return {k: float(np.mean([p[k] for p in parts]))
            for k in ("score", "score_a", "score_b")}
  last = run["curves"][-1]["task"]
  a, b = np.asarray([c["acc"] for c in run["curves"]
                     if c["task"] == last]).T
  return metrics.score(a, b)


def _pm(run: dict, key: str) -> str:
  """A test metric in percent (by the run's own classifier), ``mean ± std``
  for a run under seeds."""
  own = _own("metrics", run)
  m, std = 100 * run[own][key], run.get(f"{own}_std", {})
  if key in std:
    return f"{m:.1f} ± {100 * std[key]:.1f}"
  return f"{m:.1f}"


def selection_table(runs: dict, selection: dict, criterion: str) -> str:
  """Markdown: per family, the chosen entry, its validation value and its
  test metrics (and, for two-task runs, the Score parts on validation)."""
  two_task = criterion == "val_score"
  head = ["family", "chosen", criterion, "test ACC", "test BWT", "grid"]
  if two_task:
    head = ["technique", "chosen", "Score", "Score_A", "Score_B",
            "test A", "test B", "grid"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for fam, sel in selection.items():
    run = runs[sel["entry"]]
    if two_task:
      s = _mean_score(run)
      final = run["accuracy_matrix"][-1]
      cells = [fam, sel["entry"], f"{100 * s['score']:.1f}",
               f"{100 * s['score_a']:.1f}", f"{100 * s['score_b']:.1f}",
               f"{100 * final[0]:.1f}", f"{100 * final[1]:.1f}"]
    else:
      # By the method's own classifier where it has one (its validation
      # value and test metrics both).
      chosen = sel["entry"] + (f" ({run['classifier']})" if "classifier"
                               in run else "")
      cells = [fam, chosen, f"{100 * sel['value']:.1f}",
               _pm(run, "average_accuracy"), _pm(run, "backward_transfer")]
    cells.append(sel.get("edge") or ("interior" if len(sel["candidates"]) > 1
                                     else "-"))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)
