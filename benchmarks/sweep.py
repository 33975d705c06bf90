"""A sweep of K EWC strengths as one vmapped step (``cljax.train.vmap_step``)
against the K members' own jitted steps one after the other (what K
sequential runs do), on the GEM protocol's shape: MLP 784-100-100-10, batch
10, SGD, every member in its state after one task (penalty active).

Reported per block of ``--steps`` sweep steps (each: one step of every
member): the median time of both and their ratio, for each K.

    python benchmarks/sweep.py [--ks 8,16 --blocks 20 --steps 20] [--update]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

from _timing import add_output_args, interleaved_medians, write
from cljax import methods, models, train
from cljax.bench import method_state, train_steps
from cljax.bench._suite import synthetic_stream

BATCH = 10


def main():
  ap = argparse.ArgumentParser()
  add_output_args(ap)
  ap.add_argument("--ks", default="8,16")
  ap.add_argument("--blocks", type=int, default=20)
  ap.add_argument("--steps", type=int, default=20)
  args = ap.parse_args()
  stream = synthetic_stream("mlp", 1000)
  model = models.build_model("mlp", (28, 28, 1), 10, hidden=(100, 100))
  task = stream.tasks[1].train
  batch = {k: jnp.asarray(getattr(task, k)[:BATCH]) for k in "xyt"}
  base = optax.sgd(0.1)
  results = {}
  for k in map(int, args.ks.split(",")):
    lams = [10.0 ** (i % 8) for i in range(k)]
    members = [methods.EWC(lam, fisher_samples=256) for lam in lams]
    alone = []
    for m in members:
      step, state = method_state(m, model, stream, base, 1)
      alone.append(train_steps(jax.jit(step, donate_argnums=0), state, batch))

    def sequential(n):
      for run in alone:  # each run(n) blocks at its end; one block per member
        run(n)

    _, one = method_state(members[0], model, stream, base, 1)
    hps = train.stack_hparams(members[0], [{"lam": lam} for lam in lams])
    vstep = train.vmap_step(members[0], model, base)
    box = [train.stack([one] * k)]

    def vmapped(n):
      s = box[0]
      for _ in range(n):
        s, _ = vstep(hps, s, batch, jax.random.key(0))
      jax.block_until_ready(s)
      box[0] = s

    t = interleaved_medians({"sequential": sequential, "vmapped": vmapped},
                            blocks=args.blocks, reps=args.steps)
    t["speedup"] = t["sequential"]["median_ms"] / t["vmapped"]["median_ms"]
    results[k] = t
    print(f"K={k}: {k} members' steps one after the other "
          f"{t['sequential']['median_ms']:.3f} ms, vmapped "
          f"{t['vmapped']['median_ms']:.3f} ms: {t['speedup']:.2f}x")
  write("sweep", {"batch": BATCH, "model": "mlp 784-100-100-10",
                  "blocks": args.blocks, "steps_per_block": args.steps,
                  "results": results}, args)


if __name__ == "__main__":
  main()
