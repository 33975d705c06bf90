"""Runs an experiment described by an ml_collections config: builds the
stream, model and methods, runs each method, writes results and plots."""

from __future__ import annotations

import json
import os
import platform
import time

import jax
import ml_collections
import numpy as np
import optax

from cljax import data as cl_data
from cljax import report
from cljax.methods import build_method, METHODS
from cljax.models import build_model, MODELS
from cljax.train import run_stream

OPTIMIZERS = ("sgd", "adam")


def _fail(key, msg):
  raise ValueError(f"config.{key}: {msg}")


def run_entries(config) -> list[tuple[str, str, dict, float, tuple]]:
  """``(entry, method kind, hyperparameters, lr, hidden)`` for each run
  entry; an entry's ``lr`` and ``hidden`` keys override ``train.lr`` and
  ``model.hidden`` for it."""
  out = []
  entries = [e.strip() for e in config.methods.split(",") if e.strip()]
  if not entries:
    _fail("methods", "no method given")
  for entry in entries:
    hp = dict(config.method.get(entry, {}))
    kind = hp.pop("kind", entry)
    lr = float(hp.pop("lr", config.train.lr))
    hidden = tuple(hp.pop("hidden", config.model.hidden))
    if kind not in METHODS:
      _fail("methods", f"unknown method {kind!r} (entry {entry!r}); known: "
            f"{sorted(METHODS)}")
    if lr <= 0:
      _fail(f"method.{entry}.lr", f"must be > 0, got {lr}")
    out.append((entry, kind, hp, lr, hidden))
  return out


def validate(config) -> None:
  """Rejects bad values with a ``ValueError`` naming the key, before any
  data is loaded or any training starts."""
  t, s = config.train, config.scenario
  if t.lr <= 0:
    _fail("train.lr", f"must be > 0, got {t.lr}")
  for key in ("epochs", "batch_size", "eval_batch_size"):
    if t[key] < 1:
      _fail(f"train.{key}", f"must be >= 1, got {t[key]}")
  if t.eval_every < 0:
    _fail("train.eval_every", f"must be >= 0, got {t.eval_every}")
  if t.first_task_lr < 0:
    _fail("train.first_task_lr", f"must be >= 0, got {t.first_task_lr}")
  if t.momentum < 0 or t.weight_decay < 0:
    _fail("train", "momentum and weight_decay must be >= 0")
  if t.optimizer not in OPTIMIZERS:
    _fail("train.optimizer", f"unknown {t.optimizer!r}; one of {OPTIMIZERS}")
  if t.augment not in cl_data.AUGMENTATIONS:
    _fail("train.augment", f"unknown {t.augment!r}; one of "
          f"{sorted(cl_data.AUGMENTATIONS)}")
  if s.kind not in cl_data.SCENARIOS:
    _fail("scenario.kind", f"unknown {s.kind!r}; one of {cl_data.SCENARIOS}")
  if s.num_tasks < 1:
    _fail("scenario.num_tasks", f"must be >= 1, got {s.num_tasks}")
  if s.class_order and sorted(s.class_order) != list(range(len(s.class_order))):
    _fail("scenario.class_order", f"{tuple(s.class_order)} is not a "
          "permutation of 0..C-1")
  if not 0 <= s.val_fraction < 1:
    _fail("scenario.val_fraction", f"must be in [0, 1), got {s.val_fraction}")
  if config.select not in report.CRITERIA:
    _fail("select", f"unknown {config.select!r}; one of {report.CRITERIA}")
  if config.model.name not in MODELS:
    _fail("model.name", f"unknown {config.model.name!r}; one of {MODELS}")
  for entry, kind, hp, _, _ in run_entries(config):
    build_method(kind, **hp)  # raises ValueError on bad hyperparameters


def build_stream(config) -> cl_data.Stream:
  d, s = config.data, config.scenario
  ds = cl_data.load_dataset(d.name, d.path or None, d.data_dir or None)
  if s.class_order and len(s.class_order) != ds.num_classes:
    _fail("scenario.class_order", f"has {len(s.class_order)} entries for "
          f"{ds.num_classes} classes")
  common = dict(val_fraction=s.val_fraction, seed=config.seed)
  if s.kind in ("class_incremental", "task_incremental"):
    return cl_data.class_splits(
        ds, s.num_tasks, incremental=s.kind.split("_")[0],
        class_order=tuple(s.class_order) or None,
        task_sizes=tuple(s.task_sizes) or None, **common)
  if s.kind == "two_task":
    return cl_data.two_task(ds, s.classes_a, s.classes_b, **common)
  sub = dict(train_per_task=s.train_per_task or None,
             test_per_task=s.test_per_task or None, **common)
  if s.kind == "permuted":
    return cl_data.permuted(ds, s.num_tasks, identity_first=s.identity_first,
                            **sub)
  return cl_data.rotated(ds, s.num_tasks, angles=tuple(s.angles) or None, **sub)


def build_optimizer(train_cfg, lr: float) -> optax.GradientTransformation:
  """The configured optimizer; its learning rate is injected state, so the
  runner can change it per task (``train.first_task_lr``) without
  recompiling."""
  if train_cfg.optimizer == "adam":
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=lr)
  else:
    opt = optax.inject_hyperparams(optax.sgd)(
        learning_rate=lr, momentum=train_cfg.momentum or None)
  if train_cfg.weight_decay:
    opt = optax.chain(optax.add_decayed_weights(train_cfg.weight_decay), opt)
  return opt


def _versions() -> dict:
  import flax
  return {"python": platform.python_version(), "jax": jax.__version__,
          "flax": flax.__version__, "optax": optax.__version__,
          "numpy": np.__version__, "devices": [str(d) for d in jax.devices()]}


def run_experiment(config: ml_collections.ConfigDict) -> dict:
  """Runs every entry of ``config.methods`` on the configured stream.

  Writes to ``config.workdir`` (default ``runs/<name>``): ``results.json``,
  ``accuracy_<entry>.png`` per entry and ``curves.png``; checkpoints under
  ``checkpoints/<entry>`` let an interrupted run resume where it stopped.
  An entry whose training diverges (NaN/inf) is recorded as ``{"diverged":
  message}`` and the others still run.
  Returns the results dict (as written to ``results.json``).
  """
  validate(config)
  workdir = config.workdir or os.path.join("runs", config.name)
  os.makedirs(workdir, exist_ok=True)
  t_load = time.perf_counter()
  stream = build_stream(config)
  load_s = time.perf_counter() - t_load
  results = {"config": json.loads(config.to_json()), "versions": _versions(),
             "stream": {"name": stream.name, "kind": stream.kind,
                        "classes": [t.classes.tolist() for t in stream.tasks],
                        "train_sizes": [len(t.train) for t in stream.tasks],
                        "test_sizes": [len(t.test) for t in stream.tasks]},
             "data_load_s": load_s, "runs": {}}
  augment = cl_data.AUGMENTATIONS[config.train.augment]
  for entry, kind, hp, lr, hidden in run_entries(config):
    model = build_model(config.model.name, stream.input_shape,
                        stream.num_classes, seed=config.seed,
                        hidden=hidden)
    try:
      res = run_stream(
          stream, build_method(kind, **hp), model,
          build_optimizer(config.train, lr), epochs=config.train.epochs,
          batch_size=config.train.batch_size, seed=config.seed,
          eval_every=config.train.eval_every,
          eval_batch_size=config.train.eval_batch_size,
          reset_optimizer=config.train.reset_optimizer, augment=augment,
          checkpoint_dir=os.path.join(workdir, "checkpoints", entry),
          progress=config.progress,
          task_lrs=([config.train.first_task_lr] + [lr] * (
              stream.num_tasks - 1) if config.train.first_task_lr else None))
    except FloatingPointError as e:  # a diverged candidate; the rest go on
      print(f"\n{entry}: diverged: {e}")
      results["runs"][entry] = {"diverged": str(e), "lr": lr, "hparams": hp}
      _write(results, workdir)
      continue
    res.pop("final_state")
    # Training plus per-task evaluation, from the run's own timings (which
    # checkpoints keep, so a resumed run reports its original cost).
    res.update(lr=lr, hparams=hp, wall_s=sum(res["timings"]["train_s"]) +
               sum(res["timings"]["eval_s"]))
    results["runs"][entry] = res
    print(report.accuracy_table(res["accuracy_matrix"],
                                f"\n{entry} on {stream.name} (accuracy %)"))
    report.plot_accuracy_matrix(res["accuracy_matrix"],
                                os.path.join(workdir, f"accuracy_{entry}.png"),
                                f"{entry}: accuracy (%)")
    _write(results, workdir)
  done = {e: r for e, r in results["runs"].items() if "diverged" not in r}
  if not any("__" in entry for entry in done):  # else: curves_selected.png
    report.plot_curves({e: r["curves"] for e, r in done.items()},
                       os.path.join(workdir, "curves.png"), stream.name)
  print("\n" + report.summary_table(done))
  shown = done
  if any("__" in entry for entry in done):  # the selected entries only
    shown = {e: done[e] for e in (v["entry"] for v in report.select(
        done, config.select).values())}
  report.plot_over_tasks({e: r["accuracy_matrix"] for e, r in shown.items()},
                         os.path.join(workdir, "over_tasks.png"), stream.name)
  if any("__" in entry for entry in done):
    sel = report.select(done, config.select)
    results["selection"] = sel
    table = report.selection_table(done, sel, config.select)
    diverged = sorted(set(results["runs"]) - set(done))
    if diverged:
      table += f"\n\nDiverged (not candidates): {', '.join(diverged)}"
    with open(os.path.join(workdir, "selection.md"), "w") as f:
      f.write(f"Chosen on validation ({config.select}); test numbers of the "
              f"chosen entries only.\n\n{table}\n")
    print("\n" + table)
    report.plot_curves({e: results["runs"][e]["curves"] for e in
                        (v["entry"] for v in sel.values())},
                       os.path.join(workdir, "curves_selected.png"),
                       stream.name)
  path = _write(results, workdir)
  print(f"\nresults: {path}\nplots:   {workdir}/accuracy_*.png, "
        f"{workdir}/over_tasks.png, {workdir}/curves*.png")
  return results


def _write(results, workdir) -> str:
  path = os.path.join(workdir, "results.json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(results, f, indent=1)
  os.replace(tmp, path)
  return path
