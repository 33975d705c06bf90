"""Summary numbers of a continual-learning run, from its accuracy matrix.

``R[i, j]`` is the test accuracy on task ``j`` after training on tasks
``0..i`` (``T x T``, Lopez-Paz & Ranzato 2017, sec. 2). ``b[j]`` is the
accuracy on task ``j`` of the model at random initialisation (needed by FWT).
Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _check(r) -> np.ndarray:
  r = np.asarray(r, np.float64)
  if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] == 0:
    raise ValueError(f"accuracy matrix must be square (T, T), got {r.shape}")
  return r


def average_accuracy(r) -> float:
  """ACC = (1/T) sum_j R[T-1, j]  (Lopez-Paz & Ranzato 2017, eq. 2)."""
  r = _check(r)
  return float(r[-1].mean())


def backward_transfer(r) -> float:
  """BWT = 1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j])  (eq. 3).

  Negative BWT is forgetting. Zero for a single task.
  """
  r = _check(r)
  t = len(r)
  if t == 1:
    return 0.0
  return float(np.mean(r[-1, :-1] - np.diag(r)[:-1]))


def forward_transfer(r, b) -> float:
  """FWT = 1/(T-1) sum_{j>=1} (R[j-1, j] - b[j])  (eq. 4).

  ``b[j]`` must be measured as ``R[j-1, j]`` is (the same active logits).
  In class-incremental streams task ``j``'s classes are inactive before it
  is trained, so both are 0 and FWT is not applicable: the runner leaves it
  out there.

  Args:
    r: ``(T, T)`` accuracy matrix.
    b: ``(T,)`` accuracies of the randomly initialised model on each task.
  """
  r = _check(r)
  b = np.asarray(b, np.float64)
  if b.shape != (len(r),):
    raise ValueError(f"b must have shape ({len(r)},), got {b.shape}")
  if len(r) == 1:
    return 0.0
  idx = np.arange(1, len(r))
  return float(np.mean(r[idx - 1, idx] - b[1:]))


def forgetting(r) -> float:
  """Average forgetting (Chaudhry et al. 2018, "Riemannian Walk", eq. 2-3).

  ``f_j = max_{l in 0..T-2} R[l, j] - R[T-1, j]`` for ``j < T-1``, averaged
  over those ``j``. (Rows before task ``j`` was trained are included in the
  max, as in the definition; they are near chance for disjoint tasks.)
  """
  r = _check(r)
  t = len(r)
  if t == 1:
    return 0.0
  best = r[:-1, :-1].max(axis=0)
  return float(np.mean(best - r[-1, :-1]))


def intransigence(r, reference) -> float:
  """Intransigence at the last task (Chaudhry et al. 2018, "Riemannian
  Walk", eq. 4): ``I_T = a*_T - R[T-1, T-1]``, how much less well the last
  task is learnt than by a reference trained on the data of every task so
  far; ``a*_T = reference[T-1, T-1]``, the matrix of such a reference (e.g.
  ``joint``, which trains on the union of the tasks seen). Its shape must
  be ``r``'s."""
  r, ref = _check(r), _check(reference)
  if r.shape != ref.shape:
    raise ValueError(f"the reference's accuracy matrix is {ref.shape}, the "
                     f"run's {r.shape}")
  return float(ref[-1, -1] - r[-1, -1])


def average_incremental_accuracy(r, test_sizes: Sequence[int] | None = None
                                 ) -> float:
  """Average incremental accuracy (Rebuffi et al. 2017, iCaRL, sec. 4.1).

  The mean over steps ``i`` of the accuracy on the test data of all tasks seen
  so far: ``A_i = sum_{j<=i} n_j R[i, j] / sum_{j<=i} n_j``, with ``n_j`` the
  test-set sizes (equal weights if not given).
  """
  r = _check(r)
  n = np.ones(len(r)) if test_sizes is None else np.asarray(test_sizes, float)
  steps = [np.dot(n[:i + 1], r[i, :i + 1]) / n[:i + 1].sum()
           for i in range(len(r))]
  return float(np.mean(steps))


def score(acc_a, acc_b) -> dict:
  """The seeds' two-task Score: max over evaluation points of the mean of the
  accuracies on task A and task B, with its A and B parts at the argmax.

  Args:
    acc_a, acc_b: ``(S,)`` accuracies at the same ``S`` evaluation points.
  Returns:
    ``{"score", "score_a", "score_b", "index"}``.
  """
  a, b = np.asarray(acc_a, float), np.asarray(acc_b, float)
  if a.shape != b.shape or a.ndim != 1 or a.size == 0:
    raise ValueError(f"acc_a {a.shape} and acc_b {b.shape} must be equal, "
                     "non-empty vectors")
  mean = (a + b) / 2
  k = int(np.argmax(mean))
  return {"score": float(mean[k]), "score_a": float(a[k]),
          "score_b": float(b[k]), "index": k}


def summary(r, b=None, test_sizes=None) -> dict:
  """All the numbers above that ``r`` (and ``b``) determine."""
  out = {
      "average_accuracy": average_accuracy(r),
      "backward_transfer": backward_transfer(r),
      "forgetting": forgetting(r),
      "average_incremental_accuracy": average_incremental_accuracy(
          r, test_sizes),
  }
  if b is not None:
    out["forward_transfer"] = forward_transfer(r, b)
  return out
