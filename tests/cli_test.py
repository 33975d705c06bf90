"""The command line as a newcomer uses it."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

from cljax import cli, experiment
from cljax.methods import METHODS, hyperparameters

from conftest import needs_fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, cwd=None, env=None):
  return subprocess.run([sys.executable, "-m", "cljax.cli", *args],
                        capture_output=True, text=True, timeout=600, cwd=cwd,
                        env=env)


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["run", "--help"],
                                  ["run", "-h"], ["--version"]])
def test_help_and_version_exit_zero(args):
  out = _cli(*args)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip()
  if args[0] == "run":
    assert "config.train.lr = 0.05" in out.stdout  # the keys, with values
    assert "config.method.ewc.lam = 100.0" in out.stdout


def test_output_piped_into_a_closed_pipe_is_not_an_error():
  # `cljax run --help | head` ended in a BrokenPipeError traceback, exit 1
  # (its 300-odd lines outlast the reader; this test fails without the fix).
  proc = subprocess.Popen([sys.executable, "-m", "cljax.cli", "run", "--help"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  proc.stdout.readline()
  proc.stdout.close()  # as head does after its lines
  err = proc.stderr.read().decode()
  assert proc.wait(timeout=120) == 0, err
  assert "Traceback" not in err, err


def test_list_everything_from_the_code():
  out = _cli("list")
  assert out.returncode == 0, out.stderr
  for name, cls in METHODS.items():
    assert f"\n  {name}\n" in out.stdout
    for key, value in hyperparameters(cls).items():
      assert f"{key}={value!r}" in out.stdout
  for word in ("resnet32", "fashion_mnist", "permuted",
               "split_fashion_mnist.py"):
    assert word in out.stdout
  bad = _cli("list", "recipes")
  assert bad.returncode == 2 and "one of methods" in bad.stderr


def test_hyperparameters_come_from_the_constructors():
  assert hyperparameters(METHODS["online_ewc"])["gamma"] == 1.0
  assert hyperparameters(METHODS["online_ewc"])["fisher_samples"] == 1024
  assert hyperparameters(METHODS["joint"]) == {}


def test_any_hyperparameter_from_the_command_line():
  # --config.method.ewc.lam=10 used to end in a KeyError traceback.
  config = cli.load_config(["--config.methods=ewc",
                            "--config.method.ewc.lam=10",
                            "--config.method.ewc.lr=0.01"])
  e, = experiment.run_entries(config)
  assert (e.name, e.kind, e.hparams["lam"], e.lr) == ("ewc", "ewc", 10.0, 0.01)
  assert e.hparams["fisher_samples"] == 1024  # the default
  assert e.epochs == config.train.epochs  # not overridden


def test_custom_method_by_import_path(tmp_path):
  pkg = tmp_path / "mylab"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  (pkg / "methods.py").write_text(textwrap.dedent('''
      import jax
      import jax.numpy as jnp
      from cljax.methods import Method, task_cross_entropy

      class HeadDecay(Method):
        """Fine-tuning plus a penalty on the head's weights."""
        name = "head_decay"

        def __init__(self, alpha: float = 0.01):
          self.alpha = alpha

        def loss_fn(self, model):
          def loss(params, batch_stats, method_state, batch, masks, rng):
            ce, _, stats = task_cross_entropy(model, params, batch_stats,
                                              batch, masks)
            reg = self.alpha * sum(jnp.sum(w ** 2)
                                   for w in jax.tree.leaves(params["head"]))
            return ce + reg, ({"ce": ce, "reg": reg}, stats)
          return loss
      '''))
  out = _cli("run", "--config.methods=mylab.methods:HeadDecay",
             "--config.train.epochs=1", "--config.progress=False",
             "--config.scenario.num_tasks=2", f"--config.workdir={tmp_path}/w",
             cwd=str(tmp_path))
  assert out.returncode == 0, out.stderr
  res = json.load(open(tmp_path / "w" / "results.json"))
  assert res["runs"]["mylab.methods:HeadDecay"]["accuracy_matrix"]
  bad = _cli("run", "--config.methods=mylab.methods:Nope", cwd=str(tmp_path))
  assert bad.returncode == 2 and "cannot import" in bad.stderr


def _experiment_configs():
  return sorted(f for f in os.listdir(os.path.join(ROOT, "experiments"))
                if f.endswith(".py"))


@needs_fashion_mnist
@pytest.mark.parametrize("name", _experiment_configs())
def test_every_experiment_config_has_a_quick_variant(name, tmp_path):
  spec = importlib.util.spec_from_file_location(
      name[:-3], os.path.join(ROOT, "experiments", name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("runlocal")
  assert c.name.endswith("_runlocal")  # its own default workdir
  assert module.get_config().name != c.name
  if c.data.name.startswith("tfds:") and not c.data.data_dir:
    return  # needs a prepared dataset: run on a synthetic build elsewhere
  c.workdir = str(tmp_path / "w")
  c.progress = False
  experiment.validate(c)  # every entry's method builds
  # Runs its first two entries (each method is run on its own elsewhere;
  # all of them here cost minutes of the suite).
  c.methods = ",".join(c.methods.split(",")[:2])
  res = experiment.run_experiment(c)
  assert len(res["runs"]) == len(c.methods.split(","))
  assert all("diverged" not in r for r in res["runs"].values())


@pytest.mark.parametrize("body,match", [
    ('def get_config(arg=None):\n  raise ValueError("boom: bad arg")\n',
     "get_config raised ValueError: boom: bad arg"),
    ("def get_config(arg=None)\n  return 1\n", ", line 1: expected ':'"),
    ("x = 1\n", "defines no get_config()"),
    ("def get_config(arg=None):\n  return 5\n",
     "get_config returned a int, not an ml_collections ConfigDict"),
])
def test_broken_config_files_are_one_line(tmp_path, body, match):
  (tmp_path / "cfg.py").write_text(body)
  out = _cli("run", "--config", str(tmp_path / "cfg.py"))
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [out.stderr.strip()], out.stderr
  assert match in out.stderr


def test_default_workdir_follows_the_settings():
  # Runs with other settings shared runs/<name> and overwrote each other.
  wd = lambda *a: cli.default_workdir(cli.load_config(list(a)), list(a))
  assert wd() == os.path.join("runs", "digits_class_incremental")
  a = wd("--config.methods=finetune,ewc", "--config.method.ewc.lam=10")
  b = wd("--config.methods=finetune,ewc", "--config.method.ewc.lam=1000")
  assert a != b and a.startswith(os.path.join("runs",
                                              "digits_class_incremental-"))
  assert wd("--config.method.ewc.lam=10", "--config.methods=finetune,ewc",
            "--config.progress=False", "--config.log.every=5") == a
  assert wd("--config.data.name=tfds:x") != wd()
  assert wd("--config.seeds=3") != wd()


def test_settings_of_entries_not_run_warn_and_keep_the_workdir(capsys):
  # They changed nothing but the workdir: everything retrained elsewhere.
  args = ["--config.method.ewc.lam=10", "--config.train.lr=0.01"]
  config = cli.load_config(args)
  kept = cli._without_unused_entries(config, args)
  assert kept == ["--config.train.lr=0.01"]
  assert ("config.method.ewc.lam is set, but config.methods "
          "('finetune,joint') has no entry 'ewc'") in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--config.methods=ewc", "--config.method.ewc.estimator=bogus"],
     "config.method.ewc: estimator must be one of"),
    (["--config.method.finetune.freeze_backbone=maybe"],
     "freeze_backbone=maybe: must be True or False, got 'maybe'"),
    (["--methods=finetune"], "config keys are set as --config.methods=VALUE"),
    (["--config.methods=finetun"], "did you mean 'finetune'?"),
])
def test_bad_settings_are_one_line_naming_the_key(args, message, capsys):
  assert cli._main(["run", *args]) == 2
  err = capsys.readouterr().err.strip()
  assert err.splitlines() == [err] and message in err, err


def test_import_path_keys_on_the_command_line_say_what_to_do():
  out = _cli("run", "--config.methods=mylab.m:X",
             "--config.method.mylab.m:X.lam=2")
  assert out.returncode == 2
  assert "takes its hyperparameters from a config file entry" in out.stderr


def test_a_new_sweep_entry_on_the_command_line_says_how_to_make_one():
  out = _cli("run", "--config.methods=ewc__a",
             "--config.method.ewc__a.kind=ewc")
  assert out.returncode == 2
  assert "config.method[\"ewc__a\"] = method_entry(" in out.stderr


def test_listed_commands_stay_on_one_line():
  text = cli.list_text("configs")
  runs = [line.strip() for line in text.splitlines()
          if line.strip().startswith("cljax run")]
  assert runs and all(" --config " in r for r in runs)  # arg kept with it
