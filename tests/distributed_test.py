"""Multi-process runs on jax.distributed: two processes on localhost (2
simulated CPU devices each, gloo collectives) train as one process with 4
devices, and resume after both are killed mid-stream."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from cljax import experiment, train
from cljax.default_config import get_config

SCRIPT = os.path.join(os.path.dirname(__file__), "multihost_check.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(nproc: int, workdir: str, crash_after: int = 0) -> list:
  """Runs ``multihost_check.py`` as ``nproc`` processes; their outputs."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  port = str(_free_port())
  procs = [subprocess.Popen(
      [sys.executable, SCRIPT, str(p), str(nproc), port, workdir,
       str(crash_after)], env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for p in range(nproc)]
  try:
    return [(p.communicate(timeout=600)[0], p.returncode) for p in procs]
  finally:  # none left running, whatever happened
    for p in procs:
      if p.poll() is None:
        p.kill()


def _matrices(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    runs = json.load(f)["runs"]
  return {m: r["accuracy_matrix"] for m, r in runs.items()}


def test_two_processes_train_as_one_and_resume_after_a_kill(tmp_path):
  one = str(tmp_path / "one" / "run")
  two = str(tmp_path / "two" / "run")
  [(out, code)] = _launch(1, one)
  assert code == 0, out[-3000:]
  # Both processes die right after their 6th checkpoint (inside the second
  # entry, EWC), then both are started again and resume.
  for (out, code) in _launch(2, two, crash_after=6):
    assert code == 3, out[-3000:]
  assert not os.path.exists(os.path.join(two, "results.json")) or set(
      _matrices(two)) == {"finetune"}
  (out0, code0), (out1, code1) = _launch(2, two)
  assert code0 == 0 and code1 == 0, out0[-3000:] + out1[-3000:]
  assert _matrices(two) == _matrices(one)
  assert set(_matrices(one)) == {"finetune", "ewc", "er", "gem"}
  a = np.load(str(tmp_path / "one" / "params-1procs.npz"))
  b = np.load(str(tmp_path / "two" / "params-2procs.npz"))
  assert sorted(a.files) == sorted(b.files)
  for k in a.files:
    np.testing.assert_allclose(b[k], a[k], atol=1e-5, err_msg=k)
  # Process 0 alone prints (and writes the workdir's files and lock).
  assert "accuracy %" in out0 and "accuracy %" not in out1
  listing = lambda d: sorted(
      os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d)
      for f in fs if "checkpoints" not in r and "tensorboard" not in r)
  assert listing(two) == listing(one)


def test_a_locked_workdir_stops_every_process(tmp_path):
  # Another run holds the workdir: process 0 cannot take the lock, and the
  # others learn it and stop too (none waits on a collective).
  workdir = str(tmp_path / "run")
  with train.directory_lock(workdir):
    outs = _launch(2, workdir)
  for out, code in outs:
    assert code != 0 and "LockedError" in out, out[-2000:]
  assert "in use by another run" in outs[0][0]


def test_cluster_keys_need_a_distributed_run():
  c = get_config()
  c.cluster.num_processes = 2
  with pytest.raises(ValueError, match="config.cluster: .*distributed=True"):
    experiment.validate(c)
  c.distributed = True
  c.cluster.process_id = -2
  with pytest.raises(ValueError, match="config.cluster.process_id"):
    experiment.validate(c)
