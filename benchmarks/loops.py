"""Whole streams with the scan loop (data and evaluation on the device)
against the host loop (batches fed from the host, evaluation split by
split): wall time of training plus per-task evaluation, excluding
compilation (``run_stream``'s own timings), on

* the GEM protocol's stream (permuted Fashion-MNIST, 20 tasks of 1,000
  examples, batch 10, one pass, MLP 784-100-100-10), where the host round
  trip per step and the per-batch evaluation loop dominate: target >= 2x;
* split Fashion-MNIST (5 tasks, batch 128, one epoch, MLP 784-400-400-10):
  target >= 0.95x (no slower).

Both loops give bit-identical results (tests/methods_test.py); alternating
repetitions, the median reported.

    python benchmarks/loops.py [--reps 3] [--update]
"""

from __future__ import annotations

import argparse

import numpy as np
import optax

from _timing import add_output_args, write
from cljax import data, methods, models, train

STREAMS = {
    "gem_protocol": dict(kind="permuted", tasks=20, batch=10, hidden=(100, 100),
                         lr=0.1),
    "split": dict(kind="class", tasks=5, batch=128, hidden=(400, 400),
                  lr=0.01),
}


def stream(ds, spec):
  if spec["kind"] == "permuted":
    return data.permuted(ds, spec["tasks"], train_per_task=1000,
                         test_per_task=2000)
  return data.class_splits(ds, spec["tasks"])


def wall(res) -> float:
  t = res["timings"]
  return sum(t["train_s"]) + sum(t["eval_s"])


def main():
  ap = argparse.ArgumentParser()
  add_output_args(ap)
  ap.add_argument("--reps", type=int, default=3)
  args = ap.parse_args()
  ds = data.load_fashion_mnist()
  results = {}
  for name, spec in STREAMS.items():
    st = stream(ds, spec)
    for method, hp in (("finetune", {}), ("ewc", {"lam": 1.0})):
      times = {"host": [], "scan": []}
      for _ in range(args.reps):
        for loop in ("host", "scan"):
          model = models.build_model("mlp", st.input_shape, st.num_classes,
                                     hidden=spec["hidden"])
          res = train.run_stream(
              st, methods.build_method(method, **hp), model,
              optax.sgd(spec["lr"]),
              epochs=1, batch_size=spec["batch"], progress=False, loop=loop)
          times[loop].append(wall(res))
      h, s = float(np.median(times["host"])), float(np.median(times["scan"]))
      results[f"{name}/{method}"] = {"host_s": h, "scan_s": s,
                                     "speedup": h / s}
      print(f"{name:<14}{method:<10} host {h:7.2f} s  scan {s:7.2f} s  "
            f"{h / s:5.2f}x")
  write("loops", {"reps": args.reps, "results": results}, args)


if __name__ == "__main__":
  main()
