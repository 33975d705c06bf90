"""Data-parallel step time on 1, 2 and 4 devices (``train.data_parallel``,
``shard_map`` over a ``jax.make_mesh`` mesh, cross-replica BatchNorm), the
global batch fixed, for fine-tuning on the MLP 784-400-400-10 (batch 128)
and ResNet-32 (batch 64, BatchNorm synchronised). Interleaved blocks, the
median per step, and each count's ratio to one device, in one run.

On a CPU the devices are simulated (``--xla_force_host_platform_device_count``,
set here before JAX starts) and share the machine's cores, so this measures
the collectives' and sharding's overhead, not a speed-up; on a multi-device
accelerator host the same script measures the scaling.

    python benchmarks/scaling.py [--devices 1,2,4 --blocks 10 --steps 5]
                                 [--update]
"""

from __future__ import annotations

import argparse
import os

if "--xla_force_host_platform_device_count" not in os.environ.get(
    "XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=4")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from _timing import add_output_args, interleaved_medians, write  # noqa: E402
from cljax import methods, models, train  # noqa: E402
from cljax.bench import train_steps  # noqa: E402

MODELS = {"mlp": ((28, 28, 1), 128), "resnet32": ((32, 32, 3), 64)}


def main():
  ap = argparse.ArgumentParser()
  add_output_args(ap)
  ap.add_argument("--devices", default="1,2,4")
  ap.add_argument("--blocks", type=int, default=10)
  ap.add_argument("--steps", type=int, default=5)
  args = ap.parse_args()
  counts = [int(n) for n in args.devices.split(",")]
  if max(counts) > jax.device_count():
    raise SystemExit(f"{max(counts)} devices asked for, "
                     f"{jax.device_count()} present")
  results = {}
  for name, (shape, batch_size) in MODELS.items():
    model = models.build_model(name, shape, 10)
    method, opt = methods.FineTune(), optax.sgd(0.05, momentum=0.9)
    o = method.optimizer(opt, model.params)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(batch_size, *shape)).astype(np.float32),
             "y": rng.integers(0, 10, batch_size).astype(np.int32),
             "t": np.zeros(batch_size, np.int32)}
    runners = {}
    for n in counts:
      state = train.init_train_state(model.params, model.batch_stats, o, (),
                                     np.ones((1, 10), bool))
      if n == 1:
        step = jax.jit(train.make_train_step(method.loss_fn(model), o),
                       donate_argnums=0)
      else:
        step = train.data_parallel(
            train.make_train_step(method.loss_fn(model), o,
                                  axis_name="data"),
            jax.make_mesh((n,), ("data",), devices=jax.devices()[:n]))
      runners[n] = train_steps(step, state, batch)
    t = interleaved_medians(runners, blocks=args.blocks, reps=args.steps)
    base = t[counts[0]]["median_ms"]
    results[name] = {str(n): {**t[n], "ratio_to_1": t[n]["median_ms"] / base}
                     for n in counts}
    print(name, "  ".join(f"{n} dev {t[n]['median_ms']:.2f} ms "
                          f"({t[n]['median_ms'] / base:.2f}x)"
                          for n in counts))
  write("scaling", {"backend": jax.default_backend(),
                    "device": str(jax.devices()[0]),
                    "simulated": jax.default_backend() == "cpu",
                    "blocks": args.blocks, "steps_per_block": args.steps,
                    "results": results}, args)


if __name__ == "__main__":
  main()
