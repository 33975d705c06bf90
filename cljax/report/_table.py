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
  wall time. ``results`` maps method name -> ``run_stream`` result."""
  cols = [("ACC", "average_accuracy"), ("BWT", "backward_transfer"),
          ("Forget", "forgetting"), ("FWT", "forward_transfer"),
          ("AvgInc", "average_incremental_accuracy")]
  head = f"{'method':<16}" + "".join(f"{c:>9}" for c, _ in cols) + \
      f"{'train s':>10}"
  lines = [head, "-" * len(head)]
  for name, res in results.items():
    m = res["metrics"]
    cells = "".join(f"{100 * m[k]:9.1f}" if k in m else f"{'-':>9}"
                    for _, k in cols)
    lines.append(f"{name:<16}{cells}{sum(res['timings']['train_s']):10.1f}")
  lines.append("(percent; ACC = final average accuracy, BWT/FWT of "
               "Lopez-Paz & Ranzato 2017, AvgInc of Rebuffi et al. 2017)")
  return "\n".join(lines)
