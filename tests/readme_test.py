"""Every ```python block of the README runs, in order, in one namespace (a
later block may use what an earlier one defined), so the README cannot rot."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "README.md")


def _blocks():
  text = open(README).read()
  return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_readme_has_python_examples():
  assert len(_blocks()) >= 4


def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  namespace = {"__name__": "readme"}
  for i, block in enumerate(_blocks()):
    try:
      exec(compile(block, f"README.md python block {i + 1}", "exec"),
           namespace)
    except Exception as e:  # noqa: BLE001 - name the block that failed
      pytest.fail(f"README python block {i + 1} failed: {e!r}\n{block}")
  out = capsys.readouterr().out
  assert "ce" in out  # the train step's loss terms were printed
