"""Run by distributed_test.py: one process of a ``cljax run`` on 4 simulated
CPU devices in all (``jax.distributed`` over localhost when there are 2
processes). (Not collected by pytest: no test_ prefix.)

  python multihost_check.py PROCESS_ID NUM_PROCESSES PORT WORKDIR CRASH_AFTER
                            [--config.KEY=VALUE ...]

CRASH_AFTER > 0 kills the process right after its CRASH_AFTER-th checkpoint
save (what a kill at that moment leaves). Process 0 saves each entry's final
parameters to WORKDIR/../params-<n>procs.npz. Further arguments replace the
run's settings of the same key (e.g. other methods, another model).
"""

import faulthandler
import os
import sys

pid, nproc, port, workdir, crash_after = (
    int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4],
    int(sys.argv[5]))
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_"
                           f"host_platform_device_count={4 // nproc}")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cljax import cli, train  # noqa: E402
from cljax.train import _checkpoint  # noqa: E402

# A hang (seen about once in ten full-suite runs, in the crash phase) shows
# where each process waits: every thread's traceback, before the test's
# 600 s timeout kills it, and a line per checkpoint saved.
faulthandler.dump_traceback_later(540, exit=False)
saves = [0]
save = _checkpoint.Checkpoints.save


def crashing_save(self, items, record):
  step = save(self, items, record)
  saves[0] += 1
  print(f"process {pid}: checkpoint {saves[0]} saved", flush=True)
  if saves[0] == crash_after:
    # Both at once: a process that left while the other was still inside
    # the save's last collective would leave that one waiting forever.
    if nproc > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("crash")
    os._exit(3)
  return step


_checkpoint.Checkpoints.save = crashing_save
params = {}
run_stream = train.run_stream


def keeping_run_stream(stream, method, *args, **kwargs):
  res = run_stream(stream, method, *args, **kwargs)
  params[method.name] = jax.device_get((res["final_state"].params,
                                       res["final_state"].batch_stats))
  return res


train.run_stream = keeping_run_stream
args = ["--config.data.name=digits", "--config.scenario.num_tasks=3",
        "--config.scenario.task_sizes=4,3,3",
        "--config.methods=finetune,ewc,er,gem", "--config.model.hidden=16",
        "--config.train.epochs=1", "--config.train.batch_size=32",
        "--config.train.loop=host", "--config.checkpoint_every=20",
        "--config.method.er.memory_size=60",
        "--config.method.gem.memory_size=30", "--config.parallel.data=0",
        "--config.progress=False", f"--config.workdir={workdir}"]
for extra in sys.argv[6:]:  # replaces the setting of the same key
  key = extra.split("=")[0] + "="
  args = [a for a in args if not a.startswith(key)] + [extra]
if nproc > 1:
  args += ["--config.distributed=True",
           f"--config.cluster.coordinator_address=localhost:{port}",
           f"--config.cluster.num_processes={nproc}",
           f"--config.cluster.process_id={pid}"]
code = cli._run(args)  # as `cljax run`, errors with their traceback
assert jax.device_count() == 4 and jax.process_count() == nproc
if pid == 0:
  np.savez(os.path.join(os.path.dirname(workdir), f"params-{nproc}procs.npz"),
           **{f"{m}/{i}": leaf for m, p in params.items()
              for i, leaf in enumerate(jax.tree.leaves(p))})
sys.exit(code)
