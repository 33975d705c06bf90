"""Rehearsal steps and herding.

Steps (MLP 784-400-400-10, SGD with momentum, class-IL masks), each in the
state it has after the first task, its end-of-task hook run on random data:
ER (128 current + 128 replayed), DER++ (128 + two replay batches of 128),
iCaRL and End-to-End IL (128 + 128, plus a teacher's forward pass), against
the plain fine-tuning step on the doubled batch (256). Targets: ER <= 1.10x
that plain step; DER++ <= 1.25x ER; iCaRL and E2EIL <= 1.5x ER.

Herding: the exemplars of two classes of 5,400 examples (400-dimensional
features, 1,000 each) in one jitted call of ``cljax.memory.herding_classes``,
against a NumPy loop of iCaRL's Alg. 4 (vectorised over the examples, a
Python loop over the picks), medians over repetitions.

    python benchmarks/rehearsal.py [--blocks 30 --steps 20] [--update]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from _timing import (add_output_args, interleaved_medians, method_steps,
                     repeat, write)
from cljax import data, memory, methods, models

BATCH = 128


def stream(rng):
  n = 3000
  split = data.Split(rng.normal(size=(n, 28, 28, 1)).astype(np.float32),
                     rng.integers(0, 10, n).astype(np.int32),
                     np.zeros(n, np.int32))
  return data.class_splits(data.Dataset("random", split, split, 10), 5)


def herding_loop(features, m):
  """Alg. 4 in NumPy: each pick a vectorised pass over the examples."""
  phi = features / np.linalg.norm(features, axis=1, keepdims=True)
  mu = phi.mean(axis=0)
  total, chosen = np.zeros(phi.shape[1]), np.zeros(len(phi), bool)
  order = []
  for k in range(1, m + 1):
    d = np.linalg.norm(mu - (total + phi) / k, axis=1)
    d[chosen] = np.inf
    i = int(np.argmin(d))
    order.append(i)
    chosen[i] = True
    total += phi[i]
  return order


def main():
  ap = argparse.ArgumentParser()
  add_output_args(ap)
  ap.add_argument("--blocks", type=int, default=30)
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--herding_reps", type=int, default=3)
  args = ap.parse_args()
  rng = np.random.default_rng(0)
  st = stream(rng)
  model = models.build_model("mlp", (28, 28, 1), 10)
  base = optax.sgd(0.01, momentum=0.9)
  task = st.tasks[1].train
  batch = lambda n: {k: jnp.asarray(getattr(task, k)[:n]) for k in "xyt"}
  runners = {
      "finetune (batch 256)": method_steps(methods.FineTune(), model, st,
                                           base, 1, batch(2 * BATCH)),
      "er": method_steps(methods.ER(500), model, st, base, 1, batch(BATCH)),
      "derpp": method_steps(methods.DERpp(memory_size=500), model, st, base,
                            1, batch(BATCH)),
      "icarl": method_steps(methods.ICaRL(500), model, st, base, 1,
                            batch(BATCH)),
      "e2eil": method_steps(methods.E2EIL(500), model, st, base, 1,
                            batch(BATCH)),
  }
  t = interleaved_medians(runners, blocks=args.blocks, reps=args.steps)
  er = t["er"]["median_ms"]
  plain = t["finetune (batch 256)"]["median_ms"]
  print(f"MLP 784-400-400-10, {BATCH} current examples; median of "
        f"{args.blocks} blocks x {args.steps} steps")
  print(f"{'step':<22}{'median ms':>10}{'vs plain 256':>14}{'vs ER':>8}")
  for k, r in t.items():
    r["ratio_to_plain_256"] = r["median_ms"] / plain
    r["ratio_to_er"] = r["median_ms"] / er
    print(f"{k:<22}{r['median_ms']:10.3f}{r['ratio_to_plain_256']:13.2f}x"
          f"{r['ratio_to_er']:7.2f}x")

  n, d, m = 5400, 400, 1000
  feats = rng.normal(size=(2, n, d)).astype(np.float32) + 0.2
  herd = jax.jit(memory.herding_classes, static_argnums=3)
  args_j = (jnp.asarray(feats), jnp.asarray([n, n]), m, m)
  jax.block_until_ready(herd(*args_j))  # compile
  jit_times, loop_times = [], []
  for _ in range(args.herding_reps):
    t0 = time.perf_counter()
    jax.block_until_ready(herd(*args_j))
    jit_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for g in range(2):
      herding_loop(feats[g].astype(np.float64), m)
    loop_times.append(time.perf_counter() - t0)
  hj, hl = float(np.median(jit_times)), float(np.median(loop_times))
  print(f"herding 2 classes x {n} -> {m}: jitted {hj:.3f} s, NumPy loop "
        f"{hl:.3f} s ({hl / hj:.1f}x faster jitted)")
  write("rehearsal", {"batch": BATCH, "blocks": args.blocks,
                      "steps_per_block": args.steps, "results": t,
                      "herding": {"classes": 2, "examples": n, "dim": d,
                                  "per_class": m, "jitted_s": hj,
                                  "numpy_loop_s": hl,
                                  "speedup": hl / hj}}, args)


if __name__ == "__main__":
  main()
