"""Run by distributed_test.py: one process of a synchronised-BatchNorm
ResNet trained for 3 steps, data parallel over 4 simulated CPU devices in
all (``jax.distributed`` over localhost when there are 2 processes). (Not
collected by pytest: no test_ prefix.)

  python multihost_bn_check.py PROCESS_ID NUM_PROCESSES PORT OUT

Process 0 writes the final parameters and BatchNorm statistics to OUT
(``.npz``).
"""

import os
import sys

pid, nproc, port, out = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                         sys.argv[4])
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_"
                           f"host_platform_device_count={4 // nproc}")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from cljax import methods, models, train  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
if nproc > 1:
  jax.distributed.initialize(f"localhost:{port}", nproc, pid)
devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
mesh = jax.sharding.Mesh(np.array(devices), ("data",))
model = models.functional(models.ResNet(3, 10, widths=(8, 16), blocks=(1, 1),
                                        shortcut="A", rngs=nnx.Rngs(0)))
opt = optax.sgd(0.05, momentum=0.9)
step = train.data_parallel(train.make_train_step(
    methods.FineTune().loss_fn(model), opt, axis_name="data"), mesh)
rng = np.random.default_rng(2)
state = train.init_train_state(model.params, model.batch_stats, opt, (),
                               np.ones((1, 10), bool))
share = step.process_share(16)  # this process's rows of each global batch
for _ in range(3):
  batch = {"x": rng.normal(size=(16, 8, 8, 3)).astype(np.float32),
           "y": rng.integers(0, 10, 16).astype(np.int32),
           "t": np.zeros(16, np.int32)}
  state, _ = step(state, {k: v[share] for k, v in batch.items()},
                  jax.random.key(0))
leaves = jax.tree.leaves(jax.device_get((state.params, state.batch_stats)))
if pid == 0:
  np.savez(out, *leaves)
