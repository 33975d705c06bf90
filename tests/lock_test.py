import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from cljax import train
from cljax.train import _lock


def test_second_holder_is_refused_with_the_holders_name(tmp_path):
  d = str(tmp_path / "w")
  with train.directory_lock(d):
    record = json.load(open(os.path.join(d, _lock.LOCK_FILE)))
    assert record["pid"] == os.getpid()
    with pytest.raises(train.LockedError, match=rf"{d} is in use by another "
                       rf"run: pid {os.getpid()} on host "
                       rf"{socket.gethostname()}"):
      with train.directory_lock(d):
        pass
  assert not os.path.exists(os.path.join(d, _lock.LOCK_FILE))
  with train.directory_lock(d):  # free again
    pass


def _holder(d):
  p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
      import sys
      from cljax.train import _lock
      with _lock.directory_lock({d!r}):
        print("held", flush=True)
        sys.stdin.readline()
      """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  assert p.stdout.readline().strip() == "held"
  return p


def test_lock_held_by_another_process(tmp_path):
  d = str(tmp_path / "w")
  holder = _holder(d)
  try:
    with pytest.raises(train.LockedError, match=rf"pid {holder.pid}"):
      with train.directory_lock(d):
        pass
  finally:
    holder.communicate("\n", timeout=60)
  with train.directory_lock(d):
    pass


def test_lock_of_a_killed_process_is_free(tmp_path):
  d = str(tmp_path / "w")
  holder = _holder(d)
  holder.kill()
  holder.wait(timeout=60)
  with pytest.warns(UserWarning, match=rf"stale lock of pid {holder.pid}"):
    with train.directory_lock(d):
      pass


def test_stale_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path):
  d = tmp_path / "w"
  d.mkdir()
  # What a run killed with SIGKILL leaves: the file, but no flock on it.
  (d / _lock.LOCK_FILE).write_text(json.dumps(
      {"pid": 999999, "host": "elsewhere", "since": 0}))
  with pytest.warns(UserWarning, match="taking over a stale lock of pid "
                    "999999 on host elsewhere"):
    with train.directory_lock(str(d)):
      assert json.load(open(d / _lock.LOCK_FILE))["pid"] == os.getpid()
