"""A sweep of K EWC strengths as one vmapped step (``cljax.train.vmap_step``)
against the K members' own jitted steps one after the other (what K
sequential runs do), on the GEM protocol's shape: MLP 784-100-100-10, batch
10, SGD, every member in its state after one task (penalty active).

Reported per block of ``--steps`` sweep steps (each: one step of every
member): the median time of both and their ratio, for each K.

Then whole streams (``--streams``): the GEM protocol's stream (permuted
Fashion-MNIST, 20 tasks of 1,000 examples, batch 10, one pass) with K = 8
EWC strengths as one ``run_sweep`` against the K ``run_stream`` runs one
after the other, both with the scan loop: training plus per-task
evaluation, compilation excluded (the runs' own timings), median of
``--reps``. Target on CPU: no slower (>= 1x).

And seeds (``--seeds N``): N seeds of EWC on the same stream, each with
its own permutations and initialisation, as one ``run_sweep`` (a seed,
stream and model per member) against the N ``run_stream`` runs one after
the other, timed the same way.

    python benchmarks/sweep.py [--ks 8,16 --blocks 20 --steps 20]
                               [--streams --reps 3] [--seeds 3] [--update]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

import numpy as np

from _timing import add_output_args, interleaved_medians, write
from cljax import data, methods, models, train
from cljax.bench import method_state, train_steps
from cljax.bench._suite import synthetic_stream

BATCH = 10


def main():
  ap = argparse.ArgumentParser()
  add_output_args(ap)
  ap.add_argument("--ks", default="8,16")
  ap.add_argument("--blocks", type=int, default=20)
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--streams", action="store_true",
                  help="also time whole GEM-protocol streams (Fashion-MNIST)")
  ap.add_argument("--seeds", type=int, default=0,
                  help="also time N seeds of a GEM-protocol stream")
  ap.add_argument("--reps", type=int, default=3)
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
  out = {"batch": BATCH, "model": "mlp 784-100-100-10",
         "blocks": args.blocks, "steps_per_block": args.steps,
         "results": results}
  if args.streams:
    out["streams"] = streams(args.reps)
  if args.seeds:
    out["seeds"] = seeds(args.reps, args.seeds)
  write("sweep", out, args)


def streams(reps: int, k: int = 8) -> dict:
  """K EWC strengths on the GEM protocol's stream: ``run_sweep`` against
  the K runs one after the other (scan loop both)."""
  from loops import STREAMS, stream, wall
  spec = STREAMS["gem_protocol"]
  st = stream(data.load_fashion_mnist(), spec)
  model = models.build_model("mlp", st.input_shape, st.num_classes,
                             hidden=spec["hidden"])
  # 0.001 ... 1 (at lr 0.1, batch 10, EWC diverges from lam ~2 on).
  lams = [10.0 ** (3 * i / (k - 1) - 3) for i in range(k)]
  kw = dict(epochs=1, batch_size=spec["batch"], progress=False, loop="scan")
  opt = optax.sgd(spec["lr"])
  times = {"sequential": [], "vmapped": []}
  for _ in range(reps):
    times["sequential"].append(sum(wall(train.run_stream(
        st, methods.EWC(lam), model, opt, **kw)) for lam in lams))
    res = train.run_sweep(st, methods.EWC(), [{"lam": v} for v in lams],
                          model, opt, **kw)
    times["vmapped"].append(wall(next(r for r in res if "diverged" not in r)))
  seq, vm = (float(np.median(times[t])) for t in ("sequential", "vmapped"))
  print(f"GEM-protocol stream, K={k} EWC strengths: one after the other "
        f"{seq:.2f} s, run_sweep {vm:.2f} s: {seq / vm:.2f}x")
  return {"k": k, "lams": lams, "sequential_s": seq, "vmapped_s": vm,
          "speedup": seq / vm, "runs": times}


def seeds(reps: int, n: int) -> dict:
  """N seeds of EWC (lam 0.1) on the GEM protocol's stream, each its own
  permutations and initialisation: one ``run_sweep`` against the N runs one
  after the other (scan loop both)."""
  from loops import STREAMS, wall
  spec = STREAMS["gem_protocol"]
  ds = data.load_fashion_mnist()
  sts = [data.permuted(ds, spec["tasks"], train_per_task=1000,
                       test_per_task=2000, seed=s) for s in range(n)]
  mds = [models.build_model("mlp", sts[0].input_shape, sts[0].num_classes,
                            hidden=spec["hidden"], seed=s) for s in range(n)]
  kw = dict(epochs=1, batch_size=spec["batch"], progress=False, loop="scan")
  opt = optax.sgd(spec["lr"])
  times = {"sequential": [], "vmapped": []}
  for _ in range(reps):
    times["sequential"].append(sum(wall(train.run_stream(
        sts[s], methods.EWC(0.1), mds[s], opt, seed=s, **kw))
                                   for s in range(n)))
    res = train.run_sweep(sts, methods.EWC(0.1), [{}] * n, mds, opt,
                          seed=list(range(n)), **kw)
    times["vmapped"].append(wall(res[0]))
  seq, vm = (float(np.median(times[t])) for t in ("sequential", "vmapped"))
  print(f"GEM-protocol stream, {n} seeds of EWC: one after the other "
        f"{seq:.2f} s, run_sweep {vm:.2f} s: {seq / vm:.2f}x")
  return {"seeds": n, "sequential_s": seq, "vmapped_s": vm,
          "speedup": seq / vm, "runs": times}


if __name__ == "__main__":
  main()
