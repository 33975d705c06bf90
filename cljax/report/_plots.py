"""PNG plots of a run: accuracy-matrix heatmap and accuracy curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _save(fig, path: str, title: str = "") -> str:
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


# Beyond this many tasks a heatmap has no per-cell numbers and sparse ticks;
# every figure is at most _MAX_INCHES on a side (memory stays bounded).
_CELL_TEXT_TASKS = 30
_MAX_INCHES = 12.0


def _ticks(t: int) -> range:
  return range(0, t, max(1, t // 15))


def plot_accuracy_matrix(r, path: str, title: str = "") -> str:
  """Heatmap of ``R[i, j]`` (percent), saved as PNG at ``path``; cell
  numbers up to 30 tasks, a figure of bounded size for any number."""
  r = np.asarray(r) * 100
  t = r.shape[0]
  fig, ax = plt.subplots(figsize=(min(1.0 + 0.7 * t, _MAX_INCHES),
                                  min(0.8 + 0.6 * t, _MAX_INCHES)))
  im = ax.imshow(r, vmin=0, vmax=100, cmap="viridis")
  if t <= _CELL_TEXT_TASKS:
    for i in range(t):
      for j in range(t):
        ax.text(j, i, f"{r[i, j]:.0f}", ha="center", va="center",
                color="w" if r[i, j] < 60 else "k", fontsize=8)
  ax.set_xticks(_ticks(t), [f"T{j + 1}" for j in _ticks(t)])
  ax.set_yticks(_ticks(t), [f"T{i + 1}" for i in _ticks(t)])
  ax.set_xlabel("evaluated on task")
  ax.set_ylabel("after training task")
  ax.set_title(title or "accuracy (%)")
  fig.colorbar(im, ax=ax, fraction=0.046)
  return _save(fig, path)


def plot_curves(curves_by_method: dict, path: str, title: str = "",
                task_names=None) -> str:
  """Accuracy on each task against training steps, one panel per method.

  ``curves_by_method`` maps a name to ``run_stream``'s ``curves`` list.
  """
  names = [n for n, c in curves_by_method.items() if c]
  if not names:
    return ""
  cols = min(len(names), 4)
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(
      min(4.2 * cols, _MAX_INCHES * 1.4), min(3.2 * rows, _MAX_INCHES * 1.4)),
                           squeeze=False, sharey=True)
  for ax in axes.flat[len(names):]:
    ax.set_visible(False)
  for ax, name in zip(axes.flat, names):
    curves = curves_by_method[name]
    steps = [c["step"] for c in curves]
    acc = np.asarray([c["acc"] for c in curves]) * 100
    for j in range(acc.shape[1]):
      label = task_names[j] if task_names else f"task {j + 1}"
      ax.plot(steps, acc[:, j], label=label)
    for c0, c1 in zip(curves[:-1], curves[1:]):
      if c1["task"] != c0["task"]:
        ax.axvline(c0["step"], color="grey", lw=0.6, ls=":")
    ax.set_title(name)
    ax.set_xlabel("training step")
    ax.set_ylim(0, 100)
  for row in axes:
    row[0].set_ylabel("accuracy (%)")
  if len(curves_by_method[names[0]][0]["acc"]) <= 20:  # else it hides all
    axes.flat[len(names) - 1].legend(fontsize=7, loc="lower left")
  return _save(fig, path, title)


def plot_over_tasks(matrices: dict, path: str, title: str = "") -> str:
  """Two panels, one line per method, against the number of tasks learned:
  the average accuracy over the tasks seen so far, and the accuracy on the
  first task (the GEM paper's Figure 1 views). ``matrices`` maps a name to
  its accuracy matrix ``R``."""
  fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
  for name, r in matrices.items():
    r = np.asarray(r) * 100
    tasks = np.arange(1, r.shape[0] + 1)
    seen = [r[i, :i + 1].mean() for i in range(r.shape[0])]
    ax0.plot(tasks, seen, marker=".", label=name)
    ax1.plot(tasks, r[:, 0], marker=".", label=name)
  ax0.set_ylabel("accuracy (%)")
  ax0.set_title("average over tasks seen")
  ax1.set_title("task 1")
  for ax in (ax0, ax1):
    ax.set_xlabel("tasks learned")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, 100)
  ax1.legend(fontsize=7, loc="lower left")
  return _save(fig, path, title)
