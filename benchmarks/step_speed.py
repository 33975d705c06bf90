"""Step speed: cljax's fine-tuning train step vs a hand-written JAX step and a
plain PyTorch step of the same MLP (784-400-400-10, batch 128, SGD).

All three take one SGD step on the same kind of batch already in memory
(device arrays for JAX, tensors for PyTorch). Each timing is one block of
``--steps`` consecutive steps ended by ``block_until_ready`` (JAX) or by the
synchronous PyTorch call; blocks of the three are interleaved, after
``--warmup`` blocks, and the median over ``--blocks`` blocks is reported, with
ratios measured in the same run. Results: a table on stdout and a JSON file
(a new one under ``benchmarks/results/runs/``; ``--update`` rewrites the
committed ``benchmarks/results/step_speed.json``).

    python benchmarks/step_speed.py [--blocks 60 --steps 20] [--update]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from _timing import add_output_args, train_steps, write
from cljax import methods, models, train

SIZES = (784, 400, 400, 10)
BATCH = 128
LR = 0.01


def cljax_step(batch):
  model = models.build_model("mlp", (28, 28, 1), 10, hidden=SIZES[1:-1])
  method = methods.FineTune()
  opt = optax.sgd(LR)
  step = jax.jit(train.make_train_step(method.loss_fn(model), opt),
                 donate_argnums=0)
  state = train.init_train_state(model.params, model.batch_stats, opt, (),
                                 np.ones((1, 10), bool))
  return train_steps(step, state, batch)


def jax_step(batch):
  """Hand-written: plain dict params, jax.jit + optax, no flax."""
  keys = jax.random.split(jax.random.key(0), len(SIZES) - 1)
  params = [{"w": jax.random.normal(k, (a, b)) * (1 / np.sqrt(a)),
             "b": jnp.zeros(b)} for k, a, b in zip(keys, SIZES[:-1], SIZES[1:])]
  opt = optax.sgd(LR)

  def loss(params, x, y):
    h = x.reshape(x.shape[0], -1)
    for layer in params[:-1]:
      h = jax.nn.relu(h @ layer["w"] + layer["b"])
    logits = h @ params[-1]["w"] + params[-1]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def step(params, opt_state, x, y):
    grads = jax.grad(loss)(params, x, y)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  step = jax.jit(step, donate_argnums=(0, 1))
  box = [(params, opt.init(params))]

  def run(n):
    p, o = box[0]
    for _ in range(n):
      p, o = step(p, o, batch["x"], batch["y"])
    jax.block_until_ready(p)
    box[0] = (p, o)

  return run


def torch_step(x, y):
  import torch
  torch.manual_seed(0)
  layers = []
  for a, b in zip(SIZES[:-1], SIZES[1:]):
    layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
  model = torch.nn.Sequential(torch.nn.Flatten(), *layers[:-1])
  opt = torch.optim.SGD(model.parameters(), lr=LR)
  x, y = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
  lossf = torch.nn.CrossEntropyLoss()

  def run(n):
    for _ in range(n):
      opt.zero_grad(set_to_none=True)
      lossf(model(x), y).backward()
      opt.step()

  return run


def main():
  ap = argparse.ArgumentParser()
  add_output_args(ap)
  ap.add_argument("--blocks", type=int, default=60)
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--warmup", type=int, default=5)
  args = ap.parse_args()

  rng = np.random.default_rng(0)
  x = rng.normal(size=(BATCH, 28, 28, 1)).astype(np.float32)
  y = rng.integers(0, 10, BATCH).astype(np.int32)
  batch = {"x": jnp.asarray(x), "y": jnp.asarray(y),
           "t": jnp.zeros(BATCH, jnp.int32)}
  runners = {"cljax": cljax_step(batch), "jax (hand-written)": jax_step(batch)}
  try:
    import torch
  except ImportError as e:
    torch_version, skipped = None, (f"pytorch: skipped ({e}; pip install -e "
                                    "'.[bench]' adds it)")
    print(skipped)
  else:
    torch.set_num_threads(os.cpu_count() or 1)
    runners["pytorch"] = torch_step(x, y)
    torch_version, skipped = torch.__version__, None

  times = {k: [] for k in runners}
  for b in range(args.warmup + args.blocks):
    for name, run in runners.items():
      t0 = time.perf_counter()
      run(args.steps)
      dt = (time.perf_counter() - t0) / args.steps
      if b >= args.warmup:
        times[name].append(dt)

  ref = np.median(times["jax (hand-written)"])
  rows = {k: {"median_ms": 1e3 * float(np.median(v)),
              "p10_ms": 1e3 * float(np.percentile(v, 10)),
              "p90_ms": 1e3 * float(np.percentile(v, 90)),
              "ratio_to_jax": float(np.median(v) / ref)}
          for k, v in times.items()}
  print(f"MLP {'-'.join(map(str, SIZES))}, batch {BATCH}, SGD; median of "
        f"{args.blocks} blocks x {args.steps} steps after {args.warmup} "
        f"warm-up blocks, on {jax.devices()[0].device_kind} "
        f"({os.cpu_count()} cores)")
  print(f"{'step':<22}{'median ms':>10}{'p10':>8}{'p90':>8}{'vs jax':>8}")
  for k, r in rows.items():
    print(f"{k:<22}{r['median_ms']:10.3f}{r['p10_ms']:8.3f}{r['p90_ms']:8.3f}"
          f"{r['ratio_to_jax']:8.2f}x")
  write("step_speed", {"model": SIZES, "batch": BATCH, "blocks": args.blocks,
                       "steps_per_block": args.steps, "results": rows,
                       "torch": torch_version, "skipped": skipped}, args)


if __name__ == "__main__":
  main()
