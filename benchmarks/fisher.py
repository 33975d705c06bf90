"""Fisher diagonal: layer-tap path vs vmap(grad) path vs a batched gradient.

For the same N examples (chunks of ``--chunk``) of Fashion-MNIST-shaped
inputs, times three jitted functions of the parameters:

* ``layerwise``: ``layerwise_fisher_diagonal`` (exact per-example Fisher from
  one backward pass per chunk; cljax's default in EWC),
* ``vmap``: ``fisher_diagonal`` (exact, ``vmap(grad)`` per chunk),
* ``batched grad``: the gradient of the mean loss over the same chunks (one
  ordinary backward pass per chunk, unrolled; *not* a Fisher, the speed
  floor).

Peak memory is XLA's compiled temporary allocation
(``memory_analysis().temp_size_in_bytes``); compile time covers tracing,
lowering and compilation. Targets (issue 12): layerwise within 1.5x of the
batched gradient, compiled in 0.5 s or less, over a task's training data
(``--n 12032 --models mlp``: a split Fashion-MNIST task, in whole chunks;
``benchmarks/results/fisher_task.json``).

    python benchmarks/fisher.py [--n 1024 --chunk 128 --blocks 15]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from _timing import add_output_args, interleaved_medians, repeat, write
from cljax import models, regularizers
from cljax.losses import masked_cross_entropy


def functions(model, chunk):
  """``{path: f(params, xs, ys)}``: the examples are arguments, as in
  EWC's end-of-task importance (not constants baked into the program)."""
  taps, stats = model.taps, model.batch_stats

  def nll(p, x, y):
    return masked_cross_entropy(model.apply(p, stats, x[None])[0][0],
                                y[None])[0]

  def batched(p, xs, ys):
    # Unrolled over the chunks: XLA:CPU runs JAX's own gradient
    # convolutions inside a loop (lax.map) about 7x slower than outside one
    # (cljax.models._conv), which would flatter the other paths.
    loss = lambda q, x, y: jnp.sum(masked_cross_entropy(
        model.apply(q, stats, x)[0][0], y))
    g = [jax.grad(loss)(p, xs[i:i + chunk], ys[i:i + chunk])
         for i in range(0, len(xs), chunk)]
    return jax.tree.map(lambda *s: sum(s) / len(xs), *g)

  return {
      "layerwise": lambda p, xs, ys: regularizers.layerwise_fisher_diagonal(
          taps, p, stats, xs, ys, chunk_size=chunk),
      "vmap": lambda p, xs, ys: regularizers.fisher_diagonal(
          nll, p, xs, ys, chunk_size=chunk),
      "batched grad": batched,
  }


def main():
  ap = argparse.ArgumentParser()
  add_output_args(ap)
  ap.add_argument("--n", type=int, default=1024)
  ap.add_argument("--chunk", type=int, default=128)
  ap.add_argument("--blocks", type=int, default=15)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--models", default="mlp,cnn")
  args = ap.parse_args()
  rng = np.random.default_rng(0)
  xs = jnp.asarray(rng.normal(size=(args.n, 28, 28, 1)).astype(np.float32))
  ys = jnp.asarray(rng.integers(0, 10, args.n).astype(np.int32))
  results = {}
  jax.jit(lambda a: a + 1)(xs)  # JAX's one-time set-up, outside any compile_s
  for name in args.models.split(","):
    model = models.build_model(name, (28, 28, 1), 10)
    fns = {k: jax.jit(f) for k, f in functions(model, args.chunk).items()}
    mem, compile_s = {}, {}
    for k, f in fns.items():  # tracing, lowering and XLA's compilation
      t0 = time.perf_counter()
      mem[k] = f.lower(model.params, xs, ys).compile().memory_analysis()
      compile_s[k] = time.perf_counter() - t0
    want = fns["vmap"](model.params, xs, ys)
    got = fns["layerwise"](model.params, xs, ys)
    err = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
              for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
    t = interleaved_medians({k: repeat(f, model.params, xs, ys) for k, f in
                             fns.items()}, blocks=args.blocks, reps=args.reps)
    ref = t["batched grad"]["median_ms"]
    for k in t:
      t[k]["ratio_to_batched_grad"] = t[k]["median_ms"] / ref
      t[k]["temp_mib"] = mem[k].temp_size_in_bytes / 2**20
      t[k]["compile_s"] = compile_s[k]
    results[name] = {"timings": t, "max_rel_diff_layerwise_vs_vmap": err}
    print(f"\n{name}: N={args.n}, chunk {args.chunk}; median of "
          f"{args.blocks} blocks x {args.reps}; layerwise vs vmap max "
          f"relative difference {err:.1e}")
    print(f"{'path':<14}{'median ms':>10}{'vs batched':>12}{'temp MiB':>10}"
          f"{'compile s':>10}")
    for k, r in t.items():
      print(f"{k:<14}{r['median_ms']:10.1f}{r['ratio_to_batched_grad']:11.2f}x"
            f"{r['temp_mib']:10.1f}{r['compile_s']:10.2f}")
  write("fisher", {"n": args.n, "chunk": args.chunk, "blocks": args.blocks,
                   "reps": args.reps, "results": results}, args)


if __name__ == "__main__":
  main()
