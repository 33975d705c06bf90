"""What the table scripts share: where results live, and writing a table."""

import os

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "results")


def write(name: str, lines: list[str]) -> str:
  """Writes ``lines`` to ``experiments/results/<name>``, prints them and
  the path; returns the path."""
  path = os.path.join(RESULTS, name)
  with open(path, "w") as f:
    f.write("\n".join(lines))
  print("\n".join(lines))
  print(f"written: {path}")
  return path
