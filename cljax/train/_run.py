"""The runner's entry points: ``run_stream`` (one run), ``run_sweep`` (K
members of a method as one vmapped program) and ``check_run`` (their
argument checks), which set up a ``_loop._Run`` and, given a checkpoint
directory, its identity and lock."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import numpy as np
import optax

from cljax import _validate
from cljax.data._scenarios import Stream
from cljax.data._streamed import materialise
from cljax.methods._base import Method
from cljax.models._functional import FunctionalModel
from cljax.train import _identity
from cljax.train._checkpoint import Checkpoints, tree_digest
from cljax.train._epochs import fits, loops_are_slow
from cljax.train._identity import run_identity
from cljax.train._lock import directory_lock
from cljax.train._loop import _Run


LOOPS = ("auto", "scan", "host")


def check_run(stream: Stream, method: Method, model: FunctionalModel, *,
              epochs: int, batch_size: int, seed: int = 0,
              eval_every: int = 0, eval_batch_size: int = 1000,
              task_lrs: Sequence[float] | None = None,
              task_epochs: Sequence[int] | None = None, task_steps: int = 0,
              checkpoint_every: int = 0, log_every: int = 0, **_) -> None:
  """Raises the ``ValueError`` that ``run_stream`` with these arguments
  would raise before training (bad data, settings, model or method
  hyperparameters for this stream), without training. Other keyword
  arguments of ``run_stream`` are accepted and ignored."""
  stream.check()
  if not _scalar(seed):
    raise ValueError(f"seed must be one integer (a seed per member is "
                     f"run_sweep's), got {seed!r}")
  for key, value, low in (("epochs", epochs, 1), ("batch_size", batch_size, 1),
                          ("eval_batch_size", eval_batch_size, 1),
                          ("eval_every", eval_every, 0), ("seed", seed, 0),
                          ("checkpoint_every", checkpoint_every, 0),
                          ("log_every", log_every, 0),
                          ("task_steps", task_steps, 0)):
    _validate.check_integer(key, value, low)
  if task_lrs is not None:
    if len(task_lrs) != stream.num_tasks:
      raise ValueError(f"task_lrs must have {stream.num_tasks} values, got "
                       f"{task_lrs}")
    _validate.check_positive("task_lrs", np.asarray(task_lrs, float))
  if task_epochs is not None:
    if len(task_epochs) != stream.num_tasks:
      raise ValueError(f"task_epochs must have {stream.num_tasks} values, "
                       f"got {task_epochs}")
    _validate.check_value("task_epochs", np.asarray(task_epochs, float),
                          lambda v: (v >= 1) & (v == np.round(v)),
                          "integers >= 1")
  for k in range(stream.num_tasks):
    n = len(method.train_split(stream, k))
    if n < batch_size:
      raise ValueError(f"task {k} has {n} training examples, fewer than "
                       f"batch_size={batch_size}")
  out_dim = jax.tree.leaves(model.params["head"])[0].shape[-1]
  if out_dim != stream.num_classes:
    raise ValueError(f"model head has {out_dim} outputs, stream has "
                     f"{stream.num_classes} classes")
  method.check(stream)


def run_stream(stream: Stream, method: Method, model: FunctionalModel,
               optimizer: optax.GradientTransformation, *, epochs: int,
               batch_size: int, seed: int = 0, eval_every: int = 0,
               eval_batch_size: int = 1000, reset_optimizer: bool = True,
               augment: Callable | None = None, mesh=None,
               checkpoint_dir: str | None = None, checkpoint_every: int = 0,
               identity: Mapping | None = None,
               identity_defaults: Mapping | None = None,
               progress: bool = True,
               writer=None, log_every: int = 0,
               task_lrs: Sequence[float] | None = None,
               task_epochs: Sequence[int] | None = None,
               task_steps: int = 0, loop: str = "auto",
               scan_chunk: int = 100, device_data_mb: float = 1024,
               top_k: int = 1) -> dict:
  """Trains ``method`` on ``stream`` and returns the run's results.

  Args:
    stream: the tasks.
    method: a ``cljax.methods.Method``.
    model: a ``FunctionalModel`` whose head has ``stream.num_classes`` outputs.
    optimizer: the base optax optimizer (the method may wrap it).
    epochs: passes over each task's training data.
    batch_size: examples per step (all devices together under ``mesh``).
    seed: seeds shuffling and the step's PRNG.
    eval_every: if > 0, evaluate every task's validation split (test split if
      a task has none) every ``eval_every`` steps, for accuracy curves.
    eval_batch_size: the largest batch of evaluation (the largest test or
      validation split where every split is smaller).
    reset_optimizer: start each task with a fresh optimizer state.
    augment: optional ``(rng, x) -> x`` applied on device to training inputs.
    mesh: a ``jax.sharding.Mesh`` with axis ``"data"`` for data parallelism.
    checkpoint_dir: where to checkpoint after each task and resume from
      (orbax steps, verified on load, under an exclusive lock; see
      ``cljax.train.Checkpoints``). A checkpoint of a run whose identity
      (``run_identity``: stream content, method hyperparameters, initial
      model and optimizer state, these settings, ``identity``) differs is
      refused with the differing keys.
    checkpoint_every: if > 0, also checkpoint every this many steps inside a
      task; a resumed run continues from there bit-identically.
    identity: more of the run's identity (e.g. the resolved config), JSON
      values, recorded in and checked against the checkpoints.
    identity_defaults: the defaults of ``identity``'s keys (nested like
      it): a checkpoint that lacks a key (a setting added since) still
      matches while the key has its default (the method's hyperparameters'
      defaults are known without it).
    progress: show a progress bar and say when a run resumes.
    writer: optional metric writer (``write_scalars(step, scalars)`` and
      ``truncate(step)``, e.g. ``cljax.report.TensorBoardWriter``): gets the
      loss terms every ``log_every`` steps, the accuracy curves and each
      task's accuracy-matrix row, all against the global step.
    log_every: steps between logged loss terms (0: none).
    task_lrs: optional learning rate per task (e.g. task A at the standard
      lr, later tasks lower); ``optimizer`` must come from
      ``optax.inject_hyperparams`` so the lr is part of its state.
    task_epochs: optional epochs per task, in place of ``epochs``.
    task_steps: if > 0, train each task for exactly this many steps (epochs
      of fresh permutations, the last cut short) in place of epochs; a
      phase with epochs of its own (e.g. LwF's warm-up) keeps them.
    loop: ``"scan"`` (the task's data on the device, the steps as jitted
      ``lax.scan``s of up to ``scan_chunk`` steps, cut where an evaluation,
      a log line or a checkpoint is due), ``"host"`` (batches fed from the
      host, the next one prefetched) or ``"auto"`` (scan when every task's
      training data fits ``device_data_mb``, there is no ``mesh`` and, on a
      CPU, the model's gradient has no convolution XLA:CPU would run slowly
      in a loop: ``loops_are_slow``). Both give the same results.
    top_k: if > 1, also the top-``top_k`` accuracy (the label among the
      ``top_k`` largest active logits), as ``accuracy_matrix_top<k>`` and
      ``metrics_top<k>`` (e.g. 5 for CIFAR-100 and ImageNet).
  Returns:
    A dict with ``accuracy_matrix`` (``R[i][j]``, test splits, fractions),
    ``val_accuracy_matrix`` (validation splits), ``random_init_accuracy``,
    ``metrics``, ``curves`` (accuracy on each task's ``curve_split``, the
    validation split where every task has one, else the test split),
    ``timings`` (per task: ``train_s`` and ``eval_s`` in seconds, excluding
    ``compile_s``, the time JAX spent tracing and compiling), ``steps`` and
    ``final_state``; for each of the method's ``predictors`` ``p``,
    ``accuracy_matrix_<p>`` and ``metrics_<p>``; for a method with a
    ``classifier`` of its own, ``classifier`` (its name) and
    ``val_accuracy_matrix_<classifier>``.
  Raises:
    ValueError: bad arguments or data (before anything trains), or a
      checkpoint of another run.
    cljax.train.LockedError: another process is using ``checkpoint_dir``.
    FloatingPointError: training diverged (NaN/inf); names step and cause.
  """
  return _run_stream(stream, method, model, optimizer, None, **_locals(
      locals()))


def run_sweep(stream: Stream | Sequence[Stream], method: Method,
              members: Sequence[Mapping],
              model: FunctionalModel | Sequence[FunctionalModel],
              optimizer: optax.GradientTransformation, *, epochs: int,
              batch_size: int, seed: int | Sequence[int] = 0,
              eval_every: int = 0,
              eval_batch_size: int = 1000, reset_optimizer: bool = True,
              augment: Callable | None = None,
              checkpoint_dir: str | None = None, checkpoint_every: int = 0,
              identity: Mapping | None = None,
              identity_defaults: Mapping | None = None,
              progress: bool = True, writer: Sequence | None = None,
              log_every: int = 0, task_lrs: Sequence[float] | None = None,
              task_epochs: Sequence[int] | None = None, task_steps: int = 0,
              loop: str = "auto", scan_chunk: int = 100,
              device_data_mb: float = 1024, top_k: int = 1) -> list[dict]:
  """Trains K ``members`` of ``method`` as one program and returns each
  member's results, as ``run_stream`` would for it alone.

  The members differ only in hyperparameters the method reads as data
  (``Method.data_hparams``; each member a dict of some of them, the rest
  as ``method`` has them). Their train states are stacked on a leading
  axis and one ``jax.vmap``ped step trains them all on the same batches and
  keys; evaluation is vmapped too, and the task hooks run member by member
  (each with ``method.with_hparams(**member)``). A member whose training
  goes NaN/inf stops updating (its own ``TrainState.nonfinite_step``) and is
  returned as ``{"diverged": message}``; the others go on.

  Seeds are members too: ``seed``, ``stream`` and ``model`` may each be a
  sequence with one per member (e.g. N seeds of one entry: each seed's
  stream, initialisation and seed; a single value is every member's). Then
  each member draws its own batches and keys from its own seed, trains on
  its own stream's data from its own initial parameters, is evaluated on
  its own stream's splits, and its hooks see its own stream: as
  ``run_stream`` with those would. The streams must be alike in every
  shape (tasks, split sizes, inputs, classes per task) and the models in
  their parameters' shapes; on the device each member's data is held
  (``device_data_mb`` counts all members').

  Arguments are otherwise ``run_stream``'s (no ``mesh``), with ``writer``
  a sequence of one metric writer per member (or ``None``). The members
  (their hyperparameters, seeds, streams' and initial models' digests) are
  part of the run's identity: a checkpoint of another sweep is refused.

  Returns:
    One dict per member: ``run_stream``'s results (its ``timings`` are the
    whole sweep's), or ``{"diverged": message}``.
  """
  if writer is not None and len(writer) != len(members):
    raise ValueError(f"writer: one per member ({len(members)}), got "
                     f"{len(writer)}")
  args = _locals(locals())
  args.pop("members")
  return _run_stream(stream, method, model, optimizer, members, mesh=None,
                     **args)


def _scalar(value) -> bool:
  """Whether ``value`` is one value, not a sequence or array of several."""
  return not isinstance(value, Sequence) and np.ndim(value) == 0


def _per_member(name: str, value, k: int, single: Callable) -> list:
  """``value`` as one per member: a sequence of ``k``, or a single value
  (``single(value)``) repeated."""
  if single(value):
    return [value] * k
  if isinstance(value, (str, bytes)) or not isinstance(
      value, (Sequence, np.ndarray)):
    raise ValueError(f"{name}: one, or a sequence of one per member, got "
                     f"{type(value).__name__}")
  if len(value) != k:
    raise ValueError(f"{name}: one per member ({k}), got {len(value)}")
  for m, v in enumerate(value):
    if not single(v):
      raise ValueError(f"{name}: member {m}'s is not one {name}, got "
                       f"{type(v).__name__}")
  return list(value)


def member_settings(streams: Sequence[Stream],
                    models: Sequence[FunctionalModel],
                    seeds: Sequence[int]) -> dict:
  """The settings (part of the identity) of a ``run_sweep`` whose members
  have a stream, model and seed of their own: each member's seed, and the
  digests of its data and initialisation."""
  return dict(seed=[int(np.asarray(sd)) for sd in seeds],
              member_streams=[s.digest for s in streams],
              member_models=[tree_digest((md.params, md.batch_stats))
                             for md in models])


def _check_alike(streams, models) -> None:
  """Raises ``ValueError`` unless the members' streams are in memory with
  the same shapes (tasks, classes per task, split sizes, inputs and their
  dtype) and their models the same parameter structure and shapes, compute
  dtype and taps: what stacking them needs (the steps are traced with
  member 0's model)."""
  def shapes(s):
    return (s.kind, s.num_classes, s.input_shape, [
        (t.classes.tolist(), len(t.train), len(t.val), len(t.test),
         str(t.train.x.dtype)) for t in s.tasks])
  first = shapes(streams[0])
  for m, s in enumerate(streams):
    if not all(sp.in_memory for t in s.tasks
               for sp in (t.train, t.val, t.test)):
      raise ValueError(f"member {m}'s stream {s.name!r} is streamed: "
                       "members with streams of their own need them in "
                       "memory")
    if shapes(s) != first:
      raise ValueError(f"member {m}'s stream {s.name!r} differs in shape "
                       f"from member 0's {streams[0].name!r} (tasks, "
                       "classes, split sizes or inputs): members' streams "
                       "must be alike")
  spec = lambda md: (jax.tree.map(lambda a: (a.shape, a.dtype),
                                  (md.params, md.batch_stats)),
                     getattr(md, "dtype", "float32"), md.taps is None)
  for m, md in enumerate(models[1:], 1):
    if spec(md) != spec(models[0]):
      raise ValueError(f"member {m}'s model differs from member 0's in its "
                       "parameters' shapes, its compute dtype or its taps: "
                       "members' models must be alike")


def _locals(names: dict) -> dict:
  """``run_stream``'s keyword arguments from its ``locals()``."""
  return {k: v for k, v in names.items()
          if k not in ("stream", "method", "model", "optimizer")}


def _run_stream(stream, method, model, optimizer, members, *, epochs,
                batch_size, seed, eval_every, eval_batch_size,
                reset_optimizer, augment, mesh, checkpoint_dir,
                checkpoint_every, identity, identity_defaults, progress,
                writer, log_every, task_lrs, task_epochs, task_steps, loop,
                scan_chunk, device_data_mb, top_k):
  # Integers of any type (32.0, np.int64(32)) as Python ints: they slice.
  epochs, batch_size, eval_every, eval_batch_size, checkpoint_every, \
      log_every, scan_chunk = (_validate.as_int(*a) for a in (
          ("epochs", epochs, 1), ("batch_size", batch_size, 1),
          ("eval_every", eval_every, 0),
          ("eval_batch_size", eval_batch_size, 1),
          ("checkpoint_every", checkpoint_every, 0),
          ("log_every", log_every, 0), ("scan_chunk", scan_chunk, 1)))
  settings = dict(epochs=epochs, batch_size=batch_size, seed=seed,
                  eval_every=eval_every, eval_batch_size=eval_batch_size,
                  reset_optimizer=bool(reset_optimizer), augment=augment,
                  task_lrs=None if task_lrs is None else list(task_lrs),
                  task_epochs=None if task_epochs is None else [
                      int(e) for e in task_epochs],
                  task_steps=int(task_steps))
  if members is not None and not members:
    raise ValueError("a sweep needs at least one member")
  own = members is not None and not (isinstance(stream, Stream) and
                                     isinstance(model, FunctionalModel) and
                                     _scalar(seed))
  if own:  # a stream, model and seed of each member's own
    k = len(members)
    streams = _per_member("stream", stream, k,
                          lambda v: isinstance(v, Stream))
    models = _per_member("model", model, k,
                         lambda v: isinstance(v, FunctionalModel))
    seeds = _per_member("seed", seed, k, _scalar)
    for s, md, sd in zip(streams, models, seeds):
      check_run(s, method, md, checkpoint_every=checkpoint_every,
                log_every=log_every, **{**settings, "seed": sd})
    _check_alike(streams, models)
    stream, model = streams[0], models[0]
    settings.update(member_settings(streams, models, seeds))
  else:
    check_run(stream, method, model, checkpoint_every=checkpoint_every,
              log_every=log_every, **settings)
  if loop not in LOOPS:
    raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
  if loop == "scan" and mesh is not None:
    raise ValueError("loop='scan' runs on one device; with a mesh use "
                     "loop='host' or 'auto'")
  if mesh is not None and batch_size % mesh.shape["data"]:
    raise ValueError(f"batch_size={batch_size} does not divide by the "
                     f"mesh's {mesh.shape['data']} devices")
  _validate.check_integer("scan_chunk", scan_chunk, 1)
  _validate.check_positive("device_data_mb", device_data_mb)
  splits = [method.train_split(stream, k) for k in range(stream.num_tasks)]
  slow = loop == "auto" and loops_are_slow(model, materialise(
      splits[0].x[:1]))
  if loop == "scan" and not all(sp.in_memory for sp in splits):
    raise ValueError("loop='scan' needs the training data in memory; "
                     "streamed data runs with loop='host' or 'auto'")
  copies = len(members) if own else 1  # each member's data on the device
  scan = loop == "scan" or (loop == "auto" and mesh is None and not slow and
                            fits(splits, device_data_mb / copies))
  # One scan length for the run: the chunk, or the shortest period at which
  # something is due (so segments are mostly full).
  chunk = min([int(scan_chunk)] + [e for e in (
      eval_every, checkpoint_every if checkpoint_dir else 0,
      log_every if writer is not None else 0) if e])
  _validate.check_integer("top_k", top_k, 1)
  if top_k >= stream.num_classes > 1:
    raise ValueError(f"top_k={top_k} leaves no class out of the stream's "
                     f"{stream.num_classes}: every prediction would count")
  if top_k != 1:  # part of the identity (absent: top-1 only, as before)
    settings["top_k"] = int(top_k)
  if members is not None:
    settings["members"] = [dict(m) for m in members]  # part of the identity
  run = _Run(stream, method, model, optimizer, settings, members=members,
             own=(streams, models) if own else None, mesh=mesh,
             progress=progress, writer=writer, log_every=log_every,
             scan=(max(len(sp) for sp in splits), chunk) if scan else None,
             device_eval_mb=None if loop == "host" or slow else
             device_data_mb)
  if not checkpoint_dir:
    return run.run(None, None, 0)
  ident = run_identity(stream, method, model, optimizer, settings, identity)
  defaults = _identity.identity_defaults(method, identity_defaults)
  with directory_lock(checkpoint_dir):
    checkpoints = Checkpoints(checkpoint_dir)
    try:
      return run.run(checkpoints, ident, checkpoint_every, defaults)
    finally:
      checkpoints.close()
