"""Metric writers and atomic replacement of result files."""

import os

import pytest

from cljax.report._writers import replace_atomically


def test_a_failed_replacement_keeps_the_old_file_and_leaves_no_tmp(tmp_path):
  # A write that failed (a full disk, a read-only results.json) left
  # results.json.tmp behind.
  path = str(tmp_path / "results.json")
  replace_atomically(path, lambda f: f.write("old"))

  def fail(f):
    f.write("half")
    raise OSError(28, "No space left on device")

  with pytest.raises(OSError, match="No space left"):
    replace_atomically(path, fail)
  assert open(path).read() == "old"
  assert os.listdir(tmp_path) == ["results.json"]
  replace_atomically(path, lambda f: f.write("new"))
  assert open(path).read() == "new"
