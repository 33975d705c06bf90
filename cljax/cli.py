"""Command line: ``cljax run [--config path/to/config.py[:arg]]
[--config.key=value ...]`` (absl flags + ml_collections config files)."""

from __future__ import annotations

import os
import sys

from absl import app
from absl import logging
from ml_collections import config_flags

_DEFAULT = os.path.join(os.path.dirname(__file__), "default_config.py")
_CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT, "Experiment config file (a get_config() per file); "
    "`path.py:arg` passes arg, e.g. `:runlocal`.", lock_config=True)

USAGE = """usage: cljax run [--config path/to/config.py[:arg]] [--config.key=value ...]

  With no arguments: a short class-incremental stream on the embedded
  digits data (fine-tuning vs joint training), about half a minute on 2 cores.
  Examples:
    cljax run --config experiments/split_fashion_mnist.py
    cljax run --config experiments/split_fashion_mnist.py:runlocal
    cljax run --config.train.lr=0.01 --config.methods=finetune
"""


def _main(argv):
  if len(argv) != 2 or argv[1] != "run":
    print(USAGE, file=sys.stderr)
    return 2
  logging.set_verbosity(logging.WARNING)
  from cljax.experiment import run_experiment
  try:
    run_experiment(_CONFIG.value)
  except (ValueError, FileNotFoundError) as e:
    print(f"cljax: error: {e}", file=sys.stderr)
    return 2
  return 0


def main():
  """Console entry point."""
  app.run(_main)


if __name__ == "__main__":
  main()
