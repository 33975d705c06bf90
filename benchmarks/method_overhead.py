"""Per-step cost of each method relative to the plain fine-tuning step.

Same model (MLP 784-400-400-10), batch (128 Fashion-MNIST-shaped examples,
10 classes, 5 tasks of 2 classes, task-IL masks) and optimizer (SGD with
momentum) for every method; each method's state is the one it has after the
first task (penalties and teachers active), built by its own end-of-task hook
on random data. The jitted steps (``cljax.train.make_train_step``, as in
``run_stream``) run in interleaved blocks; the median over blocks is reported.
Targets: <= 1.10x for L2/EWC/online EWC/SI/MAS, <= 1.5x for KD/LwF (which add
a teacher forward pass).

    python benchmarks/method_overhead.py [--blocks 40 --steps 20]
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np
import optax

from _timing import add_output_args, interleaved_medians, method_steps, write
from cljax import data, methods, models

BATCH = 128
NAMES = ("finetune", "l2", "ewc", "online_ewc", "si", "mas", "kd", "lwf")


def stream(rng):
  n = 2000
  split = data.Split(rng.normal(size=(n, 28, 28, 1)).astype(np.float32),
                     rng.integers(0, 10, n).astype(np.int32),
                     np.zeros(n, np.int32))
  ds = data.Dataset("random", split, split, 10)
  return data.class_splits(ds, 5, incremental="task")


def main():
  ap = argparse.ArgumentParser()
  add_output_args(ap)
  ap.add_argument("--blocks", type=int, default=40)
  ap.add_argument("--steps", type=int, default=20)
  args = ap.parse_args()
  rng = np.random.default_rng(0)
  st = stream(rng)
  task = st.tasks[1].train
  batch = {k: jnp.asarray(getattr(task, k)[:BATCH]) for k in "xyt"}
  model = models.build_model("mlp", (28, 28, 1), 10)
  base = optax.sgd(0.01, momentum=0.9)
  runners = {n: method_steps(methods.build_method(n), model, st, base, 1,
                             batch) for n in NAMES}
  t = interleaved_medians(runners, blocks=args.blocks, reps=args.steps)
  ref = t["finetune"]["median_ms"]
  print(f"MLP 784-400-400-10, batch {BATCH}; median of {args.blocks} blocks "
        f"x {args.steps} steps")
  print(f"{'method':<12}{'median ms':>10}{'vs finetune':>13}")
  for k, r in t.items():
    r["ratio_to_finetune"] = r["median_ms"] / ref
    print(f"{k:<12}{r['median_ms']:10.3f}{r['ratio_to_finetune']:12.2f}x")
  write("method_overhead", {"batch": BATCH, "blocks": args.blocks,
                            "steps_per_block": args.steps, "results": t}, args)


if __name__ == "__main__":
  main()
