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


def _launch(nproc: int, workdir: str, crash_after: int = 0,
            extra: tuple = ()) -> list:
  """Runs ``multihost_check.py`` as ``nproc`` processes (``extra``: its
  further arguments); their outputs."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
  port = str(_free_port())
  procs = [subprocess.Popen(
      [sys.executable, SCRIPT, str(p), str(nproc), port, workdir,
       str(crash_after), *extra], env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for p in range(nproc)]
  try:
    return [(p.communicate(timeout=600)[0], p.returncode) for p in procs]
  except subprocess.TimeoutExpired:  # every process's output, to see why
    for p in procs:
      p.kill()
    outs = [p.communicate()[0] for p in procs]
    pytest.fail("a process hung; their outputs:\n" + "\n----\n".join(
        o[-3000:] for o in outs))
  finally:  # none left running, whatever happened
    for p in procs:
      if p.poll() is None:
        p.kill()


def _matrices(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    runs = json.load(f)["runs"]
  bad = {m: r["diverged"] for m, r in runs.items() if "diverged" in r}
  assert not bad, bad
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
  _same_params(tmp_path)
  # Process 0 alone prints (and writes the workdir's files and lock).
  assert "accuracy %" in out0 and "accuracy %" not in out1
  listing = lambda d: sorted(
      os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d)
      for f in fs if "checkpoints" not in r and "tensorboard" not in r)
  assert listing(two) == listing(one)


def _same_params(tmp_path, atol=1e-5):
  """Process 0's final parameters and BatchNorm statistics of each entry
  equal the one process's."""
  a = np.load(str(tmp_path / "one" / "params-1procs.npz"))
  b = np.load(str(tmp_path / "two" / "params-2procs.npz"))
  assert sorted(a.files) == sorted(b.files)
  for k in a.files:
    np.testing.assert_allclose(b[k], a[k], atol=atol, err_msg=k)


# Every family beside the default test's (per-step state, distillation,
# bias correction, iCaRL's herding and nearest mean, DER++, cosine
# classifier, generative replay) on the MLP.
FAMILIES = {
    "mlp": ("--config.methods=si,lwf,derpp,icarl,bic,ucir,dgr",
            "--config.method.derpp.memory_size=60",
            "--config.method.icarl.memory_size=60",
            "--config.method.bic.memory_size=100",
            "--config.method.ucir.memory_size=60",
            # (replayed rows split over the 4 devices)
            "--config.method.icarl.replay_size=8",
            "--config.method.bic.replay_size=8",
            "--config.method.ucir.replay_size=8"),
}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(FAMILIES))
def test_every_family_trains_across_two_processes_as_one(tmp_path, model):
  """2 processes x 2 devices = 1 process x 4 devices (accuracy matrices,
  final parameters) for the families the default test leaves out."""
  extra = FAMILIES[model]
  one = str(tmp_path / "one" / "run")
  two = str(tmp_path / "two" / "run")
  [(out, code)] = _launch(1, one, extra=extra)
  assert code == 0, out[-3000:]
  (out0, code0), (out1, code1) = _launch(2, two, extra=extra)
  assert code0 == 0 and code1 == 0, out0[-3000:] + out1[-3000:]
  want = extra[0].split("=")[1].split(",")
  assert sorted(_matrices(one)) == sorted(want)
  for entry, matrix in _matrices(one).items():
    np.testing.assert_allclose(_matrices(two)[entry], matrix, atol=0.01,
                               err_msg=entry)
  _same_params(tmp_path, atol=1e-4)


@pytest.mark.slow
def test_batch_norm_steps_across_two_processes_as_one(tmp_path):
  """A BatchNorm ResNet's synchronised data-parallel steps on 2 processes x
  2 devices give 1 process x 4 devices' parameters and statistics."""
  script = os.path.join(os.path.dirname(__file__), "multihost_bn_check.py")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  port = str(_free_port())
  outs = {n: str(tmp_path / f"bn{n}.npz") for n in (1, 2)}
  for n in (1, 2):
    procs = [subprocess.Popen([sys.executable, script, str(p), str(n), port,
                               outs[n]], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for p in range(n)]
    for p in procs:
      out = p.communicate(timeout=600)[0]
      assert p.returncode == 0, out[-3000:]
  a, b = np.load(outs[1]), np.load(outs[2])
  for k in a.files:
    np.testing.assert_allclose(b[k], a[k], atol=1e-5, err_msg=k)


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
