"""Results of one entry under several seeds: mean and standard deviation."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def aggregate_seeds(runs: Sequence[dict], seeds: Sequence[int]) -> dict:
  """One entry's ``run_stream`` results under ``seeds``, combined.

  Matrices and metrics become their mean over seeds, with the (population,
  ``ddof=0``) standard deviation beside them as ``accuracy_matrix_std`` and
  ``metrics_std``; ``per_seed`` keeps every seed's own result. Curves are the
  first seed's; timings and steps are summed over seeds.
  """
  if len(runs) != len(seeds) or not runs:
    raise ValueError(f"{len(runs)} results for seeds {list(seeds)}")
  mean = lambda xs: np.mean(np.asarray(xs, float), axis=0)
  std = lambda xs: np.std(np.asarray(xs, float), axis=0)
  mats = [r["accuracy_matrix"] for r in runs]
  # Validation matrices: their mean, or [] where a seed has none.
  val_mean = lambda key: (mean([r[key] for r in runs]).tolist()
                          if all(r[key] for r in runs) else [])
  keys = [k for k in runs[0]["metrics"] if all(k in r["metrics"]
                                                for r in runs)]
  first = runs[0]
  out = {k: v for k, v in first.items() if k not in ("per_seed",)}
  out.update(
      seeds=list(seeds), per_seed=list(runs),
      accuracy_matrix=mean(mats).tolist(),
      accuracy_matrix_std=std(mats).tolist(),
      val_accuracy_matrix=val_mean("val_accuracy_matrix"),
      metrics={k: float(mean([r["metrics"][k] for r in runs])) for k in keys},
      metrics_std={k: float(std([r["metrics"][k] for r in runs]))
                   for k in keys},
      timings={k: np.sum([r["timings"][k] for r in runs], axis=0).tolist()
               for k in first["timings"]},
      steps=int(sum(r["steps"] for r in runs)))
  if "classifier" in first:  # the paper's classifier, for selection
    key = f"val_accuracy_matrix_{first['classifier']}"
    out[key] = val_mean(key)
  if "network_use" in first:  # parameter isolation: the mean per task
    out["network_use"] = mean([r["network_use"] for r in runs]).tolist()
  if "wall_s" in first:
    out["wall_s"] = float(sum(r["wall_s"] for r in runs))
  # A method's other classifiers (e.g. iCaRL's nearest mean): the same.
  for key in first:
    name = key[len("accuracy_matrix_"):]
    if key.startswith("accuracy_matrix_") and not key.endswith("_std"):
      mats = [r[key] for r in runs]
      out[key] = mean(mats).tolist()
      out[f"{key}_std"] = std(mats).tolist()
      per = [r[f"metrics_{name}"] for r in runs]
      out[f"metrics_{name}"] = {k: float(mean([p[k] for p in per]))
                                for k in per[0]}
      out[f"metrics_{name}_std"] = {k: float(std([p[k] for p in per]))
                                    for k in per[0]}
  return out
