"""``cljax bench``: every method's train step, per model and batch size,
against a hand-written JAX step and cljax's fine-tuning step of the same
model, timed in one interleaved run (and a plain PyTorch step with
``compare=True``).

Each method's step is the one ``run_stream`` jits, in the state it has after
its end-of-task hook ran for the first task (penalties and teachers active,
end-of-task memories filled with that task's exemplars; reservoir memories,
filled online, still empty; GEM with one past task), on a synthetic
class-incremental stream shaped like the model's usual data (``SHAPES``);
timings only, never accuracy. Per step: the median, 10th and 90th
percentile over blocks after warm-up (``block_until_ready`` ends each
block), steps/s, examples/s of the incoming batch, compile time (lowering
excluded), the compiled step's memory (arguments, outputs and temporaries,
from XLA's ``memory_analysis``), its FLOPs (``cost_analysis``) and the
ratios to the references. XLA counts every branch of a conditional and a
loop body once, so a step with either (every cljax step has the NaN check's
branch) gets ``flops_exact: false`` and no achieved FLOP/s; the hand-written
step's FLOP/s (and its fraction of a known card's peak) is exact.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax import data, methods, models
from cljax.bench._models import SHAPES, jax_step, torch_runner
from cljax.bench._timing import (interleaved_medians, machine, method_state,
                                 train_steps)

LR = 0.01
REFERENCES = ("jax (hand-written)", "pytorch")
# Dense TF32 tensor-core peaks (FLOP/s) of cards JAX runs float32 matmuls on
# (JAX's default matmul precision uses TF32 there), matched as whole words
# of the device kind, first match wins; the achieved fraction is reported
# against these where the card is known.
PEAK_FLOPS = (("H100 PCIe", 378e12), ("H100", 494.7e12), ("H200", 494.7e12),
              ("A100", 156e12), ("L40S", 183e12), ("L4", 60e12),
              ("A10", 62.5e12))


def peak_flops(device_kind: str) -> float | None:
  """The card's dense TF32 peak, if it is in ``PEAK_FLOPS``."""
  return next((v for k, v in PEAK_FLOPS
               if re.search(rf"\b{re.escape(k)}\b", device_kind)), None)


def default_models() -> tuple:
  """ResNet-32 is timed by default only on an accelerator (on 2 CPU cores a
  step takes about a second)."""
  if jax.default_backend() == "cpu":
    return ("mlp", "cnn")
  return tuple(SHAPES)


def synthetic_stream(model_name: str, per_task: int, seed: int = 0):
  """A class-incremental stream of Gaussian inputs shaped like
  ``model_name``'s usual data, ``per_task`` training examples per task."""
  shape, classes, tasks = SHAPES[model_name]
  rng = np.random.default_rng(seed)
  n = per_task * tasks
  y = np.repeat(np.arange(classes, dtype=np.int32), -(-n // classes))[:n]
  split = data.Split(rng.normal(size=(n, *shape)).astype(np.float32),
                     rng.permutation(y), np.zeros(n, np.int32))
  return data.class_splits(data.Dataset("synthetic", split, split, classes),
                           tasks)


def _compiled(fn, *args, donate=True):
  """``(compiled, compile_s, memory_bytes, flops, flops_exact)`` of
  ``jax.jit(fn)`` at ``args``."""
  lowered = jax.jit(fn, donate_argnums=0 if donate else ()).lower(*args)
  t0 = time.perf_counter()
  compiled = lowered.compile()
  seconds = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  memory = None if mem is None else int(
      mem.argument_size_in_bytes + mem.output_size_in_bytes
      + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  flops = (cost or {}).get("flops")
  hlo = compiled.as_text() or ""
  exact = not re.search(r"\b(conditional|while)\(", hlo)
  return (compiled, seconds, memory, None if flops is None else float(flops),
          exact)


def _jax_runner(model, batch):
  step, state = jax_step(model, LR)
  compiled, seconds, memory, flops, exact = _compiled(step, state,
                                                      batch["x"], batch["y"])
  box = [state]

  def run(n):
    s = box[0]
    for _ in range(n):
      s = compiled(s, batch["x"], batch["y"])
    jax.block_until_ready(s)
    box[0] = s

  return run, seconds, memory, flops, exact


def _method_runner(method, model, stream, batch):
  step, state = method_state(method, model, stream, optax.sgd(LR), 1)
  compiled, *info = _compiled(step, state, batch, jax.random.key(0))
  return train_steps(compiled, state, batch), *info


def bench_group(model_name: str, batch_size: int, method_names, *,
                blocks: int, steps: int, warmup: int, compare: bool,
                hidden=(400, 400), say=print) -> dict:
  """Times ``method_names`` and the references on one model and batch size.
  Returns ``{"rows": {name: row}, "skipped": {name: reason},
  "pytorch": its version, device and float32 matmul precision}``. A method
  that cannot run on the stream (its ``check``) is skipped with the reason;
  any other error is raised."""
  shape, classes, _ = SHAPES[model_name]
  model = models.build_model(model_name, shape, classes, hidden=hidden)
  # Tasks as large as the rehearsal methods' default memory (2,000): their
  # "union" replay (memory / task data) then draws as many examples as
  # ER's equal batch, so their steps compare on the same batch.
  stream = synthetic_stream(model_name, max(2000, batch_size))
  task = stream.tasks[1].train
  batch = {k: jnp.asarray(getattr(task, k)[:batch_size]) for k in "xyt"}
  runners, info, skipped, torch_info = {}, {}, {}, None
  run, *info[REFERENCES[0]] = _jax_runner(model, batch)
  runners[REFERENCES[0]] = run
  if compare:
    try:
      run, torch_info = torch_runner(
          model_name, shape, classes, hidden, np.asarray(batch["x"]),
          np.asarray(batch["y"]), LR, jax.default_backend())
      runners[REFERENCES[1]] = run
      info[REFERENCES[1]] = (None, None, None, False)
    except ImportError as e:
      skipped[REFERENCES[1]] = f"{e} (pip install -e \".[bench]\")"
    except RuntimeError as e:
      skipped[REFERENCES[1]] = str(e)
  for name in dict.fromkeys(("finetune", *method_names)):
    method = methods.build_method(name)
    try:
      method.check(stream)
    except ValueError as e:
      skipped[name] = str(e)
      say(f"  {model_name} batch {batch_size}: {name} skipped")
      continue
    own = model if method.head == "linear" else models.build_model(
        model_name, shape, classes, hidden=hidden, head=method.head)
    run, *info[name] = _method_runner(method, own, stream, batch)
    runners[name] = run
    say(f"  {model_name} batch {batch_size}: {name} compiled")
  t = interleaved_medians(runners, blocks=blocks, reps=steps, warmup=warmup)
  peak = peak_flops(jax.devices()[0].device_kind)
  ref, fine = t[REFERENCES[0]]["median_ms"], t["finetune"]["median_ms"]
  rows = {}
  for name, r in t.items():
    compile_s, memory, flops, exact = info[name]
    sec = r["median_ms"] / 1e3
    rate = flops / sec if flops is not None and exact else None
    rows[name] = {**r, "steps_per_s": 1 / sec,
                  "examples_per_s": batch_size / sec,
                  "compile_s": compile_s,
                  "step_memory_mib": (None if memory is None
                                      else memory / 2**20),
                  "flops": flops, "flops_exact": exact,
                  "tflops_per_s": None if rate is None else rate / 1e12,
                  "peak_fraction": (None if rate is None or peak is None
                                    else rate / peak),
                  "vs_jax": r["median_ms"] / ref,
                  "vs_finetune": r["median_ms"] / fine}
  return {"rows": rows, "skipped": skipped, "pytorch": torch_info}


def table(model_name: str, batch_size: int, group: dict) -> str:
  """The group's rows as an aligned text table."""
  out = [f"{model_name}, batch {batch_size}",
         f"{'step':<20}{'median ms':>10}{'p10':>9}{'p90':>9}{'steps/s':>9}"
         f"{'compile s':>10}{'mem MiB':>8}{'vs jax':>8}{'vs ft':>7}"]
  fmt = lambda v, spec: "-" if v is None else format(v, spec)
  for name, r in group["rows"].items():
    out.append(f"{name:<20}{r['median_ms']:10.3f}{r['p10_ms']:9.3f}"
               f"{r['p90_ms']:9.3f}{r['steps_per_s']:9.1f}"
               f"{fmt(r['compile_s'], '10.2f'):>10}"
               f"{fmt(r['step_memory_mib'], '8.1f'):>8}"
               f"{r['vs_jax']:7.2f}x{r['vs_finetune']:6.2f}x")
  out += [f"  skipped {k}: {v}" for k, v in group["skipped"].items()]
  if group.get("pytorch"):
    out.append("  pytorch: " + ", ".join(f"{k} {v}" for k, v in
                                          group["pytorch"].items()))
  jax_row = group["rows"]["jax (hand-written)"]
  if jax_row["tflops_per_s"] is not None:
    out.append(f"  hand-written step: {jax_row['tflops_per_s']:.3f} TFLOP/s"
               + ("" if jax_row["peak_fraction"] is None else
                  f", {100 * jax_row['peak_fraction']:.1f}% of the card's "
                  "dense TF32 peak"))
  return "\n".join(out)


def run_bench(method_names=None, model_names=None, batch_sizes=(128,), *,
              blocks: int = 10, steps: int = 10, warmup: int = 3,
              compare: bool = False, out_dir: str | None = "benchmarks/results",
              hidden=(400, 400)) -> dict:
  """Runs the whole bench; prints a table per model and batch size and, if
  ``out_dir``, writes ``<out_dir>/bench-<backend>-<date-time>.json``.
  Returns the JSON payload."""
  method_names = tuple(methods.METHODS if method_names is None
                       else method_names)
  model_names = tuple(default_models() if model_names is None
                      else model_names)
  for m in model_names:
    if m not in SHAPES:
      raise ValueError(f"bench: unknown model {m!r}; one of {sorted(SHAPES)}")
  for m in method_names:
    methods.method_class(m)
  if not (method_names and model_names and len(batch_sizes)):
    raise ValueError("bench: --methods, --models and --batch_sizes must "
                     "each name at least one")
  for name, v in (("blocks", blocks), ("steps", steps),
                  *(("batch size", b) for b in batch_sizes)):
    if int(v) != v or v < 1:
      raise ValueError(f"bench: {name} must be a positive integer, got {v!r}")
  if warmup < 0:
    raise ValueError(f"bench: warmup must be >= 0, got {warmup!r}")
  say = lambda msg: print(msg, file=sys.stderr, flush=True)
  say(f"cljax bench on {jax.devices()[0].device_kind} "
      f"({jax.default_backend()}): {len(method_names)} methods x "
      f"{model_names} x batch {tuple(batch_sizes)}")
  groups = []
  for model_name in model_names:
    for b in batch_sizes:
      g = bench_group(model_name, int(b), method_names, blocks=blocks,
                      steps=steps, warmup=warmup, compare=compare,
                      hidden=hidden, say=say)
      print(table(model_name, int(b), g) + "\n", flush=True)
      groups.append({"model": model_name, "batch_size": int(b), **g})
  payload = {"blocks": blocks, "steps_per_block": steps, "warmup": warmup,
             "lr": LR, "mlp_hidden": list(hidden), "groups": groups,
             "machine": machine()}
  if out_dir:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(out_dir, f"bench-{jax.default_backend()}-{stamp}.json")
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
      json.dump(payload, f, indent=1)
    print(f"written: {path}")
  return payload
