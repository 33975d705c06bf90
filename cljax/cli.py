"""Command line: ``cljax run [--config path/to/config.py[:arg]]
[--config.key=value ...]`` (ml_collections config files and overrides, as
in absl programs) and ``cljax list [what]``. Every error in the command
line, the config or the data is one line on stderr and exit status 2; a run
that produced no results, or a workdir in use, exits 1."""

from __future__ import annotations

import argparse
import ast
import difflib
import glob
import os
import re
import sys
import textwrap

USAGE = """usage: cljax run [--config path/to/config.py[:arg]] [--config.key=value ...]
       cljax list [methods|models|datasets|scenarios|configs]
       cljax bench [--methods=a,b] [--models=mlp,cnn,resnet32] [--batch_sizes=128] [--compare]
       cljax --help | --version

  cljax run    trains the configured methods on the configured stream and
               prints an accuracy table; with no arguments, a short
               class-incremental stream on the embedded digits data
               (fine-tuning vs joint training), about 15 s on 2 cores
               after the first import. `cljax run --help` lists the keys.
  cljax list   what there is to choose from: methods (with their
               hyperparameters and defaults), models, datasets, scenarios
               and the experiment configs.
  cljax bench  times every method's train step per model and batch size
               against a hand-written JAX step and the fine-tuning step
               (--compare: and a plain PyTorch step); prints a table, writes
               JSON to benchmarks/results/. `cljax bench --help` for options.
"""
LISTS = ("methods", "models", "datasets", "scenarios", "configs")

RUN_HELP = """usage: cljax run [--config path/to/config.py[:arg]] [--config.key=value ...]

  --config FILE[:ARG]  an ml_collections config file with get_config(arg)
                       (default: cljax/default_config.py; experiments in
                       experiments/*.py, e.g. experiments/split_fashion_mnist.py:runlocal)
  --config.KEY=VALUE   override any key of the config, e.g.
                       --config.train.lr=0.01 --config.methods=finetune,ewc

Examples:
  cljax run
  cljax run --config experiments/split_fashion_mnist.py:runlocal
  cljax run --config.train.lr=0.01 --config.methods=finetune

Keys of the chosen config (current values):
"""


class UsageError(ValueError):
  """A bad command line (one line, exit status 2)."""


def _config_file(args) -> str:
  """The ``--config`` value in ``args`` (default: the default config), after
  checking that its file loads and its ``get_config`` returns a config."""
  default = os.path.join(os.path.dirname(__file__), "default_config.py")
  for i, a in enumerate(args):
    m = re.fullmatch(r"--?config(?:=(.*))?", a)
    if m:
      value = m.group(1) if m.group(1) is not None else (
          args[i + 1] if i + 1 < len(args) else "")
      _check_config_file(value)
      return value
  return default


def _check_config_file(value: str) -> None:
  """One-line errors for a config file that is missing, does not load, has
  no ``get_config`` or whose ``get_config`` fails or returns no config."""
  import importlib.util
  import ml_collections
  path, sep, arg = value.partition(":")
  if not os.path.isfile(path):
    raise UsageError(f"--config: config file {path!r} not found")
  spec = importlib.util.spec_from_file_location("cljax_checked_config", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise UsageError(f"--config: {path}, line {e.lineno}: {e.msg}") from None
  except Exception as e:  # noqa: BLE001 - the user's file, any error
    raise UsageError(f"--config: {path} failed to load: "
                     f"{type(e).__name__}: {e}") from None
  if not callable(getattr(module, "get_config", None)):
    raise UsageError(f"--config: {path} defines no get_config()")
  try:
    config = module.get_config(arg) if sep else module.get_config()
  except Exception as e:  # noqa: BLE001
    raise UsageError(f"--config {value}: get_config raised "
                     f"{type(e).__name__}: {e}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise UsageError(f"--config {value}: get_config returned a "
                     f"{type(config).__name__}, not an ml_collections "
                     "ConfigDict")


def _flat_keys(config, prefix="config.") -> list[str]:
  out = []
  for k, v in config.items():
    if hasattr(v, "items"):
      out += _flat_keys(v, f"{prefix}{k}.")
    else:
      out.append(f"{prefix}{k}")
  return out


def _define(args):
  from absl import flags
  from ml_collections import config_flags
  values = flags.FlagValues()
  config_flags.DEFINE_config_file(
      "config", _config_file(args), "Experiment config file.",
      flag_values=values, lock_config=True, sys_argv=["cljax"] + args)
  return values


def load_config(args: list[str]):
  """The config that ``cljax run ARGS`` runs: ``--config`` (default: the
  default config) with every ``--config.key=value`` override applied.

  Raises:
    UsageError: a missing config file, an unknown key (naming the closest
      valid ones), a value of the wrong type, or an unknown flag.
  """
  from absl import flags
  for a in args:
    m = re.match(r"--?config\.method\.([^=]*:[^=.]*)\.", a)
    if m:  # a dotted import path cannot be a key path
      raise UsageError(
          f"{a.split('=')[0]}: a method named by import path takes its "
          "hyperparameters from a config file entry, e.g. config.method.mine "
          f"= method_entry({m.group(1)!r}, ...) and --config.methods=mine")
  try:  # overrides are applied when the flag is defined and when parsed
    values = _define(args)
    rest = values(["cljax"] + args)
  except flags.Error as e:
    raise UsageError(_flag_error(" ".join(str(e).split()))) from None
  except (AttributeError, KeyError) as e:
    raise UsageError(_unknown_key(args) or f"bad override: {e}") from None
  except OSError as e:
    raise UsageError(f"--config: could not load the config file: "
                     f"{str(e).splitlines()[-1].strip()}") from None
  if len(rest) > 1:
    raise UsageError(f"unexpected arguments {rest[1:]}")
  return values.config


def _flag_error(message: str) -> str:
  """absl's message for a bad flag, readable: a boolean's raw tuple as a
  sentence, and a config key given without ``config.`` pointed to it."""
  message = re.sub(r"\('Non-boolean argument to boolean flag', (.*)\)",
                   r"must be True or False, got \1", message)
  m = re.fullmatch(r"Unknown command line flag '(\w[\w.]*)'", message)
  if m:
    message += (f"; config keys are set as --config.{m.group(1)}=VALUE "
                "(cljax run --help lists them)")
  return message


def _unknown_key(args) -> str | None:
  """The message for the first override naming no key of the config."""
  base = [a for i, a in enumerate(args)
          if not re.match(r"--?(no)?config\.", a)]
  values = _define(base)
  values(["cljax"] + base)
  keys = _flat_keys(values.config)
  for a in args:
    m = re.match(r"--?(?:no)?(config\.[^=]+)", a)
    if m and m.group(1) not in keys:
      close = difflib.get_close_matches(m.group(1), keys, n=3, cutoff=0.6)
      hint = f"; closest: {', '.join(close)}" if close else ""
      entry = re.match(r"config\.method\.([^.]+__[^.]+)\.", m.group(1))
      if entry:  # a new family__variant entry: made in a config file
        hint = (f"; a new entry such as {entry.group(1)!r} is made in a "
                "config file: config.method[\"" + entry.group(1) +
                "\"] = method_entry(\"<method>\", ...) (see README, "
                "Hyperparameter sweeps)")
      return f"{m.group(1)}: no such key in the config{hint}"
  return None


def _run(args) -> int:
  if {"-h", "--help", "--helpshort", "--helpfull"} & set(args):
    config = load_config([a for a in args if not a.startswith("--help")
                          and a != "-h"])
    print(RUN_HELP + "\n".join(f"  {k} = {v!r}" for k, v in zip(
        _flat_keys(config), _leaf_values(config))))
    return 0
  # As `python -m` does: methods given by import path may live here.
  sys.path.insert(0, os.getcwd())
  config = load_config(args)
  from cljax.experiment import run_experiment, start_distributed, validate
  start_distributed(config)  # before anything touches a device
  validate(config)  # a bad value is the only line on stderr
  args = _without_unused_entries(config, args)
  if not config.workdir:
    with config.unlocked():
      config.workdir = default_workdir(config, args)
  print(f"workdir: {config.workdir}", file=sys.stderr)
  run_experiment(config)
  return 0


def _without_unused_entries(config, args) -> list[str]:
  """``args`` without the overrides of ``config.method`` entries that
  ``config.methods`` does not run (they change no result, so not the
  workdir either), each with a warning."""
  from cljax.experiment import run_entries
  names = {e.name for e in run_entries(config)}
  out = []
  for a in args:
    m = re.match(r"--?(?:no)?config\.method\.([^.=]+)\.", a)
    if m and m.group(1) not in names:
      print(f"cljax: warning: {a.split('=')[0].lstrip('-')} is set, but "
            f"config.methods ({config.methods!r}) has no entry "
            f"{m.group(1)!r}: it changes nothing", file=sys.stderr)
      continue
    out.append(a)
  return out


def default_workdir(config, args) -> str:
  """``runs/<config name>``, plus a digest of the command-line overrides
  that can change a result (a changed hyperparameter, dataset, method list
  or seed count gets a workdir of its own; the same command resumes in the
  same one)."""
  import hashlib
  from cljax.experiment import PRESENTATION_KEYS
  overrides = sorted(
      a for a in args if re.match(r"--?(no)?config\.", a) and not any(
          re.match(rf"--?(no)?config\.{re.escape(k)}(\.|=|$)", a)
          for k in PRESENTATION_KEYS if k != "seeds"))
  base = os.path.join("runs", config.name)
  if not overrides:
    return base
  return base + "-" + hashlib.sha256("\n".join(overrides).encode()
                                     ).hexdigest()[:8]


def _wrap(text: str, indent: int = 4) -> str:
  return textwrap.fill(text, 79, initial_indent=" " * indent,
                       subsequent_indent=" " * indent)


def _experiments_dir() -> str | None:
  """``experiments/`` of the source checkout cljax runs from, or of the
  current directory."""
  here = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                      "experiments")
  for d in (here, "experiments"):
    if os.path.isdir(d):
      return d
  return None


def list_text(what: str) -> str:
  """The text ``cljax list WHAT`` prints, made from the code itself."""
  if what == "methods":
    from cljax.methods import METHODS, description, hyperparameters
    out = ["methods (--config.methods=a,b; --config.method.<name>.<key>="
           "value; or a Method subclass by import path, "
           "package.module:Class):"]
    for name, cls in METHODS.items():
      hp = ", ".join(f"{k}={v!r}" for k, v in hyperparameters(cls).items())
      out += [f"  {name}", _wrap(description(cls)),
              _wrap(f"hyperparameters: {hp or 'none'}")]
    return "\n".join(out)
  if what == "models":
    from cljax.models import HEADS, MODELS
    return "\n".join([_entries("models (--config.model.name):", MODELS),
                      _entries("heads (--config.model.head; default: the "
                               "method's own):", HEADS)])
  if what == "scenarios":
    from cljax.data import SCENARIOS
    return _entries("scenarios (--config.scenario.kind):", SCENARIOS)
  if what == "datasets":
    from cljax.data import DEBIAN_FASHION_MNIST
    have = "installed" if os.path.isdir(DEBIAN_FASHION_MNIST) else (
        "not installed: apt-get install dataset-fashion-mnist")
    return _entries("datasets (--config.data.name):", {
        "digits": "scikit-learn's bundled 8x8 digits, 1,797 images, 10 "
                  "classes (always there)",
        "fashion_mnist": "28x28 Fashion-MNIST, 70,000 images, 10 classes: "
                         f"Debian's {DEBIAN_FASHION_MNIST} ({have}), a "
                         "directory of the four idx files "
                         "(--config.data.path=DIR), or a prepared tfds build "
                         "(--config.data.data_dir=DIR)",
        "tfds:<name>": "any image classification dataset prepared with "
                       "tensorflow-datasets in --config.data.data_dir=DIR"})
  directory = _experiments_dir()
  if directory is None:
    return "configs: no experiments/ directory here (they live in the " \
           "source repository)"
  configs = {}
  for path in sorted(glob.glob(os.path.join(directory, "*.py"))):
    doc = ast.get_docstring(ast.parse(open(path).read())) or ""
    runs = [" ".join(line.split()) for line in doc.replace("\\\n", " ")
            .splitlines() if line.strip().startswith("cljax run")]
    configs[os.path.basename(path)] = " ".join(
        doc.split("\n\n")[0].split()) + "".join(f"\n{r}" for r in runs)
  return _entries(f"configs (--config {directory}/<file>[:arg]):", configs)


def _entries(title: str, entries: dict) -> str:
  out = [title]
  for name, text in entries.items():
    # Commands stay on one line (copied and pasted whole).
    out += [f"  {name}"] + [f"      {line}" if line.startswith("cljax ")
                            else _wrap(line) for line in text.splitlines()]
  return "\n".join(out)


def _list(args) -> int:
  unknown = [a for a in args if a not in LISTS]
  if unknown:
    raise UsageError(f"cljax list: unknown {unknown[0]!r}; one of "
                     f"{', '.join(LISTS)}")
  print("\n\n".join(list_text(w) for w in args or LISTS))
  return 0


class _ArgumentParser(argparse.ArgumentParser):
  def error(self, message):
    raise UsageError(f"{self.prog}: {message}")


def _csv(text: str) -> list[str]:
  return [v for v in text.split(",") if v]


def integers(text: str) -> list[int]:
  """Comma-separated integers."""
  return [int(v) for v in _csv(text)]


def _bench(args) -> int:
  from cljax.bench import run_bench
  from cljax.bench._suite import default_models
  ap = _ArgumentParser(
      prog="cljax bench", description="Times every method's train step "
      "(median over blocks after warm-up) per model and batch size, against "
      "a hand-written JAX step and cljax's fine-tuning step of the same "
      "model, on synthetic data; prints a table per model and batch size and "
      "writes JSON to OUT_DIR/bench-<backend>-<date-time>.json.")
  ap.add_argument("--methods", type=_csv, default=None,
                  help="comma-separated method names (default: all)")
  ap.add_argument("--models", type=_csv, default=None,
                  help="comma-separated: mlp, cnn, resnet32 (default: "
                  f"{','.join(default_models())} on this backend)")
  ap.add_argument("--batch_sizes", type=integers,
                  default=[128], help="comma-separated (default: 128)")
  ap.add_argument("--blocks", type=int, default=10,
                  help="timed blocks per step (default: 10)")
  ap.add_argument("--steps", type=int, default=10,
                  help="steps per block (default: 10)")
  ap.add_argument("--warmup", type=int, default=3,
                  help="untimed blocks first (default: 3)")
  ap.add_argument("--compare", action="store_true",
                  help="also a plain PyTorch step (needs torch)")
  ap.add_argument("--out_dir", default=os.path.join("benchmarks", "results"),
                  help="where the JSON goes (default: benchmarks/results; "
                  "'' writes none)")
  a = ap.parse_args(args)
  run_bench(a.methods, a.models, a.batch_sizes, blocks=a.blocks,
            steps=a.steps, warmup=a.warmup, compare=a.compare,
            out_dir=a.out_dir or None)
  return 0


def _leaf_values(config) -> list:
  out = []
  for v in config.values():
    out += _leaf_values(v) if hasattr(v, "items") else [v]
  return out


def _main(argv: list[str]) -> int:
  from absl import flags, logging
  flags.FLAGS.mark_as_parsed()  # absl's own flags: defaults, no warning
  logging.set_verbosity(logging.WARNING)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(USAGE, file=sys.stdout if argv else sys.stderr)
    return 0 if argv else 2
  if argv[0] == "--version":
    import cljax
    print(f"cljax {cljax.__version__}")
    return 0
  if argv[0] in ("list", "bench"):
    try:
      return (_list if argv[0] == "list" else _bench)(argv[1:])
    except (UsageError, ValueError) as e:
      print(f"cljax: error: {e}", file=sys.stderr)
      return 2
  if argv[0] != "run":
    print(f"cljax: error: unknown command {argv[0]!r}\n\n{USAGE}",
          file=sys.stderr)
    return 2
  from cljax.experiment import NoResults
  from cljax.train import LockedError
  try:
    return _run(argv[1:])
  except KeyboardInterrupt:
    print("\ncljax: interrupted; rerun the same command to resume from the "
          "last checkpoint", file=sys.stderr)
    return 130
  except (ValueError, FileNotFoundError) as e:
    print(f"cljax: error: {e}", file=sys.stderr)
    return 2
  except (LockedError, NoResults) as e:
    print(f"cljax: error: {e}", file=sys.stderr)
    return 1
  except BrokenPipeError:  # output piped into a closed reader: main's
    raise
  except OSError as e:  # e.g. results.json made read-only mid-run
    print(f"cljax: error: {e}; the checkpoints written so far are kept: "
          "rerun the same command to resume", file=sys.stderr)
    return 1


def main():
  """Console entry point."""
  try:
    sys.exit(_main(sys.argv[1:]))
  except BrokenPipeError:  # e.g. ``cljax run --help | head``: not an error
    # Python flushes stdout at exit, to the closed pipe again: point it at
    # /dev/null first.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)


if __name__ == "__main__":
  main()
