import json
import os
import subprocess
import sys

import pytest

from cljax import experiment
from cljax.default_config import get_config


def _config(tmp_path, **train):
  c = get_config("runlocal")
  c.workdir = str(tmp_path / "run")
  c.progress = False
  c.train.update(train)
  return c


@pytest.mark.parametrize("key,value,match", [
    ("methods", "finetune,nonsense", "unknown method 'nonsense'"),
    ("train.lr", -0.1, "train.lr"),
    ("train.epochs", 0, "train.epochs"),
    ("scenario.class_order", (0, 1, 2, 3, 4, 5, 6, 7, 8, 8), "class_order"),
    ("scenario.kind", "cyclic", "scenario.kind"),
    ("model.name", "vit", "model.name"),
    ("train.optimizer", "lion", "train.optimizer"),
])
def test_bad_config_rejected_before_training(tmp_path, key, value, match):
  c = _config(tmp_path)
  node, leaf = c, key.split(".")
  for k in leaf[:-1]:
    node = node[k]
  node[leaf[-1]] = value
  with pytest.raises(ValueError, match=match):
    experiment.run_experiment(c)
  assert not os.path.exists(os.path.join(c.workdir, "results.json"))


def test_bad_method_hyperparameters(tmp_path):
  c = _config(tmp_path)
  c.method.finetune.unknown_knob = 3
  with pytest.raises(ValueError, match="finetune"):
    experiment.run_experiment(c)


def test_run_writes_results_and_plots(tmp_path, capsys):
  c = _config(tmp_path, epochs=2)
  res = experiment.run_experiment(c)
  out = capsys.readouterr().out
  assert "ACC" in out and "results:" in out
  files = os.listdir(c.workdir)
  for f in ("results.json", "accuracy_finetune.png", "accuracy_joint.png",
            "curves.png", "over_tasks.png"):
    assert f in files
  with open(os.path.join(c.workdir, "results.json")) as f:
    saved = json.load(f)
  assert saved["runs"].keys() == {"finetune", "joint"}
  r = saved["runs"]
  # Real forgetting on the real digits stream: joint far above fine-tuning.
  assert r["joint"]["metrics"]["average_accuracy"] > 0.8
  assert r["finetune"]["metrics"]["average_accuracy"] < 0.5
  assert r["finetune"]["curves"] and saved["versions"]["jax"]
  assert res["runs"]["joint"]["accuracy_matrix"] == r["joint"]["accuracy_matrix"]


def test_entry_with_own_lr(tmp_path):
  c = _config(tmp_path)
  c.methods = "finetune_low"
  c.method.finetune_low = {"kind": "finetune", "lr": 0.005}
  res = experiment.run_experiment(c)
  assert res["runs"]["finetune_low"]["lr"] == 0.005


def test_sweep_selection_on_validation_and_diverged_entries(tmp_path):
  # Entries of one family compete on validation; a diverging one (lr 1e6)
  # is recorded, not fatal; task 1 runs at first_task_lr for every entry.
  c = _config(tmp_path, first_task_lr=0.05)
  c.scenario.num_tasks = 2
  c.methods = "ft__a,ft__b,ft__nan"
  for name, lr in (("ft__a", 0.05), ("ft__b", 1e-4), ("ft__nan", 1e6)):
    c.method[name] = {"kind": "finetune", "lr": lr}
  res = experiment.run_experiment(c)
  runs = res["runs"]
  assert "diverged" in runs["ft__nan"]
  assert runs["ft__a"]["accuracy_matrix"][0] == \
      runs["ft__b"]["accuracy_matrix"][0]  # same first task
  sel = res["selection"]["ft"]
  vals = {e: sum(runs[e]["val_accuracy_matrix"][-1]) / 2
          for e in ("ft__a", "ft__b")}
  assert sel["entry"] == max(vals, key=vals.get)
  assert os.path.exists(os.path.join(c.workdir, "selection.md"))
  with pytest.raises(ValueError, match="first_task_lr"):
    experiment.run_experiment(_config(tmp_path, first_task_lr=-1.0))


def test_cli_usage_and_error():
  run = lambda *a: subprocess.run([sys.executable, "-m", "cljax.cli", *a],
                                  capture_output=True, text=True, timeout=300)
  out = run("train")
  assert out.returncode == 2 and "usage: cljax run" in out.stderr
  out = run("run", "--config.train.lr=-1")
  assert out.returncode == 2 and "config.train.lr" in out.stderr
