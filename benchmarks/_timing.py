"""The benchmark scripts' output (JSON files under ``results/``); their
timing is ``cljax.bench``'s (interleaved blocks, medians), re-exported here."""

from __future__ import annotations

import json
import os
import time

import jax

from cljax.bench import (interleaved_medians, machine, method_steps,  # noqa: F401
                         repeat, train_steps)

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def add_output_args(ap) -> None:
  """``--update`` (rewrite the committed ``results/<name>.json``) and
  ``--out`` (a path of your own); by default a run writes a new file."""
  ap.add_argument("--update", action="store_true",
                  help="rewrite the committed benchmarks/results/<name>.json")
  ap.add_argument("--out", default=None, help="write the JSON here")


def write(name: str, payload: dict, args) -> str:
  """Writes the results: to ``args.out``; to the committed
  ``results/<name>.json`` with ``--update``; else to a new file
  ``results/runs/<name>-<backend>-<date-time>.json``, so a run never
  overwrites the committed figures."""
  if args.out:
    path = args.out
  elif args.update:
    path = os.path.join(RESULTS, f"{name}.json")
  else:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(RESULTS, "runs",
                        f"{name}-{jax.default_backend()}-{stamp}.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump({**payload, "machine": machine()}, f, indent=1)
  print(f"written: {path}")
  return path
