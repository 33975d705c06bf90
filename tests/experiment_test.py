import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from cljax import experiment, report, train
from cljax.default_config import get_config


def _config(tmp_path, **train):
  c = get_config("runlocal")
  c.workdir = str(tmp_path / "run")
  c.progress = False
  c.train.update(train)
  return c


@pytest.mark.parametrize("key,value,match", [
    ("methods", "finetune,nonsense", "unknown method 'nonsense'"),
    ("methods", "finetune,finetune", "lists an entry twice"),
    ("train.lr", -0.1, "train.lr"),
    ("train.epochs", 0, "train.epochs"),
    ("scenario.class_order", (0, 1, 2, 3, 4, 5, 6, 7, 8, 8), "class_order"),
    ("scenario.kind", "cyclic", "scenario.kind"),
    ("model.name", "vit", "model.name"),
    ("train.optimizer", "lion", "train.optimizer"),
    # Accepted before, then every entry "diverged":
    ("train.lr", float("nan"), r"config.train.lr must be finite and > 0"),
    ("train.momentum", float("inf"), "config.train.momentum must be finite"),
    ("train.weight_decay", float("nan"), "config.train.weight_decay"),
    # A ZeroDivisionError before:
    ("model.hidden", (16, 0), r"config.model.hidden: widths must be integers "
     r">= 1, got \(16, 0\)"),
    # The key was not named before:
    ("seed", -1, "config.seed must be finite and an integer >= 0"),
    # Ran 2 tasks and recorded 5 before:
    ("scenario.task_sizes", (5, 5), "config.scenario.num_tasks: 5 contradicts "
     r"scenario.task_sizes \(5, 5\)"),
    ("checkpoint_every", -3, "config.checkpoint_every"),
    # Accepted silently before:
    ("scenario.test_per_task", -300, "config.scenario.test_per_task"),
    ("scenario.train_per_task", -5, "config.scenario.train_per_task"),
    ("scenario.angles", (1e999, 1.0, 2.0, 3.0, 4.0),
     "config.scenario.angles must be finite"),
    ("scenario.angles", (1.0, 2.0), "config.scenario.angles: has 2 angles"),
    ("seed", 99999999999999999999, "config.seed must be a number within"),
    # Ran before (found by a probe):
    ("train.momentum", 1.5, "config.train.momentum must be finite and < 1"),
    ("train.eval_top_k", 10, "top_k=10 leaves no class out"),
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
  # Intransigence against joint's last diagonal entry (0 for joint itself).
  for e in r:
    assert r[e]["metrics"]["intransigence"] == pytest.approx(
        r["joint"]["accuracy_matrix"][-1][-1] - r[e]["accuracy_matrix"][-1][-1])
  assert r["joint"]["metrics"]["intransigence"] == 0.0


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
  out = _cli("train")
  assert out.returncode == 2 and "usage: cljax run" in out.stderr
  out = _cli("run", "--config.train.lr=-1")
  assert out.returncode == 2 and "config.train.lr" in out.stderr
  out = _cli("--help")
  assert out.returncode == 0 and "usage: cljax run" in out.stdout
  out = _cli("--version")
  assert out.returncode == 0 and out.stdout.startswith("cljax ")


def _rerun(c, **train_kw):
  c = c.copy_and_resolve_references()
  c.train.update(train_kw)
  return c


@pytest.mark.parametrize("key,value,message", [
    ("train.lr", 0.001, "config.train.lr: 0.05 -> 0.001"),
    ("train.weight_decay", 1e-4, "config.train.weight_decay: 0.0 -> 0.0001"),
    ("train.augment", "crop_flip", 'config.train.augment: "none" -> '
     '"crop_flip"'),
    ("data.path", "/elsewhere", 'config.data.path: "" -> "/elsewhere"'),
])
def test_changed_setting_is_refused_before_training(tmp_path, key, value,
                                                    message):
  # The rerun used to train nothing, report the first run's accuracy and
  # label it with the new setting.
  c = _config(tmp_path)
  c.methods = "finetune"
  c.scenario.num_tasks = 2
  experiment.run_experiment(c)
  before = open(os.path.join(c.workdir, "results.json")).read()
  c2 = c.copy_and_resolve_references()
  node, leaf = c2, key.split(".")
  for k in leaf[:-1]:
    node = node[k]
  node[leaf[-1]] = value
  results = os.path.join(c.workdir, "results.json")

  def refused(held):
    with pytest.raises(ValueError, match=held + " of a run with other "
                       "settings") as e:
      experiment.run_experiment(c2)
    assert message in str(e.value), str(e.value)

  refused(r"holds the results\.json")
  assert open(results).read() == before
  os.remove(results)  # as if killed before its first entry finished
  refused(r"checkpoints/finetune holds a checkpoint")
  assert not os.path.exists(results)


def test_changed_setting_mid_stream_is_refused(tmp_path, monkeypatch):
  # Tasks 1-2 at one lr, 3-5 at another used to be labelled with the last.
  from cljax.train import _checkpoint
  c = _config(tmp_path)
  c.methods = "finetune"
  real, calls = _checkpoint.Checkpoints.save, []

  def save(self, items, record):
    calls.append(real(self, items, record))
    if len(calls) == 2:
      raise KeyboardInterrupt
    return calls[-1]

  monkeypatch.setattr(_checkpoint.Checkpoints, "save", save)
  with pytest.raises(KeyboardInterrupt):
    experiment.run_experiment(c)
  monkeypatch.undo()
  with pytest.raises(ValueError, match="config.train.lr: 0.05 -> 0.01"):
    experiment.run_experiment(_rerun(c, lr=0.01))
  # The same settings resume and finish.
  res = experiment.run_experiment(c)
  assert len(res["runs"]["finetune"]["accuracy_matrix"]) == 5


def _interrupted_at(c, step, monkeypatch):
  """Runs ``c`` until a Ctrl-C at the first metric it logs at global step
  ``step`` or later."""
  real = report.MultiWriter.write_scalars

  def write(self, at, scalars):
    if at >= step:
      raise KeyboardInterrupt
    real(self, at, scalars)

  monkeypatch.setattr(report.MultiWriter, "write_scalars", write)
  with pytest.raises(KeyboardInterrupt):
    experiment.run_experiment(c)
  monkeypatch.undo()


def test_an_interrupt_names_the_checkpoint_the_rerun_resumes_from(
    tmp_path, monkeypatch, capsys):
  # With checkpoints inside tasks, Ctrl-C said "resume after task k" (the
  # last finished task) while the rerun resumed inside the next; and with
  # progress off the rerun said nothing.
  c = _config(tmp_path, epochs=2)
  c.methods = "finetune"
  c.scenario.num_tasks = 2
  c.checkpoint_every = 7
  c.log.every = 1
  _interrupted_at(c, 40, monkeypatch)
  said = re.search(r"finetune: interrupted in task (\d) of 2; rerun the same "
                   r"command to resume inside task (\d) at step (\d+)",
                   capsys.readouterr().err)
  assert said, "no interrupt message"
  task, step = said.group(2), int(said.group(3))
  assert said.group(1) == task and step % 7 == 0 and 33 <= step < 40
  experiment.run_experiment(c)
  assert (f"finetune: resuming inside task {task} of 2 at step {step}"
          in capsys.readouterr().err)


def test_a_workdir_holds_the_results_of_one_config(tmp_path):
  # A config file of one's own that kept the default name (the README's
  # example did) wrote into the default run's workdir and replaced its
  # results.json with other entries.
  c = _config(tmp_path)
  c.methods = "finetune,l2"
  c.scenario.num_tasks = 2
  experiment.run_experiment(c)
  results = os.path.join(c.workdir, "results.json")
  before = open(results).read()
  other = c.copy_and_resolve_references()
  other.methods = "finetune,ewc"
  with pytest.raises(ValueError, match=r"holds the results\.json of a run "
                     r'with other settings.*\n  config.methods: '
                     r'"finetune,l2" -> "finetune,ewc"\nUse another'):
    experiment.run_experiment(other)
  assert open(results).read() == before
  # The settings of an entry that neither run trains change nothing.
  c.method.ewc.lam = 123.0
  c.progress = True  # (a presentation key)
  experiment.run_experiment(c)


def test_a_refused_run_leaves_no_directory_behind(tmp_path):
  c = _config(tmp_path)
  c.workdir = str(tmp_path / "new" / "run")
  c.data.name = "mnist"
  with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
    experiment.run_experiment(c)
  assert os.listdir(tmp_path) == []


def test_presentation_keys_do_not_invalidate_checkpoints(tmp_path):
  c = _config(tmp_path)
  c.methods = "finetune"
  c.scenario.num_tasks = 2
  first = experiment.run_experiment(c)["runs"]["finetune"]
  c.name, c.progress, c.checkpoint_every, c.select = "x", True, 3, "val_score"
  c.sweep.vmap = True  # an entry of its own runs as before, from its checkpoint
  again = experiment.run_experiment(c)["runs"]["finetune"]
  assert again["accuracy_matrix"] == first["accuracy_matrix"]
  assert again["timings"] == first["timings"]  # nothing retrained


def test_memory_larger_than_a_task_stops_before_training(tmp_path):
  c = _config(tmp_path)
  c.methods = "finetune,gem"
  c.method.gem = {"memory_size": 5000}
  with pytest.raises(ValueError, match=r"memory_size=5000 exceeds task \d+'s "
                     r"\d+ training examples"):
    experiment.run_experiment(c)
  assert not os.path.exists(os.path.join(c.workdir, "checkpoints"))


def test_two_task_class_ids_outside_the_dataset(tmp_path):
  c = _config(tmp_path)
  c.scenario.kind = "two_task"
  c.scenario.classes_b = (5, 6, 7, 8, 12)
  with pytest.raises(ValueError, match="classes_b .* outside the dataset"):
    experiment.run_experiment(c)


def test_workdir_must_be_a_writable_directory(tmp_path):
  c = _config(tmp_path)
  open(c.workdir, "w").close()
  with pytest.raises(ValueError, match="config.workdir: .* is a file"):
    experiment.run_experiment(c)
  c.workdir = os.path.join(c.workdir, "sub")
  with pytest.raises(ValueError, match="config.workdir: .* is not a writable "
                     "directory"):
    experiment.run_experiment(c)


def test_unwritable_places_inside_the_workdir(tmp_path):
  # A checkpoints directory that cannot be written gave a traceback after
  # training.
  c = _config(tmp_path)
  os.makedirs(c.workdir)
  open(os.path.join(c.workdir, "checkpoints"), "w").close()
  with pytest.raises(ValueError, match="checkpoints' is a file"):
    experiment.run_experiment(c)
  os.remove(os.path.join(c.workdir, "checkpoints"))
  path = os.path.join(c.workdir, "checkpoints", "finetune")
  os.makedirs(path)
  if subprocess.run(["chattr", "+i", path], capture_output=True).returncode:
    pytest.skip("chattr +i is not available here")
  try:
    with pytest.raises(ValueError, match="finetune' is not a writable "
                       "directory"):
      experiment.run_experiment(c)
  finally:
    subprocess.run(["chattr", "-i", path])


def test_second_run_into_a_workdir_is_refused(tmp_path):
  # Two runs into one workdir both used to exit 0 (one mixed the results).
  c = _config(tmp_path)
  with train.directory_lock(c.workdir):
    with pytest.raises(train.LockedError, match=f"pid {os.getpid()}"):
      experiment.run_experiment(c)


def test_results_survive_a_failing_plot(tmp_path, monkeypatch):
  # A 120-task stream ran out of memory in the heatmap before writing
  # results.json, on every rerun.
  def boom(*a, **k):
    raise MemoryError("heatmap")
  monkeypatch.setattr(report, "plot_accuracy_matrix", boom)
  monkeypatch.setattr(report, "plot_over_tasks", boom)
  c = _config(tmp_path)
  c.scenario.num_tasks = 2
  with pytest.warns(UserWarning, match="could not write .*MemoryError"):
    res = experiment.run_experiment(c)
  saved = json.load(open(os.path.join(c.workdir, "results.json")))
  assert saved["runs"].keys() == {"finetune", "joint"}
  assert saved["runs"]["joint"]["accuracy_matrix"] == \
      res["runs"]["joint"]["accuracy_matrix"]


def test_heatmap_of_many_tasks_is_bounded(tmp_path):
  import matplotlib.image
  path = str(tmp_path / "big.png")
  report.plot_accuracy_matrix(np.random.default_rng(0).uniform(
      size=(200, 200)), path)
  h, w = matplotlib.image.imread(path).shape[:2]
  assert h <= 12 * 110 and w <= 12 * 110


def test_every_entry_diverged_is_a_failure(tmp_path):
  c = _config(tmp_path)
  c.scenario.num_tasks = 2
  c.methods = "ft__a,ft__b"
  c.method.ft__a = {"kind": "finetune", "lr": 1e6}
  c.method.ft__b = {"kind": "finetune", "lr": 1e7}
  with pytest.raises(experiment.NoResults, match="every entry diverged"):
    experiment.run_experiment(c)
  saved = json.load(open(os.path.join(c.workdir, "results.json")))
  assert all("diverged" in r for r in saved["runs"].values())


def _cli(*args, cwd=None):
  return subprocess.run([sys.executable, "-m", "cljax.cli", *args],
                        capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize("args,match", [
    # A 52-line traceback before:
    (["--config.train.learning_rate=0.1"], "cljax: error: "
     "config.train.learning_rate: no such key in the config; closest: "
     "config.train.lr"),
    # A 39-line traceback before:
    (["--config", "no/such/config.py"], "cljax: error: --config: config file "
     "'no/such/config.py' not found"),
    (["--config.train.lr=abc"], "cljax: error: flag --config.train.lr=abc"),
    (["--config.train.lr=nan"], "cljax: error: config.train.lr must be"),
])
def test_cli_errors_are_one_line(args, match):
  out = _cli("run", *args)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [out.stderr.strip()], out.stderr
  assert match in out.stderr, out.stderr


def test_cli_exit_status_when_every_entry_diverges(tmp_path):
  out = _cli("run", "--config.train.lr=1e7", "--config.methods=finetune",
             "--config.train.epochs=1", "--config.progress=False",
             f"--config.workdir={tmp_path}/w")
  assert out.returncode == 1, out.stderr
  assert "every entry diverged" in out.stderr


def _tensorboard_scalars(logdir):
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={
      event_accumulator.SCALARS: 0})
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
          for tag in acc.Tags()["scalars"]}


def _csv_scalars(path):
  import csv
  out = {}
  with open(path) as f:
    for row in csv.DictReader(f):
      out.setdefault(row["tag"], []).append((int(row["step"]),
                                             float(row["value"])))
  return out


def test_tensorboard_and_csv_logs_read_back(tmp_path, monkeypatch):
  pytest.importorskip("tensorboard")
  c = _config(tmp_path, epochs=2, eval_every=5)
  c.methods = "finetune"
  c.scenario.num_tasks = 3
  c.scenario.task_sizes = (4, 3, 3)
  c.log.every = 4
  # Killed inside task 3 (steps 56-80), some steps after task 2's
  # checkpoint at step 56, and resumed: what the killed attempt logged after
  # the checkpoint must not show twice.
  _interrupted_at(c, 64, monkeypatch)
  logged = _csv_scalars(os.path.join(c.workdir, "metrics", "finetune.csv"))
  assert max(s for s, _ in logged["train/ce"]) == 60  # after step 56
  res = experiment.run_experiment(c)["runs"]["finetune"]
  tb = _tensorboard_scalars(os.path.join(c.workdir, "tensorboard",
                                         "finetune"))
  csv_ = _csv_scalars(os.path.join(c.workdir, "metrics", "finetune.csv"))
  assert tb.keys() == csv_.keys()
  for tag in tb:
    steps = [s for s, _ in csv_[tag]]
    assert steps == sorted(set(steps)), tag  # no step twice
    np.testing.assert_allclose([v for _, v in tb[tag]],
                               [v for _, v in csv_[tag]], rtol=1e-6)
    assert [s for s, _ in tb[tag]] == steps
  # Each task's row of the accuracy matrix, at the step the task ended.
  for j in range(3):
    got = [v for _, v in csv_[f"test_accuracy/task_{j + 1}"]]
    np.testing.assert_allclose(got, [row[j] for row in
                                     res["accuracy_matrix"]])
  assert len(csv_["train/ce"]) == res["steps"] // 4
  curve = [v for _, v in csv_["val_accuracy/task_1"]]
  np.testing.assert_allclose(curve, [p["acc"][0] for p in res["curves"]])
  assert res["curve_split"] == "val"


def test_seeds_give_mean_and_std(tmp_path, capsys):
  c = _config(tmp_path)
  c.scenario.num_tasks = 2
  c.methods = "ft__a,ft__b"
  c.method.ft__a = {"kind": "finetune", "lr": 0.05}
  c.method.ft__b = {"kind": "finetune", "lr": 0.01}
  c.seeds = 3
  res = experiment.run_experiment(c)
  run = res["runs"]["ft__a"]
  assert run["seeds"] == [0, 1, 2] and len(run["per_seed"]) == 3
  mats = np.asarray([r["accuracy_matrix"] for r in run["per_seed"]])
  assert not np.all(mats[0] == mats[1])  # the seeds differ
  np.testing.assert_allclose(run["accuracy_matrix"], mats.mean(0))
  np.testing.assert_allclose(run["accuracy_matrix_std"], mats.std(0))
  accs = [r["metrics"]["average_accuracy"] for r in run["per_seed"]]
  assert run["metrics"]["average_accuracy"] == pytest.approx(np.mean(accs))
  assert run["metrics_std"]["average_accuracy"] == pytest.approx(np.std(accs))
  out = capsys.readouterr().out
  assert f"{100 * np.mean(accs):.1f} ± {100 * np.std(accs):.1f}" in out
  for s in range(3):  # each seed checkpointed on its own
    assert os.path.isdir(os.path.join(c.workdir, "checkpoints", "ft__a",
                                      f"seed{s}"))
  vals = {e: np.mean([np.mean(r["val_accuracy_matrix"][-1])
                      for r in res["runs"][e]["per_seed"]])
          for e in ("ft__a", "ft__b")}
  assert res["selection"]["ft"]["entry"] == max(vals, key=vals.get)
  md = open(os.path.join(c.workdir, "selection.md")).read()
  assert "mean ± std over 3 seeds" in md and " ± " in md


def _runs(values, key="lam"):
  return {f"ewc__{key}{v:g}": {"hparams": {key: v, "form": "transform"},
                                "lr": 0.1, "val_accuracy_matrix": [[acc]],
                                "metrics": {}}
          for v, acc in values}


def test_edge_winners_are_flagged():
  sel = report.select(_runs([(1.0, 0.5), (10.0, 0.7), (100.0, 0.6)]),
                      "val_acc")
  assert sel["ewc"]["entry"] == "ewc__lam10" and sel["ewc"]["edge"] is None
  sel = report.select(_runs([(1.0, 0.5), (10.0, 0.6), (100.0, 0.7)]),
                      "val_acc")
  assert sel["ewc"]["edge"] == "edge: the highest lam (100) of the grid"
  diverged = {"ewc__lam1000": {"diverged": "nan", "hparams": {
      "lam": 1000.0, "form": "transform"}, "lr": 0.1}}
  sel = report.select(_runs([(1.0, 0.5), (10.0, 0.6), (100.0, 0.7)]),
                      "val_acc", diverged)
  assert sel["ewc"]["edge"] == ("edge: the highest lam (100) of the grid "
                                "(the next lam, 1000, diverged)")
  sel = report.select(_runs([(0.1, 0.9), (1.0, 0.6)], key="c"), "val_acc")
  assert sel["ewc"]["edge"] == "edge: the lowest c (0.1) of the grid"


def test_selection_reads_the_methods_own_classifier():
  # iCaRL's candidates are judged, and reported, by their nearest mean of
  # exemplars, the paper's classifier, not by the network's argmax (which
  # would pick the other entry here); over seeds, by the seeds' mean.
  def run(argmax, nme, test_nme):
    return {"hparams": {}, "lr": 0.1, "classifier": "nme",
            "val_accuracy_matrix": [[argmax]],
            "val_accuracy_matrix_nme": [[nme]],
            "metrics": {"average_accuracy": 0.1, "backward_transfer": 0.0},
            "metrics_nme": {"average_accuracy": test_nme,
                            "backward_transfer": -0.2}}
  runs = {"icarl__lr0p1": run(0.9, 0.6, 0.55),
          "icarl__lr1": run(0.5, 0.8, 0.75)}
  sel = report.select(runs, "val_acc")
  assert sel["icarl"]["entry"] == "icarl__lr1"
  assert sel["icarl"]["value"] == pytest.approx(0.8)
  assert "| icarl | icarl__lr1 (nme) | 80.0 | 75.0 | -20.0 |" in (
      report.selection_table(runs, sel, "val_acc"))
  per_seed = [{**run(0.9, nme, 0.5), "accuracy_matrix": [[0.1]],
               "timings": {}, "steps": 1} for nme in (0.6, 0.8)]
  seeds = report.aggregate_seeds(per_seed, [0, 1])
  assert seeds["val_accuracy_matrix_nme"] == [[pytest.approx(0.7)]]
  assert report.select({"icarl": seeds}, "val_acc")["icarl"]["value"] == (
      pytest.approx(0.7))


def test_edge_winners_of_a_product_grid_are_flagged_per_setting():
  # DER++'s alpha x beta: each setting is judged along the line through the
  # winner (a two-setting grid was reported as no grid at all).
  def runs(best):
    return {f"derpp__a{a:g}_b{b:g}": {
        "hparams": {"alpha": a, "beta": b}, "lr": 0.1, "metrics": {},
        "val_accuracy_matrix": [[0.9 if (a, b) == best else 0.5]]}
            for a in (0.1, 0.3, 1.0) for b in (0.25, 0.5, 1.0)}
  edge = lambda best: report.select(runs(best), "val_acc")["derpp"]["edge"]
  assert edge((0.3, 0.5)) is None
  assert edge((0.3, 1.0)) == "edge: the highest beta (1) of the grid"
  assert edge((0.1, 0.25)) == ("edge: the lowest alpha (0.1) of the grid; "
                               "the lowest beta (0.25) of the grid")
  # A line through the winner that lacks a value the setting takes
  # elsewhere, and a diverged neighbour on one of two edges.
  partial = runs((0.3, 1.0))
  del partial["derpp__a1_b1"]
  diverged = {"derpp__a0p3_b2": {"diverged": "nan", "lr": 0.1,
                                 "hparams": {"alpha": 0.3, "beta": 2.0}}}
  assert report.select(partial, "val_acc", diverged)["derpp"]["edge"] == (
      "edge: the highest alpha (0.3) of its line; the highest beta (1) of "
      "the grid (the next beta, 2, diverged)")
  # Entries differing along no single line (a diagonal) cannot be judged.
  diagonal = {f"derpp__{v:g}": {"hparams": {"alpha": v, "beta": v},
                                "lr": 0.1, "metrics": {},
                                "val_accuracy_matrix": [[v]]}
              for v in (0.1, 0.3, 1.0)}
  assert report.select(diagonal, "val_acc")["derpp"]["edge"] == (
      report.NOT_JUDGED)


def _lrs(train_cfg, steps):
  import jax.numpy as jnp
  opt = experiment.build_optimizer(train_cfg, 0.1, steps)
  params = {"w": jnp.ones(2)}
  state, out = opt.init(params), []
  for _ in range(steps):  # the rate each update used (recorded in it)
    _, state = opt.update(params, state, params)
    out.append(float(state.hyperparams["learning_rate"]))
  return np.asarray(out)


def test_learning_rate_schedules(tmp_path):
  c = get_config()
  c.train.schedule = "multistep"
  lrs = _lrs(c.train, 100)  # milestones at 50% and 75% of a task's steps
  np.testing.assert_allclose(lrs[[0, 49, 50, 74, 75, 99]],
                             [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
  c.train.schedule, c.train.warmup = "cosine", 0.1
  lrs = _lrs(c.train, 100)
  assert lrs[0] == 0.0 and lrs[10] == pytest.approx(0.1)
  assert np.all(np.diff(lrs[:11]) > 0) and np.all(np.diff(lrs[10:]) < 0)
  # A scheduled run compiles its step once and restarts the schedule per
  # task (the optimizer is reset).
  c = _config(tmp_path)
  c.train.schedule = "multistep"
  c.methods = "finetune"
  res = experiment.run_experiment(c)
  assert len(res["runs"]["finetune"]["accuracy_matrix"]) == 5
  c.train.first_task_lr = 0.1
  with pytest.raises(ValueError, match="cannot be combined with a schedule"):
    experiment.run_experiment(c)


def test_sweep_vmap_groups_entries_and_matches_one_by_one(tmp_path):
  """``sweep.vmap``: entries that differ only in data hyperparameters train
  as one program (one checkpoint directory per group and seed), with the
  results, the diverged record and the selection of running them one by
  one; an entry with another structural setting runs on its own."""
  def config(sub, vmap, methods="ewc__a,ewc__b,ewc__c", seeds=False):
    c = _config(tmp_path / sub)
    c.scenario.num_tasks = 2
    c.scenario.val_fraction = 0.2
    c.seeds = 2
    c.methods = methods
    c.method.ewc__a = {"kind": "ewc", "lam": 1.0}
    c.method.ewc__b = {"kind": "ewc"}  # the default lam
    c.method.ewc__c = {"kind": "ewc", "lam": 1e38}
    c.method.ewc__other = {"kind": "ewc", "fisher_samples": 16}
    c.sweep.vmap = vmap
    c.sweep.vmap_seeds = seeds
    return c

  c = config("g", True, "ewc__a,ewc__b,ewc__c,ewc__other")
  groups = experiment.sweep_groups(experiment._prepare_entries(
      c, experiment.build_stream(c), c.workdir))
  assert [[e["entry"] for e in g] for g in groups] == [
      ["ewc__a", "ewc__b", "ewc__c"], ["ewc__other"]]
  swept = experiment.run_experiment(config("v", True))
  alone = experiment.run_experiment(config("s", False))
  assert "diverged" in swept["runs"]["ewc__c"]
  for entry in ("ewc__a", "ewc__b"):
    a, b = swept["runs"][entry], alone["runs"][entry]
    np.testing.assert_allclose(a["accuracy_matrix"], b["accuracy_matrix"],
                               atol=1e-6)
    np.testing.assert_allclose(a["val_accuracy_matrix"],
                               b["val_accuracy_matrix"], atol=1e-6)
  assert swept["runs"]["ewc__a"]["per_seed"][0]["sweep_members"] == 3
  assert swept["selection"] == alone["selection"]
  ck = os.path.join(str(tmp_path / "v" / "run"), "checkpoints")
  assert os.listdir(ck) == ["ewc__a+2"]
  assert sorted(os.listdir(os.path.join(ck, "ewc__a+2"))) == ["seed0",
                                                              "seed1"]
  again = experiment.run_experiment(config("v", True))  # resumed: no training
  assert again["runs"]["ewc__a"]["accuracy_matrix"] == \
      swept["runs"]["ewc__a"]["accuracy_matrix"]
  # sweep.vmap_seeds: both seeds of the group as one program of 6 members
  # (each seed's stream and initialisation), with the same results again.
  both = experiment.run_experiment(config("w", True, seeds=True))
  assert "diverged" in both["runs"]["ewc__c"]
  for entry in ("ewc__a", "ewc__b"):
    a, b = both["runs"][entry], alone["runs"][entry]
    for key in ("accuracy_matrix", "val_accuracy_matrix",
                "accuracy_matrix_std"):
      np.testing.assert_allclose(a[key], b[key], atol=1e-6, err_msg=key)
    assert [r["sweep_members"] for r in a["per_seed"]] == [6, 6]
  assert both["selection"] == alone["selection"]
  ck = os.path.join(str(tmp_path / "w" / "run"), "checkpoints")
  assert os.listdir(os.path.join(ck, "ewc__a+2")) == ["seeds0-1"]
  again = experiment.run_experiment(config("w", True, seeds=True))
  assert again["runs"]["ewc__b"]["per_seed"] == both["runs"]["ewc__b"][
      "per_seed"]  # resumed from the program's checkpoint
  # vmap_seeds alone: an entry's two seeds as one program.
  one = experiment.run_experiment(config("x", False, "ewc__a", seeds=True))
  np.testing.assert_allclose(one["runs"]["ewc__a"]["accuracy_matrix"],
                             alone["runs"]["ewc__a"]["accuracy_matrix"],
                             atol=1e-6)
  assert os.listdir(os.path.join(str(tmp_path / "x" / "run"), "checkpoints",
                                 "ewc__a")) == ["seeds0-1"]


_PARALLEL_SCRIPT = """
import json, sys
import numpy as np
from cljax import experiment
from cljax.default_config import get_config
out = {}
for n in (1, 4):
  c = get_config("runlocal")
  c.workdir, c.progress = sys.argv[1] + f"/n{n}", False
  c.scenario.num_tasks = 2
  c.train.batch_size = 32
  c.methods = "ewc,er"
  c.method.er.memory_size = 60
  c.parallel.data = n
  out[n] = experiment.run_experiment(c)
for entry in ("ewc", "er"):
  a = np.asarray(out[1]["runs"][entry]["accuracy_matrix"])
  b = np.asarray(out[4]["runs"][entry]["accuracy_matrix"])
  print(entry, "max abs diff", np.max(np.abs(a - b)))
  assert np.max(np.abs(a - b)) <= 0.01, (entry, a, b)
assert out[4]["config"]["parallel"]["data"] == 4
"""


def test_data_parallel_from_the_config_matches_one_device(tmp_path):
  """``parallel.data=4`` on 4 simulated CPU devices: the same accuracy
  matrices as one device (to float tolerance: an example or so may flip)
  for a regularised and a rehearsal method."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") +
                      " --xla_force_host_platform_device_count=4"}
  out = subprocess.run([sys.executable, "-c", _PARALLEL_SCRIPT,
                        str(tmp_path)], env=env, capture_output=True,
                       text=True, timeout=900)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  assert out.stdout.count("max abs diff") == 2


@pytest.mark.parametrize("key,value,match", [
    ("parallel.data", 64, "config.parallel.data: 64 devices asked for"),
    ("parallel.data", -1, "config.parallel.data"),
])
def test_bad_device_counts(tmp_path, key, value, match):
  c = _config(tmp_path)
  c.update_from_flattened_dict({key: value})
  with pytest.raises(ValueError, match=match):
    experiment.run_experiment(c)


def test_a_stale_sweep_group_checkpoint_is_refused_before_training(tmp_path):
  c = _config(tmp_path)
  c.scenario.num_tasks = 2
  c.methods = "ewc__a,ewc__b"
  c.method.ewc__a = {"kind": "ewc", "lam": 1.0}
  c.method.ewc__b = {"kind": "ewc", "lam": 4.0}
  c.sweep.vmap = True
  experiment.run_experiment(c)
  c.methods = "l2,ewc__a,ewc__b"  # a new entry first, then the group
  c.method.ewc__b.lam = 8.0  # another member: the group's checkpoint is stale
  with pytest.raises(ValueError, match="other settings"):
    experiment.run_experiment(c)
  assert not os.path.exists(os.path.join(c.workdir, "checkpoints", "l2"))


def test_seed_aggregate_averages_network_use():
  from cljax import report
  base = dict(accuracy_matrix=[[1.0]], val_accuracy_matrix=[],
              metrics={"average_accuracy": 1.0}, timings={"train_s": [1.0]},
              steps=1)
  runs = [{**base, "network_use": [0.5, 0.25]},
          {**base, "network_use": [0.3, 0.35]}]
  out = report.aggregate_seeds(runs, [0, 1])
  np.testing.assert_allclose(out["network_use"], [0.4, 0.3])
