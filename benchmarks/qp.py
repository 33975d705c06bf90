"""GEM's projection: cljax's jitted on-device solve vs the PyTorch libraries'
quadprog round trip.

For ``t`` memory gradients of ``P`` parameters (random, with violated
constraints), times (a) ``jax.jit(gem_project)`` (Gram matrix, exact
active-set QP, ``G^T v + g``, all on the device) and (b) what Avalanche /
Mammoth / the GEM reference code do each step: copy ``G`` and ``g`` to the
host as float64 numpy, form ``G G^T`` and ``G g``, call
``quadprog.solve_qp``, form ``G^T v + g`` and copy back. Also (c) the QP
iterations alone (``nonneg_qp`` on a precomputed ``t x t`` problem), as a
share of (a), and two Gram matrices alone: (d) XLA's single product
``G G^T`` in float32 inside ``jit``, (e) NumPy's float64 one, as (b)
forms it. On a 2-core CPU at P = 10^6 and t >= 10, (d) takes 2-3x (e):
XLA:CPU runs this short-and-wide product far below the BLAS NumPy calls,
which is why (a) forms long rows' Gram matrix by column chunks on CPU.
Agreement: max relative difference of (a) and (b).

    python benchmarks/qp.py [--blocks 7]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import quadprog

from _timing import add_output_args, interleaved_medians, repeat, write
from cljax.constraints import gem_project, nonneg_qp


def quadprog_roundtrip(g, G, margin):
  gh = np.asarray(jax.device_get(g), np.float64)
  Gh = np.asarray(jax.device_get(G), np.float64)
  M = Gh @ Gh.T
  v = quadprog.solve_qp(0.5 * (M + M.T) + 1e-3 * np.eye(len(Gh)), -(Gh @ gh),
                        np.eye(len(Gh)), np.full(len(Gh), margin))[0]
  return jnp.asarray((Gh.T @ v + gh).astype(np.float32))


def main():
  ap = argparse.ArgumentParser()
  add_output_args(ap)
  ap.add_argument("--blocks", type=int, default=7)
  ap.add_argument("--reps", type=int, default=3)
  args = ap.parse_args()
  proj = jax.jit(lambda g, G: gem_project(g, G, 0.5))
  qp = jax.jit(lambda m, c: nonneg_qp(m, c)[0])
  gram = jax.jit(lambda G: G @ G.T)
  rows = []
  print(f"{'t':>3}{'P':>9}{'jit ms':>10}{'quadprog ms':>13}{'speed-up':>10}"
        f"{'QP share':>10}{'Gram XLA':>10}{'Gram NumPy':>12}{'rel diff':>10}")
  for p in (10**4, 10**5, 10**6, 10**6 + 1):  # + 1: an odd row length
    for t in (1, 2, 5, 10, 20):
      rng = np.random.default_rng(t)
      G = jnp.asarray(rng.normal(size=(t, p)), jnp.float32)
      g = jnp.asarray(rng.normal(size=p), jnp.float32) - G.mean(0) * t
      M = G @ G.T
      c = G @ g + M @ jnp.full((t,), 0.5)
      G64 = np.asarray(G, np.float64)
      a, b = proj(g, G), quadprog_roundtrip(g, G, 0.5)
      diff = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
      tm = interleaved_medians(
          {"jit": repeat(proj, g, G),
           "quadprog": lambda n: [quadprog_roundtrip(g, G, 0.5)
                                  for _ in range(n)],
           "qp": repeat(qp, M, c), "gram": repeat(gram, G),
           "gram_numpy": lambda n: [G64 @ G64.T for _ in range(n)]},
          blocks=args.blocks, reps=args.reps, warmup=1)
      r = {"t": t, "P": p, "jit_ms": tm["jit"]["median_ms"],
           "quadprog_ms": tm["quadprog"]["median_ms"],
           "qp_only_ms": tm["qp"]["median_ms"],
           "gram_xla_ms": tm["gram"]["median_ms"],
           "gram_numpy_ms": tm["gram_numpy"]["median_ms"], "rel_diff": diff}
      r["speedup"] = r["quadprog_ms"] / r["jit_ms"]
      r["qp_share"] = r["qp_only_ms"] / r["jit_ms"]
      rows.append(r)
      print(f"{t:3d}{p:9d}{r['jit_ms']:10.2f}{r['quadprog_ms']:13.2f}"
            f"{r['speedup']:9.2f}x{100 * r['qp_share']:9.1f}%"
            f"{r['gram_xla_ms']:10.2f}{r['gram_numpy_ms']:12.2f}{diff:10.1e}")
  write("qp", {"blocks": args.blocks, "reps": args.reps, "margin": 0.5,
               "note": "quadprog with the reference code's 1e-3 ridge",
               "results": rows}, args)


if __name__ == "__main__":
  main()
