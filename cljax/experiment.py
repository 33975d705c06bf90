"""Runs an experiment described by an ml_collections config: builds the
stream, model and methods, runs each method, writes results and plots."""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from typing import NamedTuple

import jax
import ml_collections
import numpy as np
import optax

import cljax
from cljax import _distributed, _validate
from cljax import data as cl_data
from cljax import metrics, report
from cljax import train
from cljax.methods import build_method, METHODS
from cljax.models import build_model, DTYPES, HEADS, MODELS
from cljax.report._writers import replace_atomically
from cljax.train._checkpoint import IGNORED, Checkpoints, check_identity
from cljax.train._identity import flatten

OPTIMIZERS = ("sgd", "adam")
# Keys that cannot change a result: left out of a run's identity, so
# changing them never invalidates a checkpoint.
PRESENTATION_KEYS = ("name", "workdir", "progress", "select",
                     "checkpoint_every", "data.verify", "log", "seeds",
                     "train.loop", "train.scan_chunk", "train.device_data_mb",
                     # how the devices are reached, not how many
                     "distributed", "cluster",
                     # the same results one by one or vmapped (tested); a
                     # group checkpoints in its own directory
                     "sweep.vmap", "sweep.vmap_seeds")


class NoResults(RuntimeError):
  """No entry of the run produced results (every one diverged)."""


def _fail(key, msg):
  raise ValueError(f"config.{key}: {msg}")


def _check(check, key, value, *args):
  """Runs a ``cljax._validate`` check, naming ``config.<key>``."""
  check(f"config.{key}", value, *args)


def _int(key, value, low):
  _validate.check_integer(f"config.{key}", value, low)


class Entry(NamedTuple):
  """One run entry of ``config.methods``, resolved.

  Attributes:
    name: the entry's name (a method name or a key of ``config.method``).
    kind: the method (a name or an import path).
    hparams: the method's hyperparameters.
    lr, hidden, epochs: ``train.lr``, ``model.hidden`` and ``train.epochs``,
      or the entry's own values where it sets them.
  """
  name: str
  kind: str
  hparams: dict
  lr: float
  hidden: tuple
  epochs: int


# Keys of a config.method entry that override the run's settings for it.
ENTRY_OVERRIDES = {"lr": ("train", "lr"), "hidden": ("model", "hidden"),
                   "epochs": ("train", "epochs")}


def run_entries(config) -> list[Entry]:
  """The resolved entries of ``config.methods``."""
  out = []
  entries = [e.strip() for e in config.methods.split(",") if e.strip()]
  if not entries:
    _fail("methods", "no method given")
  if len(set(entries)) != len(entries):
    _fail("methods", f"lists an entry twice: {entries}")
  for entry in entries:
    hp = dict(config.method.get(entry, {}))
    kind = hp.pop("kind", entry)
    own = {}
    for key, (group, name) in ENTRY_OVERRIDES.items():
      value = hp.pop(key, None)
      own[key] = config[group][name] if value is None else value
    if kind not in METHODS and ":" not in kind:
      close = difflib.get_close_matches(kind, METHODS, n=3, cutoff=0.6)
      hint = (f"did you mean {' or '.join(map(repr, close))}? " if close
              else "")
      if "__" in entry and entry not in config.method:
        hint += (f"a new entry such as {entry!r} is made in a config file: "
                 f"config.method[{entry!r}] = method_entry(\"<method>\", "
                 "...) (see README, Hyperparameter sweeps); ")
      _fail("methods", f"unknown method {kind!r} (entry {entry!r}); {hint}"
            f"known: {sorted(METHODS)}, or an import path "
            "'package.module:Class'")
    _check(_validate.check_positive, f"method.{entry}.lr", own["lr"])
    _check_hidden(f"method.{entry}.hidden", tuple(own["hidden"]))
    _int(f"method.{entry}.epochs", own["epochs"], 1)
    out.append(Entry(entry, kind, hp, float(own["lr"]), tuple(own["hidden"]),
                     int(own["epochs"])))
  return out


def _check_hidden(key, hidden):
  if not all(isinstance(h, (int, np.integer)) and h >= 1 for h in hidden):
    _fail(key, f"widths must be integers >= 1, got {tuple(hidden)}")


def validate(config) -> None:
  """Rejects bad values with a ``ValueError`` naming the key, before any
  data is loaded or any training starts."""
  t, s = config.train, config.scenario
  _check(_validate.check_positive, "train.lr", t.lr)
  for key in ("epochs", "batch_size", "eval_batch_size"):
    _int(f"train.{key}", t[key], 1)
  _int("train.eval_every", t.eval_every, 0)
  _int("train.eval_top_k", t.eval_top_k, 0)
  _int("seed", config.seed, 0)
  _int("seeds", config.seeds, 1)
  _int("checkpoint_every", config.checkpoint_every, 0)
  _int("log.every", config.log.every, 0)
  _int("train.first_task_epochs", t.first_task_epochs, 0)
  _int("train.steps_per_task", t.steps_per_task, 0)
  for key in ("first_task_lr", "momentum", "weight_decay"):
    _check(_validate.check_nonnegative, f"train.{key}", t[key])
  _check(_validate.check_value, "train.momentum", t.momentum,
         lambda v: v < 1, "< 1 (1 or more never forgets a gradient)")
  _check_hidden("model.hidden", tuple(config.model.hidden))
  if t.schedule not in SCHEDULES:
    _fail("train.schedule", f"unknown {t.schedule!r}; one of {SCHEDULES}")
  if t.schedule != "constant" and t.first_task_lr:
    _fail("train.first_task_lr", "cannot be combined with a schedule "
          f"(train.schedule={t.schedule!r})")
  _check(_validate.check_value, "train.milestones",
         np.asarray(t.milestones, float), lambda v: (v > 0) & (v < 1),
         "fractions of a task's steps in (0, 1)")
  _check(_validate.check_positive, "train.decay", t.decay)
  _check(_validate.check_unit_interval, "train.warmup", t.warmup)
  _int("parallel.data", config.parallel.data, 0)
  _int("data.image_size", config.data.image_size, 0)
  _check(_validate.check_nonnegative, "data.stream_above_mb",
         config.data.stream_above_mb)
  if (config.data.image_size or config.data.classes or
      config.data.test_split != "test") and not config.data.name.startswith(
          "tfds:"):
    _fail("data.image_size", "streaming, data.classes and data.test_split "
          f"are for tfds datasets (data.name='tfds:<name>'), not "
          f"{config.data.name!r}")
  if config.data.classes and not config.data.image_size:
    _fail("data.classes", "selects classes of a streamed dataset: set "
          "data.image_size too")
  for key in ("vmap", "vmap_seeds"):
    if not isinstance(config.sweep[key], bool):
      _fail(f"sweep.{key}", f"must be True or False, got "
            f"{config.sweep[key]!r}")
  _check_distributed(config)
  if t.loop not in train.LOOPS:
    _fail("train.loop", f"unknown {t.loop!r}; one of {train.LOOPS}")
  _int("train.scan_chunk", t.scan_chunk, 1)
  _check(_validate.check_positive, "train.device_data_mb", t.device_data_mb)
  if t.dtype not in DTYPES:
    _fail("train.dtype", f"unknown {t.dtype!r}; one of {DTYPES}")
  if t.optimizer not in OPTIMIZERS:
    _fail("train.optimizer", f"unknown {t.optimizer!r}; one of {OPTIMIZERS}")
  if t.augment not in cl_data.AUGMENTATIONS:
    _fail("train.augment", f"unknown {t.augment!r}; one of "
          f"{sorted(cl_data.AUGMENTATIONS)}")
  if s.kind not in cl_data.SCENARIOS:
    _fail("scenario.kind", f"unknown {s.kind!r}; one of {sorted(cl_data.SCENARIOS)}")
  _int("scenario.num_tasks", s.num_tasks, 1)
  if s.task_sizes:
    _int("scenario.task_sizes", np.asarray(s.task_sizes, float), 1)
    if len(s.task_sizes) != s.num_tasks:
      _fail("scenario.num_tasks", f"{s.num_tasks} contradicts "
            f"scenario.task_sizes {tuple(s.task_sizes)} "
            f"({len(s.task_sizes)} tasks)")
  for key in ("train_per_task", "test_per_task"):
    _int(f"scenario.{key}", s[key], 0)
  if s.angles:
    if not all(isinstance(a, (int, float)) for a in s.angles):
      _fail("scenario.angles", f"must be numbers, got {s.angles!r}")
    _check(_validate.check_value, "scenario.angles",
           np.asarray(s.angles, float), lambda v: v == v, "numbers")
    if len(s.angles) != s.num_tasks:
      _fail("scenario.angles", f"has {len(s.angles)} angles for "
            f"scenario.num_tasks={s.num_tasks}")
  if s.class_order and sorted(s.class_order) != list(range(len(s.class_order))):
    _fail("scenario.class_order", f"{tuple(s.class_order)} is not a "
          "permutation of 0..C-1")
  _check(_validate.check_value, "scenario.val_fraction", s.val_fraction,
         lambda v: (v >= 0) & (v < 1), "in [0, 1)")
  if config.select not in report.CRITERIA:
    _fail("select", f"unknown {config.select!r}; one of {report.CRITERIA}")
  if config.model.name not in MODELS:
    _fail("model.name", f"unknown {config.model.name!r}; one of {sorted(MODELS)}")
  if config.model.head and config.model.head not in HEADS:
    _fail("model.head", f"unknown {config.model.head!r}; one of "
          f"{sorted(HEADS)} or '' (the method's own)")
  for e in run_entries(config):
    try:
      build_method(e.kind, **e.hparams)
    except (TypeError, ValueError) as err:  # a bad hyperparameter
      _fail(f"method.{e.name}", str(err))


def _check_distributed(config) -> None:
  """``config.distributed`` and ``config.cluster``."""
  if not isinstance(config.distributed, bool):
    _fail("distributed", f"must be True or False, got {config.distributed!r}")
  cl = config.cluster
  _int("cluster.num_processes", cl.num_processes, 0)
  _int("cluster.process_id", cl.process_id, -1)
  if not isinstance(cl.coordinator_address, str):
    _fail("cluster.coordinator_address", "must be a 'host:port' string, got "
          f"{cl.coordinator_address!r}")
  if not config.distributed and (cl.coordinator_address or cl.num_processes
                                 or cl.process_id >= 0):
    _fail("cluster", "is read only by a distributed run: set "
          "config.distributed=True")


def start_distributed(config) -> None:
  """Joins the multi-process run of ``config.distributed`` (once per
  process; before anything touches a device)."""
  _check_distributed(config)
  if config.distributed and not jax.distributed.is_initialized():
    cl = config.cluster
    _distributed.initialize(cl.coordinator_address, cl.num_processes,
                            cl.process_id)


def resolve_devices(config) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``parallel.data`` resolved to a device count
  (0: every device, every process's in a distributed run), checked against
  the devices present, the batch size and the settings that need one
  device."""
  n = int(config.parallel.data) or jax.device_count()
  if n > jax.device_count():
    _fail("parallel.data", f"{n} devices asked for, {jax.device_count()}"
          f" present ({jax.devices()[0].platform})")
  if jax.process_count() > 1 and n != jax.device_count():
    _fail("parallel.data", f"a run of {jax.process_count()} processes trains "
          f"on all their {jax.device_count()} devices: set 0 (now {n})")
  if config.train.batch_size % n:
    _fail("train.batch_size", f"{config.train.batch_size} does not divide "
          f"by config.parallel.data={n} devices: the global batch is split "
          "evenly over them")
  if n > 1 and config.train.loop == "scan":
    _fail("train.loop", f"'scan' runs on one device; with "
          f"config.parallel.data={n} use 'host' or 'auto'")
  for e in run_entries(config):
    replay = e.hparams.get("replay_size", 0)
    if n > 1 and replay and replay % n:
      _fail(f"method.{e.name}.replay_size", f"{replay} does not divide by "
            f"config.parallel.data={n} devices")
  for key in ("vmap", "vmap_seeds"):
    if n > 1 and config.sweep[key]:
      _fail(f"sweep.{key}", f"a vmapped sweep runs on one device; set "
            f"config.parallel.data=1 (now {n})")
  c = config.copy_and_resolve_references()
  c.parallel.data = n
  return c


def _mesh(config):
  """The data-parallel mesh of ``config.parallel.data`` devices (resolved),
  or ``None`` for one device."""
  n = config.parallel.data
  # Each process's devices together along the axis (process_share needs it;
  # a pod's topology order need not give it).
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  return None if n == 1 else jax.make_mesh((n,), ("data",),
                                           devices=devices[:n])


def _streams(d) -> bool:
  """Whether data config ``d`` streams its dataset: at ``image_size``, or
  a tfds dataset too large for memory (``stream_above_mb``) at its own."""
  if d.image_size:
    return True
  if not d.name.startswith("tfds:"):
    return False
  from cljax.data._tfds import in_memory_mb
  mb = in_memory_mb(d.name[len("tfds:"):], d.data_dir or None,
                    splits=("train", d.test_split))
  if mb <= d.stream_above_mb:
    return False
  if _distributed.is_primary():
    print(f"{d.name}: {mb:.0f} MB as float32, above data.stream_above_mb="
          f"{d.stream_above_mb:g}: streamed (decoded on access)")
  return True


def build_stream(config) -> cl_data.Stream:
  d, s = config.data, config.scenario
  if _streams(d):
    from cljax.data._tfds import load_tfds_streamed
    ds = load_tfds_streamed(d.name[len("tfds:"):], d.data_dir or None,
                            d.image_size, classes=tuple(d.classes),
                            test_split=d.test_split, seed=config.seed)
  else:
    ds = cl_data.load_dataset(d.name, d.path or None, d.data_dir or None,
                              verify=d.verify, test_split=d.test_split)
  if s.class_order and len(s.class_order) != ds.num_classes:
    _fail("scenario.class_order", f"has {len(s.class_order)} entries for "
          f"{ds.num_classes} classes")
  sub = dict(train_per_task=s.train_per_task or None,
             test_per_task=s.test_per_task or None,
             val_fraction=s.val_fraction, seed=config.seed)
  if s.kind == "two_task":
    return cl_data.two_task(ds, s.classes_a, s.classes_b,
                            head=s.two_task_head, **sub)
  if s.kind in ("class_incremental", "task_incremental",
                "domain_incremental"):
    return cl_data.class_splits(
        ds, s.num_tasks, incremental=s.kind.split("_")[0],
        class_order=tuple(s.class_order) or None,
        task_sizes=tuple(s.task_sizes) or None, **sub)
  if s.kind.startswith("permuted"):
    incremental = s.kind.split("_")[1] if "_" in s.kind else "domain"
    return cl_data.permuted(ds, s.num_tasks, identity_first=s.identity_first,
                            incremental=incremental, **sub)
  return cl_data.rotated(ds, s.num_tasks, angles=tuple(s.angles) or None, **sub)


SCHEDULES = ("constant", "multistep", "cosine")


def lr_schedule(train_cfg, lr: float, steps_per_task: int):
  """The learning rate of ``train.schedule`` over one task's steps (the
  optimizer's step count restarts with each task, with
  ``train.reset_optimizer``): ``constant``; ``multistep`` (times
  ``train.decay`` at each of ``train.milestones``, fractions of the task's
  steps: the usual ResNet recipe); ``cosine`` (a linear warm-up over the
  fraction ``train.warmup`` of the steps, then cosine decay to 0)."""
  if train_cfg.schedule == "constant":
    return lr
  if train_cfg.schedule == "multistep":
    return optax.piecewise_constant_schedule(lr, {
        int(round(f * steps_per_task)): train_cfg.decay
        for f in train_cfg.milestones})
  warmup = int(round(train_cfg.warmup * steps_per_task))
  return optax.warmup_cosine_decay_schedule(
      0.0, lr, max(warmup, 1), max(steps_per_task, warmup + 1))


def build_optimizer(train_cfg, lr: float, steps_per_task: int = 0
                    ) -> optax.GradientTransformation:
  """The configured optimizer, with its learning rate (or schedule, see
  ``lr_schedule``) as injected state, so the runner can change a constant
  one per task (``train.first_task_lr``) without recompiling, and decoupled
  weight decay ``train.weight_decay`` (added to the gradient)."""
  rate = lr_schedule(train_cfg, lr, steps_per_task)
  if train_cfg.optimizer == "adam":
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=rate)
  else:
    opt = optax.inject_hyperparams(optax.sgd)(
        learning_rate=rate, momentum=train_cfg.momentum or None)
  if train_cfg.weight_decay:
    opt = optax.chain(optax.add_decayed_weights(train_cfg.weight_decay), opt)
  return opt


def _git_commit() -> str | None:
  """The commit of the git checkout cljax runs from (``+dirty`` with
  uncommitted changes), or ``None``."""
  import subprocess
  here = os.path.dirname(os.path.abspath(cljax.__file__))
  try:
    run = lambda *a: subprocess.run(["git", "-C", here, *a], text=True,
                                    capture_output=True, timeout=10)
    head = run("rev-parse", "HEAD")
    if head.returncode:
      return None
    dirty = run("status", "--porcelain", "--untracked-files=no").stdout
    return head.stdout.strip() + ("+dirty" if dirty.strip() else "")
  except (OSError, subprocess.SubprocessError):
    return None


def _versions() -> dict:
  import flax
  return {"cljax": cljax.__version__, "cljax_git_commit": _git_commit(),
          "python": platform.python_version(), "jax": jax.__version__,
          "flax": flax.__version__, "optax": optax.__version__,
          "numpy": np.__version__,
          "devices": [str(d) for d in jax.devices()]}


def entry_identity(config, e: Entry) -> dict:
  """The resolved config of one entry, flat, without presentation keys: the
  run settings as the entry uses them (its own ``lr``, ``hidden``,
  ``epochs``) and the entry's method settings in place of ``methods`` and
  ``method``."""
  c = json.loads(config.to_json())
  for key in PRESENTATION_KEYS + ("methods", "method"):
    *parents, leaf = key.split(".")
    node = c
    for k in parents:
      node = node.get(k, {})
    node.pop(leaf, None)
    if parents and not node:  # a group left empty (sweep): gone too
      c.pop(parents[0], None)
  for key, (group, name) in ENTRY_OVERRIDES.items():
    c[group][name] = list(e.hidden) if key == "hidden" else getattr(e, key)
  c["entry"] = {"kind": e.kind, "hparams": e.hparams}
  if c.get("parallel", {}).get("data") == 1:  # one device: as before
    c.pop("parallel")
  return flatten(c, "config.")


def _config_defaults() -> dict:
  """The default config's values, nested like ``entry_identity``'s
  ``config`` part: a key added since a checkpoint was written matches it
  while the key keeps its default; the presentation keys are ``IGNORED``
  (a checkpoint written while one was part of the identity still
  matches)."""
  from cljax.default_config import get_config
  config = json.loads(get_config().to_json())
  for key in PRESENTATION_KEYS:  # not compared, even with older checkpoints
    *parents, last = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[last] = IGNORED
  return {"config": config}


def _prepare_workdir(workdir: str) -> None:
  """Fails before any data is loaded unless ``workdir`` is (or can be made)
  a writable directory."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    _fail("workdir", f"{workdir!r} is a file, not a directory")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    _fail("workdir", f"{workdir!r} is not a writable directory "
          f"({e.strerror or e})")
  _check_writable(workdir)


def _check_writable(directory: str) -> None:
  """An existing ``directory`` must take a new file (a probe, created and
  removed: permission bits do not tell for root, immutable files, ...)."""
  if not os.path.isdir(directory):
    if os.path.exists(directory):
      _fail("workdir", f"{directory!r} is a file, not a directory")
    return
  try:
    with tempfile.TemporaryFile(dir=directory):
      pass
  except OSError as e:
    _fail("workdir", f"{directory!r} is not a writable directory "
          f"({e.strerror or e})")


def _plot(fn, *args) -> None:
  """A plot that fails is a warning, never a lost result. (Process 0's
  alone in a distributed run.)"""
  if not _distributed.is_primary():
    return
  try:
    fn(*args)
  except Exception as e:  # noqa: BLE001 - any plotting failure
    warnings.warn(f"could not write {args[1]}: {type(e).__name__}: {e}")


def _entry_progress(k: int, n: int, entry: str, elapsed: float) -> str:
  """``[entry k+1 of n] name``, with an estimate of the time left once an
  entry has finished."""
  eta = ""
  if k:
    left = elapsed / k * (n - k)
    eta = f" (about {left / 60:.0f} min left)" if left >= 90 else (
        f" (about {left:.0f} s left)")
  return f"[entry {k + 1} of {n}] {entry}{eta}"


def _writer(log, workdir, entry):
  """The entry's metric writer: TensorBoard event files and/or a CSV
  (process 0's alone in a distributed run)."""
  writers = []
  if not _distributed.is_primary():
    return None
  if log.tensorboard:
    try:
      writers.append(report.TensorBoardWriter(
          os.path.join(workdir, "tensorboard", entry)))
    except ImportError:
      warnings.warn("log.tensorboard: tensorboardX is not installed; no "
                    "event files (pip install tensorboardX)")
  if log.csv:
    writers.append(report.CSVWriter(os.path.join(
        workdir, "metrics", f"{entry.replace(os.sep, '_')}.csv")))
  return report.MultiWriter(writers) if writers else None


def _prepare_entries(config, stream, workdir, sub: str = "") -> list[dict]:
  """Builds every entry and checks it, before anything trains: argument
  errors (e.g. a memory larger than a task) and a checkpoint of a run with
  other settings stop the whole run here."""
  augment = cl_data.AUGMENTATIONS[config.train.augment]
  out = []
  for e in run_entries(config):
    entry = e.name
    method = build_method(e.kind, **e.hparams)
    model = build_model(config.model.name, stream.input_shape,
                        stream.num_classes, seed=config.seed, hidden=e.hidden,
                        head=config.model.head or method.head,
                        dtype=config.train.dtype)
    first = stream.tasks[0].train
    opt = build_optimizer(config.train, e.lr, config.train.steps_per_task or (
        e.epochs * (len(first) // config.train.batch_size)))
    settings = dict(
        epochs=e.epochs, batch_size=config.train.batch_size,
        seed=config.seed, eval_every=config.train.eval_every,
        eval_batch_size=config.train.eval_batch_size,
        reset_optimizer=config.train.reset_optimizer, augment=augment,
        task_lrs=([config.train.first_task_lr] + [e.lr] * (
            stream.num_tasks - 1) if config.train.first_task_lr else None),
        task_epochs=([config.train.first_task_epochs] + [e.epochs] * (
            stream.num_tasks - 1) if config.train.first_task_epochs else None),
        task_steps=config.train.steps_per_task,
        # (as run_stream's identity has it: absent for top-1 only)
        **({"top_k": config.train.eval_top_k}
           if config.train.eval_top_k > 1 else {}))
    train.check_run(stream, method, model, **settings)
    ident = entry_identity(config, e)
    ckdir = os.path.normpath(os.path.join(workdir, "checkpoints", entry, sub))
    for d in ("checkpoints", os.path.join("checkpoints", entry),
              os.path.join("checkpoints", entry, sub), "tensorboard",
              os.path.join("tensorboard", entry, sub), "metrics"):
      _check_writable(os.path.join(workdir, d))
    _refuse_other_run(ckdir, stream, method, model, opt, settings, ident)
    out.append(dict(entry=entry, method=method, model=model, opt=opt,
                    settings=settings, identity=ident, checkpoint_dir=ckdir,
                    lr=e.lr, hparams=e.hparams))
  return out


def run_experiment(config: ml_collections.ConfigDict) -> dict:
  """Runs every entry of ``config.methods`` on the configured stream.

  Writes to ``config.workdir`` (default ``runs/<name>``), holding its lock:
  ``results.json`` (rewritten as each entry finishes, before any plot),
  ``accuracy_<entry>.png`` per entry and ``curves.png``; checkpoints under
  ``checkpoints/<entry>`` let an interrupted run resume where it stopped.
  Everything that can fail on the config, the data or a stale checkpoint
  fails before any training. An entry whose training diverges (NaN/inf) is
  recorded as ``{"diverged": message}`` and the others still run.

  Returns:
    The results dict (as written to ``results.json``).
  Raises:
    ValueError: a bad config value, bad data, or a checkpoint of a run with
      other settings (before training).
    cljax.train.LockedError: another run is using the workdir.
    NoResults: every entry diverged (``results.json`` is written first).
  """
  start_distributed(config)
  validate(config)
  config = resolve_devices(config)
  workdir = config.workdir or os.path.join("runs", config.name)
  made = _missing_dirs(workdir)
  _prepare_workdir(workdir)
  try:
    with train.directory_lock(workdir), _quiet_unless_primary(config):
      return _run_locked(config, workdir)
  except BaseException:
    # A run refused before it wrote anything leaves no directory behind.
    if _distributed.is_primary():
      for d in made:
        with contextlib.suppress(OSError):  # (not empty: kept)
          os.rmdir(d)
    raise


def _missing_dirs(path: str) -> list[str]:
  """The directories ``os.makedirs(path)`` would create, deepest first."""
  out = []
  path = os.path.abspath(path)
  while not os.path.exists(path):
    out.append(path)
    path = os.path.dirname(path)
  return out


@contextlib.contextmanager
def _quiet_unless_primary(config):
  """Process 0 alone prints tables and progress in a distributed run."""
  if _distributed.is_primary():
    yield
    return
  with config.unlocked():
    config.progress = False
  with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
    yield


def _with_seed(config, seed: int):
  c = config.copy_and_resolve_references()
  c.seed = seed
  return c


def _check_workdir_results(config, workdir) -> None:
  """A workdir holds one config's results: a run with other settings (a
  method list or a config file of its own included) would rewrite its
  ``results.json`` with other entries, so it is refused before anything
  loads, listing the keys that differ (the presentation keys aside)."""
  try:
    with open(os.path.join(workdir, "results.json")) as f:
      stored = json.load(f)["config"]
    stored_entries = str(stored["methods"]).split(",")
  except (OSError, ValueError, KeyError, TypeError):
    return  # none yet (or unreadable: rewritten by this run)
  current = json.loads(config.to_json())
  # (the config.method entries neither run trains change nothing)
  used = {e.strip() for e in stored_entries + config.methods.split(",")}
  flat = lambda c: {k: v for k, v in flatten(c, "config.").items()
                    if not k.startswith("config.method.")
                    or k.split(".")[2] in used}
  check_identity(workdir, flat(stored), flat(current),
                 flatten(_config_defaults()), held="the results.json")


def _run_locked(config, workdir) -> dict:
  _check_workdir_results(config, workdir)
  seeds = [config.seed + k for k in range(config.seeds)]
  # Seeds whose streams are in memory together: all of them when they
  # train as one program (sweep.vmap_seeds), else one at a time.
  rounds = [seeds] if config.sweep.vmap_seeds else [[s] for s in seeds]
  state = {"results": None, "per_seed": {}, "done": 0,
           "started": time.perf_counter()}
  for round_seeds in rounds:  # (its streams are freed when it returns)
    _run_round(config, workdir, round_seeds, seeds, state)
  return _summarise(state["results"], config, workdir)


def _run_round(config, workdir, round_seeds, seeds, state) -> None:
  """Every entry under ``round_seeds`` (whose streams are loaded together),
  each sweep group (``sweep.vmap``) and the round's seeds as one program;
  the results go into ``state``."""
  cs = [_with_seed(config, s) for s in round_seeds]
  t_load = time.perf_counter()
  streams = [build_stream(c) for c in cs]
  load_s = (time.perf_counter() - t_load) / len(streams)
  # entries[r][i]: entry i under the round's seed r
  entries = [_prepare_entries(c, st, workdir,
                              f"seed{c.seed}" if len(seeds) > 1 else "")
             for c, st in zip(cs, streams)]
  if state["results"] is None:
    state["results"] = _results_header(config, streams[0], load_s)
  results, per_seed = state["results"], state["per_seed"]
  names = [e["entry"] for e in entries[0]]
  groups = ([[names.index(e["entry"]) for e in g]
             for g in sweep_groups(entries[0])] if config.sweep.vmap else
            [[i] for i in range(len(names))])
  # A program's units: (entry, its seed's config, stream) per member.
  programs = [[(entries[r][i], cs[r], streams[r])
               for r in range(len(cs)) for i in group] for group in groups]
  for units in programs:
    if len(units) > 1:
      _check_group(units, workdir)
  total = len(names) * len(seeds)
  for units in programs:
    if config.progress and total > 1:
      label = ", ".join(dict.fromkeys(u[0]["entry"] for u in units))
      print(_entry_progress(state["done"], total,
                            label + _seeds_label(units, seeds),
                            time.perf_counter() - state["started"]),
            file=sys.stderr)
    state["done"] += len(units)
    outs = ([_run_entry(*units[0], workdir)] if len(units) == 1
            else _run_group(units, workdir))
    for (e, c, st), res in zip(units, outs):
      entry = e["entry"]
      per_seed.setdefault(entry, []).append(res)
      results["runs"][entry] = _combine(per_seed[entry], seeds)
      if "diverged" not in res:
        print(report.accuracy_table(
            res["accuracy_matrix"], f"\n{entry} on {st.name}" +
            (f", seed {c.seed}" if len(seeds) > 1 else "") +
            " (accuracy %)"))
    _write(results, workdir)


def _seeds_label(units, seeds) -> str:
  """`` (seed s)`` or `` (seeds s0-s1)`` of a program's units, if the run
  has several seeds."""
  mine = sorted({c.seed for _, c, _ in units})
  if len(seeds) == 1:
    return ""
  return (f" (seed {mine[0]})" if len(mine) == 1 else
          f" (seeds {mine[0]}-{mine[-1]})")


def _results_header(config, stream, load_s) -> dict:
  return {"units": "accuracies and metrics are fractions in [0, 1] "
                   "(tables and plots show percent); times in seconds",
          "config": json.loads(config.to_json()), "versions": _versions(),
          "stream": {"name": stream.name, "kind": stream.kind,
                     "digest": stream.digest,
                     "classes": [(t.classes if t.source_classes is None
                                  else t.source_classes).tolist()
                                 for t in stream.tasks],
                     "train_sizes": [len(t.train) for t in stream.tasks],
                     "test_sizes": [len(t.test) for t in stream.tasks]},
          "data_load_s": load_s, "runs": {}}


def sweep_groups(entries: list[dict]) -> list[list[dict]]:
  """``entries`` (as ``_prepare_entries`` makes them) grouped into sweeps:
  entries whose identities differ only in hyperparameters their method
  reads as data (``Method.data_hparams``) share a group, in first-seen
  order; ``run_sweep`` trains each group as one program."""
  groups = {}
  for e in entries:
    m = e["method"]
    structural = {k: v for k, v in vars(m).items()
                  if not k.startswith("_") and k not in m.data_hparams}
    key = json.dumps([type(m).__qualname__, flatten(structural)] + [
        (k, v) for k, v in sorted(e["identity"].items())
        if not k.startswith("config.entry.hparams")], sort_keys=True)
    groups.setdefault(key, []).append(e)
  return list(groups.values())


def _run_options(config) -> dict:
  """``run_stream``'s settings from the config that are not an entry's."""
  return dict(checkpoint_every=config.checkpoint_every,
              identity_defaults=_config_defaults(), progress=config.progress,
              log_every=config.log.every, loop=config.train.loop,
              scan_chunk=config.train.scan_chunk,
              device_data_mb=config.train.device_data_mb)


def _diverged(e, config, err) -> dict:
  print(f"\n{e['entry']} (seed {config.seed}): diverged: {err}")
  return {"diverged": str(err), "seed": config.seed, "lr": e["lr"],
          "hparams": e["hparams"]}


def _finish(e, res, members: int = 1) -> dict:
  """An entry's result as ``results.json`` records it."""
  res.pop("final_state")
  if members > 1:  # a sweep's time, shared equally by its members
    res["timings"] = {k: [t / members for t in v]
                      for k, v in res["timings"].items()}
    res["sweep_members"] = members
  # Training plus per-task evaluation, from the run's own timings (which
  # checkpoints keep, so a resumed run reports its original cost).
  res.update(lr=e["lr"], hparams=e["hparams"],
             wall_s=sum(res["timings"]["train_s"]) +
             sum(res["timings"]["eval_s"]))
  return res


def _run_entry(e, config, stream, workdir) -> dict:
  """One entry under one seed: its result, or a record of its divergence."""
  sub = os.path.relpath(e["checkpoint_dir"], os.path.join(workdir,
                                                          "checkpoints"))
  try:
    res = train.run_stream(
        stream, e["method"], e["model"], e["opt"], **e["settings"],
        checkpoint_dir=e["checkpoint_dir"], identity=e["identity"],
        writer=_writer(config.log, workdir, sub), mesh=_mesh(config),
        **_run_options(config))
  except FloatingPointError as err:  # a diverged candidate; the rest go on
    return _diverged(e, config, err)
  return _finish(e, res)


def _group_plan(units, workdir):
  """``(checkpoint dir, settings, identity)`` of a program of several
  units (``(entry, config, stream)``: a sweep group's entries, under one
  seed or all of a round's): its checkpoints under
  ``checkpoints/<first entry>+<entries - 1>[/seed<s> or /seeds<s0>-<s1>]``
  (one entry over several seeds: ``checkpoints/<entry>/seeds<s0>-<s1>``);
  its settings the first unit's with the members' hyperparameters (and,
  over several seeds, each member's seed, stream and model:
  ``member_settings``); its identity the units' shared resolved config
  (their hyperparameters and seeds are the members') and the entries'
  names."""
  first, config, _ = units[0]
  names = list(dict.fromkeys(e["entry"] for e, _, _ in units))
  seeds = sorted({c.seed for _, c, _ in units})
  sub = ("" if config.seeds == 1 else f"seed{seeds[0]}" if len(seeds) == 1
         else f"seeds{seeds[0]}-{seeds[-1]}")
  group = (first["entry"] if len(names) == 1 else
           f"{first['entry']}+{len(names) - 1}")
  ckdir = os.path.normpath(os.path.join(workdir, "checkpoints", group, sub))
  settings = {**first["settings"],
              "members": [e["method"].hparams() for e, _, _ in units]}
  identity = {k: v for k, v in first["identity"].items()
              if not k.startswith("config.entry.hparams")}
  identity["sweep.entries"] = names
  if len(seeds) > 1:
    settings.update(train.member_settings(
        [st for _, _, st in units], [e["model"] for e, _, _ in units],
        [c.seed for _, c, _ in units]))
    identity["config.seed"] = seeds
  return ckdir, settings, identity


def _check_group(units, workdir) -> None:
  """Before anything trains: the program's checkpoint directory is
  writable and holds no checkpoint of another run (as
  ``_prepare_entries`` checks each entry's)."""
  ckdir, settings, identity = _group_plan(units, workdir)
  first, _, stream = units[0]
  for d in (os.path.dirname(ckdir), ckdir):
    _check_writable(d)
  _refuse_other_run(ckdir, stream, first["method"], first["model"],
                    first["opt"], settings, identity)


def _refuse_other_run(ckdir, stream, method, model, opt, settings,
                      identity) -> None:
  """Raises ``ValueError`` (the differing keys) if ``ckdir`` holds a
  checkpoint of a run whose identity is not this one's."""
  if not os.path.isdir(ckdir):
    return
  checkpoints = Checkpoints(ckdir)
  try:
    record = checkpoints.latest_record()
  finally:
    checkpoints.close()
  if record is not None:
    check_identity(ckdir, record["identity"], train.run_identity(
        stream, method, model, opt, settings, identity),
                   train.identity_defaults(method, _config_defaults()))


def _run_group(units, workdir) -> list[dict]:
  """A program of several units (``_group_plan``) as one vmapped
  ``run_sweep``: each unit's result or record of its divergence."""
  first, config, _ = units[0]
  ckdir, settings, identity = _group_plan(units, workdir)
  writers = [_writer(config.log, workdir, os.path.relpath(
      e["checkpoint_dir"], os.path.join(workdir, "checkpoints")))
             for e, _, _ in units]
  stream, model, seed = units[0][2], first["model"], config.seed
  if "member_streams" in settings:  # several seeds: each member's own
    stream = [st for _, _, st in units]
    model = [e["model"] for e, _, _ in units]
    seed = [c.seed for _, c, _ in units]
  run = {k: v for k, v in first["settings"].items() if k != "seed"}
  outs = train.run_sweep(
      stream, first["method"], settings["members"], model, first["opt"],
      **run, seed=seed, checkpoint_dir=ckdir, identity=identity,
      writer=None if any(w is None for w in writers) else writers,
      **_run_options(config))
  return [_diverged(e, c, res["diverged"]) if "diverged" in res else
          _finish(e, res, len(units)) for (e, c, _), res in zip(units, outs)]


def _combine(runs: list, seeds: list) -> dict:
  """An entry's record: its one result, a divergence, or (several seeds,
  partial while they run) ``report.aggregate_seeds``."""
  bad = [r for r in runs if "diverged" in r]
  if bad:
    return bad[0]
  if len(seeds) == 1:
    return runs[0]
  return report.aggregate_seeds(runs, seeds[:len(runs)])


def _summarise(results, config, workdir) -> dict:
  """Tables, selection and plots once every entry has run."""
  stream_name = results["stream"]["name"]
  done = {e: r for e, r in results["runs"].items() if "diverged" not in r}
  if not done:
    path = _write(results, workdir)
    raise NoResults(f"every entry diverged ({', '.join(results['runs'])}); "
                    f"no results. The record of each is in {path}")
  diverged = {e: r for e, r in results["runs"].items() if e not in done}
  if "joint" in done:  # the reference of intransigence (Chaudhry et al.)
    for res in done.values():
      res["metrics"]["intransigence"] = metrics.intransigence(
          res["accuracy_matrix"], done["joint"]["accuracy_matrix"])
  sweep = any("__" in entry for entry in done)
  if sweep:
    results["selection"] = report.select(done, config.select, diverged)
  path = _write(results, workdir)
  print("\n" + report.summary_table(done))
  for entry, res in done.items():
    _plot(report.plot_accuracy_matrix, res["accuracy_matrix"],
          os.path.join(workdir, f"accuracy_{entry}.png"),
          f"{entry}: accuracy (%)" + (
              f", mean of {len(res['seeds'])} seeds" if "seeds" in res
              else ""))
  shown = done
  if sweep:  # the selected entries only
    sel = results["selection"]
    shown = {e: done[e] for e in (v["entry"] for v in sel.values())}
    table = report.selection_table(done, sel, config.select)
    if diverged:
      table += f"\n\nDiverged (not candidates): {', '.join(sorted(diverged))}"
    if _distributed.is_primary():
      with open(os.path.join(workdir, "selection.md"), "w") as f:
        f.write(f"Chosen on validation ({config.select}); test numbers of "
                f"the chosen entries only" + (
                    f", mean ± std over {config.seeds} seeds" if
                    config.seeds > 1 else "") + f".\n\n{table}\n")
    print("\n" + table)
  curves = os.path.join(workdir, "curves_selected.png" if sweep else
                        "curves.png")
  _plot(report.plot_curves, {e: r["curves"] for e, r in shown.items()},
        curves, stream_name)
  _plot(report.plot_over_tasks,
        {e: r["accuracy_matrix"] for e, r in shown.items()},
        os.path.join(workdir, "over_tasks.png"), stream_name)
  # (no curves without evaluations during training: train.eval_every = 0)
  print(f"\nresults: {path}\nplots:   {workdir}/accuracy_*.png, "
        f"{workdir}/over_tasks.png"
        + (f", {curves}" if os.path.exists(curves) else ""))
  return results


def _write(results, workdir) -> str:
  """Writes ``results.json`` atomically (process 0 alone in a distributed
  run); returns its path."""
  path = os.path.join(workdir, "results.json")
  if not _distributed.is_primary():
    return path
  replace_atomically(path, lambda f: json.dump(results, f, indent=1))
  return path
