"""GEM and A-GEM train steps vs the plain fine-tuning step, by number of
past tasks.

The GEM paper's setting: MLP 784-100-100-10, batch 10, 256 memories per
task, a stream of 20 tasks. For ``t`` past tasks (memory slots filled with
random examples), times the jitted steps (as ``run_stream`` builds them) of
fine-tuning, GEM (memory gradients of the filled slots' bucket, the on-device
QP, the projection) and A-GEM (a 256-example reference gradient). Also, as
shares of the GEM step: a standalone projection (``gem_project`` on random
``T x P`` memory gradients with violated constraints: Gram matrix, QP,
refinement; an upper bound, since the step skips the projection when no
constraint is violated, which is why it can exceed 100% for small ``t``)
and the QP solve alone (``nonneg_qp`` on the ``t x t`` problem; target
< 2%). Target: GEM step <= 1.1 x (1 + t m / B) plain steps;
A-GEM <= 1.1 x (1 + 256 / B).

    python benchmarks/gem_step.py [--blocks 15 --steps 20]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

from _timing import add_output_args, interleaved_medians, method_steps, repeat, write
from cljax import constraints, data, methods, models
from cljax.constraints import nonneg_qp

T, M, B = 20, 256, 10


def stream(rng):
  n = 300
  tasks = []
  for k in range(T):
    s = data.Split(rng.normal(size=(n, 28, 28, 1)).astype(np.float32),
                   rng.integers(0, 10, n).astype(np.int32),
                   np.full(n, k, np.int32))
    tasks.append(data.Task(s, s.take(np.arange(0)), s, np.arange(10)))
  return data.Stream("random", "domain", tuple(tasks), 10)


def main():
  ap = argparse.ArgumentParser()
  add_output_args(ap)
  ap.add_argument("--blocks", type=int, default=15)
  ap.add_argument("--steps", type=int, default=20)
  args = ap.parse_args()
  rng = np.random.default_rng(0)
  st = stream(rng)
  model = models.build_model("mlp", (28, 28, 1), 10, hidden=(100, 100))
  n_params = sum(a.size for a in jax.tree.leaves(model.params))
  rows = []
  print(f"MLP 784-100-100-10 ({n_params} params), batch {B}, {M} memories "
        f"per task, {T} task slots")
  print(f"{'t':>3}{'plain ms':>10}{'GEM ms':>9}{'x plain':>9}{'target':>8}"
        f"{'A-GEM ms':>10}{'x plain':>9}{'proj share':>12}{'QP share':>10}")
  sgd = optax.sgd(0.1)
  for t in (1, 2, 5, 10, 19):
    task = st.tasks[t].train
    batch = {k: jnp.asarray(getattr(task, k)[:B]) for k in "xyt"}
    G = jnp.asarray(rng.normal(size=(T, n_params)), jnp.float32)
    g = jnp.asarray(rng.normal(size=n_params), jnp.float32) - G[:t].sum(0)
    proj = jax.jit(constraints.gem_project)
    mask = jnp.arange(T) < t
    gram, lin = G @ G.T, G @ g
    qp = jax.jit(lambda m, c, k: nonneg_qp(m, c, k)[0])
    tm = interleaved_medians({
        "plain": method_steps(methods.FineTune(), model, st, sgd, t, batch),
        "gem": method_steps(methods.GEM(M, 0.5), model, st, sgd, t, batch),
        "agem": method_steps(methods.AGEM(M, 256), model, st, sgd, t, batch),
        "project": repeat(proj, g, G, 0.5, mask),
        "qp": repeat(qp, gram, lin, mask)},
        blocks=args.blocks, reps=args.steps)
    plain = tm["plain"]["median_ms"]
    r = {"t": t, **{f"{k}_ms": v["median_ms"] for k, v in tm.items()}}
    r["gem_ratio"] = r["gem_ms"] / plain
    r["agem_ratio"] = r["agem_ms"] / plain
    r["gem_target"] = 1.1 * (1 + t * M / B)
    r["agem_target"] = 1.1 * (1 + 256 / B)
    r["project_share_of_gem_step"] = r["project_ms"] / r["gem_ms"]
    r["qp_share_of_gem_step"] = r["qp_ms"] / r["gem_ms"]
    rows.append(r)
    print(f"{t:3d}{plain:10.3f}{r['gem_ms']:9.2f}{r['gem_ratio']:8.1f}x"
          f"{r['gem_target']:7.0f}x{r['agem_ms']:10.2f}{r['agem_ratio']:8.1f}x"
          f"{100 * r['project_share_of_gem_step']:11.1f}%"
          f"{100 * r['qp_share_of_gem_step']:9.2f}%")
  write("gem_step", {"T": T, "memory_per_task": M, "batch": B,
                     "n_params": int(n_params), "blocks": args.blocks,
                     "steps_per_block": args.steps, "results": rows}, args)


if __name__ == "__main__":
  main()
