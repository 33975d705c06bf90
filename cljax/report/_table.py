"""Plain-text tables of results."""

from __future__ import annotations

import numpy as np


def accuracy_table(r, title: str = "") -> str:
  """The accuracy matrix as a table: row = after training task i, column =
  evaluated on task j, in percent; ``avg`` is the mean over the tasks seen
  so far (``j <= i``)."""
  r = np.asarray(r) * 100
  t = r.shape[1]
  head = "after \\ on " + "".join(f"{'T' + str(j + 1):>7}" for j in range(t))
  lines = [title] if title else []
  lines += [head + f"{'avg':>8}", "-" * (len(head) + 8)]
  for i, row in enumerate(r):
    cells = "".join(f"{v:7.1f}" for v in row)
    lines.append(f"{'task ' + str(i + 1):<11}{cells}{row[:i + 1].mean():8.1f}")
  return "\n".join(lines)


def summary_table(results: dict) -> str:
  """One row per method: ACC, BWT, forgetting, FWT, avg. incremental acc,
  train time. ``results`` maps method name -> ``run_stream`` result, or
  ``report.aggregate_seeds``' result (then each cell is mean ± std over
  the seeds, and the row says how many)."""
  cols = [("ACC", "average_accuracy"), ("BWT", "backward_transfer"),
          ("Forget", "forgetting"), ("FWT", "forward_transfer"),
          ("AvgInc", "average_incremental_accuracy")]
  # A method's other classifiers (iCaRL's nearest mean) get rows of their
  # own: "icarl [nme]".
  rows = {}
  for name, res in results.items():
    rows[name] = res
    for key in res:
      if key.startswith("metrics_") and not key.endswith("_std"):
        extra = {**res, "metrics": res[key]}
        extra.pop("metrics_std", None)
        if f"{key}_std" in res:
          extra["metrics_std"] = res[f"{key}_std"]
        rows[f"{name} [{key[len('metrics_'):]}]"] = extra
  results = rows
  seeded = any("metrics_std" in r for r in results.values())
  w = 13 if seeded else 9
  n = max([16] + [len(name) + 1 for name in results])
  head = f"{'method':<{n}}" + "".join(f"{c:>{w}}" for c, _ in cols) + \
      f"{'train s':>10}" + ("  seeds" if seeded else "")
  lines = [head, "-" * len(head)]
  for name, res in results.items():
    m, sd = res["metrics"], res.get("metrics_std", {})
    cells = "".join(
        f"{'-':>{w}}" if k not in m else
        f"{f'{100 * m[k]:.1f} ± {100 * sd[k]:.1f}':>{w}}" if k in sd else
        f"{100 * m[k]:{w}.1f}" for _, k in cols)
    seeds = f"{len(res['seeds']):>7}" if "seeds" in res else (
        f"{1:>7}" if seeded else "")
    lines.append(f"{name:<{n}}{cells}{sum(res['timings']['train_s']):10.1f}"
                 f"{seeds}")
  lines.append("(percent" + ("; mean ± standard deviation over seeds" if
                             seeded else "") +
               "; ACC = final average accuracy, BWT/FWT of Lopez-Paz & "
               "Ranzato 2017, AvgInc of Rebuffi et al. 2017; FWT - where "
               "not applicable, as in class-IL)")
  return "\n".join(lines)
