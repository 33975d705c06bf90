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


def _tables(text: str) -> list[str]:
  """The markdown tables of ``text``, each as its block of ``|`` lines."""
  blocks, block = [], []
  for line in text.splitlines() + [""]:
    if line.startswith("|"):
      block.append(line)
    elif block:
      blocks.append("\n".join(block))
      block = []
  return blocks


def test_readme_tables_are_the_committed_results():
  # The README copies the three-scenarios tables that
  # experiments/tables/three_scenarios.py builds; a copy that drifted showed
  # numbers of entries no longer chosen.
  readme = open(README).read()
  path = os.path.join(os.path.dirname(README), "experiments", "results",
                      "three_scenarios.md")
  tables = _tables(open(path).read())
  assert len(tables) == 2  # split, permuted
  for table in tables:
    assert table in readme, f"not in the README:\n{table}"
