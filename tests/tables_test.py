"""The committed result tables are what their scripts build from the
committed results (a table edited by hand, or left behind by a newer run,
fails here)."""

import importlib
import os
import sys

import pytest

TABLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "experiments", "tables")


@pytest.mark.parametrize("name", ["three_scenarios", "class_il"])
def test_committed_tables_are_rebuilt_exactly(name, monkeypatch):
  monkeypatch.syspath_prepend(TABLES)
  module = importlib.import_module(name)
  with open(os.path.join(module.RESULTS, f"{name}.md")) as f:
    committed = f.read()
  assert "\n".join(module.lines()) == committed, (
      f"experiments/results/{name}.md is stale: run "
      f"python experiments/tables/{name}.py")
