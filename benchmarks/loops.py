"""Whole streams with the scan loop (data and evaluation on the device)
against the host loop (batches fed from the host, evaluation split by
split): wall time of training plus per-task evaluation, excluding
compilation (``run_stream``'s own timings), on

* the GEM protocol's stream (permuted Fashion-MNIST, 20 tasks of 1,000
  examples, batch 10, one pass, MLP 784-100-100-10), where the host round
  trip per step and the per-batch evaluation loop dominate: target >= 2x;
* split Fashion-MNIST (5 tasks, batch 128, one epoch, MLP 784-400-400-10):
  target >= 0.95x (no slower).

Each stream's evaluations also get their arithmetic: one jitted pass of
the forward over every task's test set, in the evaluator's batches of
1,000, times the number of evaluations. Where it is most of the scan
loop's time (the GEM protocol evaluates 20 x 2,000 test examples after
each of 20 tasks), ``host / (scan training + that)`` is recorded beside
the speed-up: what the scan loop would reach if its evaluation cost
nothing but the forward passes.

Then the whole-stream cost per iteration on split Fashion-MNIST (plain SGD,
one epoch; training time over steps, end-of-task hooks included,
compilation excluded) against a bare ``lax.scan`` of the same method's
jitted step over device-resident batches (its state after the first task),
timed in the same run: target <= 1.10x for finetune, EWC, LwF and A-GEM.

Both loops give bit-identical results (tests/methods_test.py); alternating
repetitions, the median reported.

    python benchmarks/loops.py [--reps 3] [--update]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from _timing import add_output_args, interleaved_medians, repeat, write
from cljax import data, methods, models, train
from cljax.bench import method_state

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


def parts(res) -> tuple[float, float]:
  """Training and per-task evaluation time of a run, compilation
  excluded."""
  t = res["timings"]
  return sum(t["train_s"]), sum(t["eval_s"])


def eval_forward_s(st, model, reps: int, batch: int = 1000) -> float:
  """The arithmetic of the stream's evaluations: one jitted pass of the
  model's forward over every task's test examples, in batches of the
  evaluator's size (``run_stream``'s ``eval_batch_size``) under
  ``lax.map``, with nothing else (no masks, no accuracy bookkeeping);
  median of ``reps``, times the number of evaluations (one after each
  task)."""
  x = np.concatenate([task.test.x for task in st.tasks])
  pad = -len(x) % batch
  x = jnp.asarray(np.concatenate([x, np.zeros((pad, *x.shape[1:]),
                                              x.dtype)]))
  x = x.reshape(-1, batch, *x.shape[1:])
  fwd = jax.jit(lambda p, x: jax.lax.map(lambda b: jnp.argmax(
      model.apply(p, model.batch_stats, b)[0][0], -1), x))
  ms = interleaved_medians({"fwd": repeat(fwd, model.params, x)},
                           blocks=reps, reps=1, warmup=1)["fwd"]["median_ms"]
  return st.num_tasks * ms / 1e3


def bare_scan_ms(st, name, hidden, batch, lr, reps):
  """Median ms per step of ``lax.scan`` over one epoch of task 1's batches
  already on the device, of the method's step after task 0."""
  method = methods.build_method(name)
  model = models.build_model("mlp", st.input_shape, st.num_classes,
                             hidden=hidden)
  step, state = method_state(method, model, st, optax.sgd(lr), 1)
  split = st.tasks[1].train
  n = len(split) // batch
  xs = {k: jnp.asarray(getattr(split, k)[:n * batch]).reshape(
      n, batch, *getattr(split, k).shape[1:]) for k in "xyt"}
  key = jax.random.key(0)
  scan = jax.jit(lambda s, b: jax.lax.scan(lambda c, x: step(c, x, key), s,
                                           b), donate_argnums=0)
  state, _ = scan(state, xs)  # compile
  jax.block_until_ready(state)
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    state, _ = scan(state, xs)
    jax.block_until_ready(state)
    times.append((time.perf_counter() - t0) / n)
  return 1e3 * float(np.median(times))


def stream_vs_scan(ds, reps):
  spec = STREAMS["split"]
  st = stream(ds, spec)
  out = {}
  for name in ("finetune", "ewc", "lwf", "agem", "gem"):
    per_step = []
    for _ in range(reps):
      model = models.build_model("mlp", st.input_shape, st.num_classes,
                                 hidden=spec["hidden"])
      res = train.run_stream(st, methods.build_method(name), model,
                             optax.sgd(spec["lr"]), epochs=1,
                             batch_size=spec["batch"], progress=False,
                             loop="scan")
      per_step.append(1e3 * sum(res["timings"]["train_s"]) / res["steps"])
    stream_ms = float(np.median(per_step))
    bare = bare_scan_ms(st, name, spec["hidden"], spec["batch"], spec["lr"],
                        max(reps, 5))
    out[name] = {"stream_ms_per_step": stream_ms, "bare_scan_ms": bare,
                 "ratio": stream_ms / bare}
    print(f"split stream {name:<9} {stream_ms:7.3f} ms/step over the stream,"
          f" bare scan {bare:7.3f} ms: {stream_ms / bare:5.2f}x")
  return out


def main():
  ap = argparse.ArgumentParser()
  add_output_args(ap)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--only", choices=("loops", "stream_vs_scan"))
  args = ap.parse_args()
  ds = data.load_fashion_mnist()
  results = {}
  if args.only != "loops":
    results["stream_vs_scan"] = stream_vs_scan(ds, args.reps)
  if args.only == "stream_vs_scan":
    write("loops", {"reps": args.reps, "results": results}, args)
    return
  for name, spec in STREAMS.items():
    st = stream(ds, spec)
    model = models.build_model("mlp", st.input_shape, st.num_classes,
                               hidden=spec["hidden"])
    forward = eval_forward_s(st, model, max(args.reps, 5))
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
          times[loop].append(parts(res))
      # Medians of the totals; of training and evaluation apart beside.
      h, s = (float(np.median(np.sum(times[k], axis=1)))
              for k in ("host", "scan"))
      (ht, he), (st_, se) = (np.median(times[k], axis=0).tolist()
                             for k in ("host", "scan"))
      results[f"{name}/{method}"] = {
          "host_s": h, "scan_s": s, "speedup": h / s,
          "host_train_s": ht, "host_eval_s": he, "scan_train_s": st_,
          "scan_eval_s": se, "eval_forward_s": forward,
          # The speed-up if the scan loop's evaluation cost only its
          # forward passes.
          "speedup_forward_only": h / (st_ + forward)}
      print(f"{name:<14}{method:<10} host {h:6.2f} s (train {ht:5.2f}, "
            f"eval {he:5.2f})  scan {s:6.2f} s (train {st_:5.2f}, eval "
            f"{se:5.2f}; forward passes {forward:5.2f})  {h / s:5.2f}x; "
            f"forward passes only {h / (st_ + forward):5.2f}x")
  write("loops", {"reps": args.reps, "results": results}, args)


if __name__ == "__main__":
  main()
