"""The task-stream runner.

For each task: the method's start hook, training for the configured epochs
(with optional evaluation every ``eval_every`` steps), the method's end hook,
evaluation on every task's test split (one row of the accuracy matrix), and a
checkpoint. It calls only the ``Method`` interface and knows no method by
name.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Mapping, Sequence

import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from cljax import metrics
from cljax.data._batching import batch_indices, num_batches
from cljax.data._scenarios import Stream
from cljax.data._streamed import materialise
from cljax.methods._base import Method, Phase, TaskContext
from cljax.models._functional import FunctionalModel
from cljax import _validate
from cljax.train._checkpoint import Checkpoints, check_identity
from cljax.train._epochs import HostEngine, ScanEngine, fits, loops_are_slow
from cljax.train import _identity
from cljax.train._identity import run_identity
from cljax.train._lock import directory_lock
from cljax.train._phases import phase_parts, set_learning_rate
from cljax.train._sweep import member, member_step, stack, stack_hparams
from cljax.train._evaluate import (DeviceEvaluator, evaluate,
                                   make_eval_step)
from cljax.train._step import (check_finite, data_parallel,
                               init_train_state,
                               make_train_step)


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
  for key, value, low in (("epochs", epochs, 1), ("batch_size", batch_size, 1),
                          ("eval_batch_size", eval_batch_size, 1),
                          ("eval_every", eval_every, 0), ("seed", seed, 0),
                          ("checkpoint_every", checkpoint_every, 0),
                          ("log_every", log_every, 0),
                          ("task_steps", task_steps, 0)):
    _validate.check_value(key, value,
                          lambda v, low=low: (v >= low) & (v == np.round(v)),
                          f"an integer >= {low}")
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
    eval_batch_size: batch size of evaluation.
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
      training data fits ``device_data_mb``, there is no ``mesh`` and the
      model does not convolve on a CPU: ``loops_are_slow``). Both give the
      same results.
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
    ``final_state``.
  Raises:
    ValueError: bad arguments or data (before anything trains), or a
      checkpoint of another run.
    cljax.train.LockedError: another process is using ``checkpoint_dir``.
    FloatingPointError: training diverged (NaN/inf); names step and cause.
  """
  return _run_stream(stream, method, model, optimizer, None, **_locals(
      locals()))


def run_sweep(stream: Stream, method: Method, members: Sequence[Mapping],
              model: FunctionalModel,
              optimizer: optax.GradientTransformation, *, epochs: int,
              batch_size: int, seed: int = 0, eval_every: int = 0,
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

  Arguments are ``run_stream``'s (one seed, one model initialisation, no
  ``mesh``), with ``writer`` a sequence of one metric writer per member
  (or ``None``). The members are part of the run's identity: a checkpoint
  of another sweep is refused.

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
  settings = dict(epochs=epochs, batch_size=batch_size, seed=seed,
                  eval_every=eval_every, eval_batch_size=eval_batch_size,
                  reset_optimizer=bool(reset_optimizer), augment=augment,
                  task_lrs=None if task_lrs is None else list(task_lrs),
                  task_epochs=None if task_epochs is None else [
                      int(e) for e in task_epochs],
                  task_steps=int(task_steps))
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
  _validate.check_value("scan_chunk", scan_chunk,
                        lambda v: (v >= 1) & (v == np.round(v)),
                        "an integer >= 1")
  _validate.check_positive("device_data_mb", device_data_mb)
  splits = [method.train_split(stream, k) for k in range(stream.num_tasks)]
  slow = loop == "auto" and loops_are_slow(model, materialise(
      splits[0].x[:1]))
  if loop == "scan" and not all(sp.in_memory for sp in splits):
    raise ValueError("loop='scan' needs the training data in memory; "
                     "streamed data runs with loop='host' or 'auto'")
  scan = loop == "scan" or (loop == "auto" and mesh is None and not slow and
                            fits(splits, device_data_mb))
  # One scan length for the run: the chunk, or the shortest period at which
  # something is due (so segments are mostly full).
  chunk = min([int(scan_chunk)] + [e for e in (
      eval_every, checkpoint_every if checkpoint_dir else 0,
      log_every if writer is not None else 0) if e])
  _validate.check_value("top_k", top_k, lambda v: (v >= 1) & (v == np.round(v)),
                        "an integer >= 1")
  if top_k != 1:  # part of the identity (absent: top-1 only, as before)
    settings["top_k"] = int(top_k)
  if members is not None:
    settings["members"] = [dict(m) for m in members]  # part of the identity
  run = _Run(stream, method, model, optimizer, settings, members=members,
             mesh=mesh,
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


@contextlib.contextmanager
def _compile_timer(total: list):
  """Adds to ``total[0]`` the seconds JAX spends tracing, lowering and
  compiling while the context is open (JAX's own compile events)."""
  def listen(event, seconds, **_):
    if event.startswith("/jax/core/compile/"):
      total[0] += seconds
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    yield
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)


class _Run:
  """One ``run_stream`` (or ``run_sweep``) call: the compiled steps and the
  task loop. With ``members`` (a sweep) the train state is stacked on a
  leading member axis, the steps and evaluation are vmapped over it, the
  hooks run member by member, and accuracies carry the member axis first."""

  def __init__(self, stream, method, model, optimizer, settings, *, members,
               mesh, progress, writer, log_every, scan, device_eval_mb):
    self.stream, self.method, self.model = stream, method, model
    self.s, self.mesh, self.progress = settings, mesh, progress
    self.scan = scan  # (data size, chunk) for the scan engine, or None
    # Evaluation on the device (None: split by split), and its evaluators.
    self.device_eval_mb, self.evaluators = device_eval_mb, {}
    self.log_every = log_every
    self.compile_s = [0.0]  # running total, see _compile_timer
    self.curve_split = "val" if all(len(t.val) for t in stream.tasks) else (
        "test")
    self.base_opt = optimizer
    self.opt = method.optimizer(optimizer, model.params)
    # A sweep: K members' data hyperparameters, stacked.
    self.k = None if members is None else len(members)
    self.hp = None if members is None else stack_hparams(method, members)
    self.writers = [] if writer is None else (
        [writer] if members is None else list(writer))
    self.eval_step = make_eval_step(model.apply, members=self.k is not None)
    self.top_k = settings.get("top_k", 1)
    self.top_k_step = make_eval_step(model.apply, members=self.k is not None,
                                     top_k=self.top_k)
    # The method's other classifiers: name -> (jitted prepare, eval step).
    self.predictors = {
        name: (jax.jit(prepare if members is None else jax.vmap(prepare)),
               make_eval_step(model.apply, predict,
                              members=self.k is not None))
        for name, (prepare, predict) in method.predictors(model).items()}
    self.key = jax.random.PRNGKey(settings["seed"])
    self.compiled = {}  # one train step per distinct phase, compiled once
    # Hooks may return arrays that alias the params (e.g. an anchor); the
    # step donates its state, so the method state gets buffers of its own.
    self.state = self._members(init_train_state(
        model.params, model.batch_stats, self.opt,
        _own(method.init_state(model, stream)), stream.logit_masks(0)))

  def _members(self, tree):
    """``tree`` as every member's (stacked K times in a sweep)."""
    return tree if self.k is None else stack([tree] * self.k)

  def _init_opt(self, optimizer, params):
    """``optimizer``'s fresh state for ``params`` (each member's)."""
    return (optimizer.init(params) if self.k is None else
            jax.vmap(optimizer.init)(params))

  def _each(self, hook):
    """``hook(method, state)`` of the run, or of each member with its own
    method and state, stacked (``None`` where the hook returns ``None``)."""
    if self.k is None:
      return hook(self.method, self.state)
    # Copies made now share what the method has set up (init_state).
    outs = [hook(self.method.with_hparams(**{
        n: float(v[i]) for n, v in self.hp.items()}), member(self.state, i))
            for i in range(self.k)]
    return None if outs[0] is None else stack(outs)

  def _host_step(self) -> int:
    return int(np.ravel(jax.device_get(self.state.step))[0])

  def phase_step(self, phase: Phase):
    """``(engine, optimizer, term names)`` of ``phase``; the engine runs
    its train step over rows of batch indices (``_epochs``)."""
    cache_key = (phase.name, phase.head_only, phase.lr_scale)
    if cache_key not in self.compiled:
      model, method = self.model, self.method
      loss_fn, o = phase_parts(method, model, self.opt, phase,
                               self.s["augment"])
      kwargs = dict(update_method_state=method.update_method_state,
                    extra_args=method.extra_args, batch_fn=method.batch_fn)
      example = {k: getattr(self.stream.tasks[0].train, k)[
          :self.s["batch_size"]] for k in "xyt"}
      state = self.state if self.k is None else member(self.state, 0)

      def terms(params, batch_stats, ms, batch, masks, key):
        if method.batch_fn is not None:  # as the step does
          batch = method.batch_fn(ms, batch, key, (0, 1))
        return loss_fn(params, batch_stats, ms, batch, masks, key)[1][0]

      shape = jax.eval_shape(terms, model.params, model.batch_stats,
                             state.method_state, example, state.masks,
                             self.key)
      names = list(shape)
      if self.k is not None:  # one vmapped step of every member
        vstep = jax.vmap(member_step(method, model, self.base_opt, phase,
                                     self.s["augment"]),
                         in_axes=(0, 0, None, None))
        plain = lambda st, batch, key: vstep(self.hp, st, batch, key)
        shape = jax.tree.map(lambda a: jax.ShapeDtypeStruct(
            (self.k, *a.shape), a.dtype), shape)
      else:
        plain = make_train_step(loss_fn, o, **kwargs)
      if self.mesh is not None:
        step = HostEngine(data_parallel(make_train_step(
            loss_fn, o, axis_name="data", **kwargs), self.mesh),
                          prefetch=False)
      elif self.scan is not None:
        step = ScanEngine(plain, shape, *self.scan)
      else:
        step = HostEngine(jax.jit(plain, donate_argnums=0))
      self.compiled[cache_key] = (step, o, names)
    return self.compiled[cache_key]

  def accuracies(self, kind: str, masks, current, predictor=None,
                 top_k: int = 1) -> list:
    """Accuracy on every task's ``kind`` split (``"test"`` or ``"val"``),
    by the network's argmax (or top-``top_k``) or by the method's
    ``predictor`` (a name of ``Method.predictors``): on the device in one
    call where the splits fit (``DeviceEvaluator``), else split by split. A
    list per task (a list per member of those in a sweep)."""
    st, aux = self.state, ()
    step = self.eval_step if top_k == 1 else self.top_k_step
    if predictor is not None:
      prepare, step = self.predictors[predictor]
      aux = prepare(st.method_state, st.params, st.batch_stats)
    splits = [getattr(task, kind) for task in self.stream.tasks]
    masks = self._members(jax.numpy.asarray(masks))
    if self._on_device(splits):
      key = (kind, predictor, top_k)
      if key not in self.evaluators:
        predict = (None if predictor is None else
                   self.method.predictors(self.model)[predictor][1])
        self.evaluators[key] = DeviceEvaluator(
            splits, self.s["eval_batch_size"], self.model.apply, predict,
            members=self.k is not None, top_k=top_k)
      return self.evaluators[key](st.params, st.batch_stats, masks, aux)
    out = []
    for j, split in enumerate(splits):
      params, stats = self._eval_params(j, current)
      out.append(evaluate(step, params, stats, masks, split,
                          self.s["eval_batch_size"], aux))
    return out if self.k is None else np.transpose(out).tolist()

  def _eval_params(self, j, current):
    """The parameters the method predicts task ``j`` with."""
    st, method = self.state, self.method
    fn = lambda ms, p, s: method.eval_params(ms, p, s, j, current)
    if self.k is not None:
      fn = jax.vmap(fn)
    return fn(st.method_state, st.params, st.batch_stats)

  def _on_device(self, splits) -> bool:
    """Whether evaluation runs as one device computation: one device, the
    method predicts every task with the one model, and the splits fit."""
    from cljax.methods._base import Method
    return (self.mesh is None and self.device_eval_mb is not None and
            type(self.method).eval_params is Method.eval_params and
            DeviceEvaluator.nbytes(splits) <= self.device_eval_mb * 2 ** 20)

  def _templates(self, record):
    """What a checkpoint's pytrees restore into: the train state (with the
    optimizer state of the phase it was saved in) and, inside a phase with
    an optimizer of its own, the stashed main optimizer state."""
    pos = record.get("position")
    if not pos or not pos["stash"]:
      return {"state": self.state}
    _, phase_opt, _ = self.phase_step(
        self.method.phases(pos["task"])[pos["phase"]])
    return {"state": self.state._replace(
        opt_state=self._init_opt(phase_opt, self.state.params)),
            "stash": self.state.opt_state}

  def _say(self, msg):
    if self.progress:
      print(msg, file=sys.stderr)

  def run(self, checkpoints: Checkpoints | None, ident, checkpoint_every,
          defaults=None):
    with _compile_timer(self.compile_s):
      try:
        return self._run(checkpoints, ident, checkpoint_every, defaults)
      finally:
        for writer in self.writers:
          writer.close()

  def _run(self, checkpoints, ident, checkpoint_every, defaults):
    stream, method = self.stream, self.method
    t_count = stream.num_tasks
    prog, stash = None, None
    if checkpoints is not None:
      record = checkpoints.latest_record()
      if record is not None:  # before restoring: a run of another shape
        check_identity(checkpoints.directory, record["identity"], ident,
                       defaults)
      restored = checkpoints.restore(self._templates)
      if restored is not None:
        items, prog = restored
        check_identity(checkpoints.directory, prog["identity"], ident,
                       defaults)
        self.state, stash = items["state"], items.get("stash")
        pos = prog["position"]
        self._say(f"{method.name}: resuming "
                  + (f"after task {prog['done']} of {t_count}" if pos is None
                     else f"inside task {pos['task'] + 1} of {t_count} at "
                     f"step {self._host_step()}"))
    if prog is None:
      prog = {"identity": ident, "done": 0, "position": None, "rows": [],
              "val_rows": [], "curves": [], "train_s": [], "eval_s": [],
              "compile_s": [], "diverged": {},
              # b[j]: random-init accuracy on task j, heads masked as at j.
              "random_init": [evaluate(self.eval_step, self.state.params,
                                       self.state.batch_stats,
                                       self._members(stream.logit_masks(j)),
                                       task.test, self.s["eval_batch_size"])
                              for j, task in enumerate(stream.tasks)]}
    for writer in self.writers:  # what a killed attempt logged after this
      writer.truncate(self._host_step())

    def save(items, position):
      prog["position"] = position
      checkpoints.save(items, prog)

    for i in range(prog["done"], t_count):
      try:
        self._train_task(i, prog, stash, save if checkpoints else None,
                         checkpoint_every)
      except KeyboardInterrupt:
        self._say(f"\n{method.name}: interrupted in task {i + 1} of "
                  f"{t_count}" + ("; rerun the same command to resume after "
                                  f"task {prog['done']}" if checkpoints
                                  else ""))
        raise
      stash = None
      if checkpoints is not None:
        save({"state": self.state}, None)
    if self.k is None:
      return self._results(prog, lambda x: x, self.state)
    return [{"diverged": prog["diverged"][str(m)]}
            if str(m) in prog["diverged"] else
            self._results(prog, lambda x, m=m: x[m], member(self.state, m))
            for m in range(self.k)]

  def _results(self, prog, pick, state) -> dict:
    """The results of the run, or of the member that ``pick`` takes from
    each per-member value."""
    stream = self.stream
    rows = [pick(row) for row in prog["rows"]]
    random_init = [pick(a) for a in prog["random_init"]]
    r = np.asarray(rows)
    sizes = [len(task.test) for task in stream.tasks]
    b = None if stream.kind == "class" else random_init
    # The method's other classifiers (e.g. iCaRL's nearest mean) and the
    # top-k accuracy: their own accuracy matrices and metrics, beside the
    # network's argmax.
    extra = {}
    for name, p_rows in prog.get("predictor_rows", {}).items():
      p_rows = [pick(row) for row in p_rows]
      extra[f"accuracy_matrix_{name}"] = p_rows
      extra[f"metrics_{name}"] = metrics.summary(np.asarray(p_rows), None,
                                                 sizes)
    return {
        "method": self.method.name,
        "stream": stream.name,
        "accuracy_matrix": r.tolist(),
        # The same on the validation splits (for model selection), if every
        # task has one; else empty.
        "val_accuracy_matrix": [pick(row) for row in prog["val_rows"]],
        "random_init_accuracy": random_init,
        # FWT compares R[j-1][j] with b[j] under the same masks; in
        # class-IL task j's classes are masked until it is trained, so both
        # are 0 by construction and FWT is not applicable (left out).
        "metrics": metrics.summary(r, b, sizes),
        **extra,
        "curves": [{**c, "acc": pick(c["acc"])} for c in prog["curves"]],
        "curve_split": self.curve_split,
        "timings": {k: prog[k] for k in ("train_s", "eval_s", "compile_s")},
        "steps": int(state.step),
        "final_state": state,
    }

  def _start_task(self, i, masks):
    """The method's start hooks, the optimizer reset and the task's lr."""
    s = self.s
    self.state = self.state._replace(
        masks=self._members(jax.numpy.asarray(masks)))
    self.state = self.state._replace(method_state=_own(self._each(
        lambda m, st: m.on_task_start(self._ctx(i, masks, st)))))
    start = self._each(lambda m, st: m.start_params(self._ctx(i, masks, st)))
    if start is not None:  # e.g. a fresh network per task
      self.state = self.state._replace(
          params=_own(start[0]), batch_stats=_own(start[1]),
          opt_state=self._init_opt(self.opt, start[0]))
    if s["reset_optimizer"] and i > 0:
      self.state = self.state._replace(opt_state=self._init_opt(
          self.opt, self.state.params))
    if s["task_lrs"] is not None:
      self.state = self.state._replace(opt_state=set_learning_rate(
          self.state.opt_state, s["task_lrs"][i]))

  def _ctx(self, i, masks, st):
    return TaskContext(i, self.stream, self.model, st.params, st.batch_stats,
                       st.method_state, masks, self.s["seed"])

  def _check_finite(self, prog, term_names):
    """Raises on NaN/inf (see ``check_finite``); in a sweep, records each
    member that went NaN/inf (it no longer updates) and goes on."""
    if self.k is None:
      check_finite(self.state, term_names)
      return
    for m in range(self.k):
      if str(m) not in prog["diverged"]:
        try:
          check_finite(member(self.state, m), term_names)
        except FloatingPointError as err:
          prog["diverged"][str(m)] = str(err)

  def _train_task(self, i, prog, stash, save, checkpoint_every):
    """Trains task ``i``, from the start or from ``prog["position"]`` (a
    mid-task checkpoint), then evaluates it into ``prog``."""
    stream, method, s = self.stream, self.method, self.s
    masks = stream.logit_masks(i)
    pos = prog["position"]
    if pos is None:
      self._start_task(i, masks)
      pos = {"task": i, "phase": 0, "epoch": 0, "batch": 0, "elapsed": 0.0,
             "stash": False}
    split = method.train_split(stream, i)
    phases = method.phases(i)
    per_epoch = num_batches(len(split), s["batch_size"])
    epochs = s["epochs"] if s["task_epochs"] is None else s["task_epochs"][i]
    # Steps of each phase: its own examples or epochs, else the task's steps
    # budget (the last epoch cut short), else the task's epochs.
    budget = [-(-p.examples // s["batch_size"]) if p.examples else
              per_epoch * p.epochs if p.epochs else
              s["task_steps"] or per_epoch * epochs for p in phases]
    n_epochs = [-(-n // per_epoch) for n in budget]
    done = sum(budget[:pos["phase"]]) + per_epoch * pos["epoch"] + pos["batch"]
    host_step = self._host_step()  # one sync per task, not per step
    t0 = time.perf_counter() - pos["elapsed"]
    c0 = self.compile_s[0] - pos.get("compile_s", 0.0)
    bar = tqdm(total=sum(budget), initial=done,
               desc=f"{method.name}" + (f" ×{self.k}" if self.k else "") +
               f" task {i + 1}/{stream.num_tasks}",
               disable=not self.progress, leave=False)
    for p in range(pos["phase"], len(phases)):
      step, phase_opt, term_names = self.phase_step(phases[p])
      own_opt = phase_opt is not self.opt
      resuming = p == pos["phase"] and done > 0
      if not resuming:
        self.state = self.state._replace(method_state=_own(self._each(
            lambda m, st: m.on_phase_start(self._ctx(i, masks, st),
                                           phases[p]))))
      if own_opt:  # a phase's own optimizer state; the main one is stashed
        if resuming:
          main_opt_state = stash
        else:
          main_opt_state = self.state.opt_state
          self.state = self.state._replace(
              opt_state=self._init_opt(phase_opt, self.state.params))
      for epoch in range(pos["epoch"] if resuming else 0, n_epochs[p]):
        first = pos["batch"] if resuming and epoch == pos["epoch"] else 0
        extra = [] if phases[p].name == "train" else list(
            map(ord, phases[p].name))
        rng = np.random.default_rng([s["seed"], i, epoch, *extra])
        rows = batch_indices(len(split), s["batch_size"], rng, start=first,
                             stop=budget[p] - per_epoch * epoch)
        b = 0
        while b < len(rows):  # segments end where something is due
          n = min(len(rows) - b, self._until_due(host_step, checkpoint_every
                                                 if save else 0))
          self.state, terms = step.run(self.state, split, rows[b:b + n],
                                       self.key)
          b, host_step = b + n, host_step + n
          bar.update(n)
          if self.writers and self.log_every and (
              host_step % self.log_every == 0):
            values = jax.device_get(terms)
            for m, writer in enumerate(self.writers):
              writer.write_scalars(host_step, {
                  f"train/{k}": v if self.k is None else v[m]
                  for k, v in values.items()})
          if s["eval_every"] and host_step % s["eval_every"] == 0:
            self._check_finite(prog, term_names)
            acc = self.accuracies(self.curve_split, masks, i)
            prog["curves"].append({"step": host_step, "task": i, "acc": acc})
            self._log(host_step, f"{self.curve_split}_accuracy", acc)
          if save and checkpoint_every and host_step % checkpoint_every == 0:
            self._check_finite(prog, term_names)
            save({"state": self.state,
                  **({"stash": main_opt_state} if own_opt else {})},
                 {"task": i, "phase": p, "epoch": epoch, "batch": first + b,
                  "elapsed": time.perf_counter() - t0, "stash": own_opt,
                  "compile_s": self.compile_s[0] - c0})
        self._check_finite(prog, term_names)
      if own_opt:
        self.state = self.state._replace(opt_state=main_opt_state)
    bar.close()
    end = self._each(lambda m, st: m.end_params(self._ctx(i, masks, st)))
    if end is not None:  # e.g. a corrected head
      self.state = self.state._replace(params=_own(end[0]),
                                       batch_stats=_own(end[1]))
    self.state = self.state._replace(method_state=_own(self._each(
        lambda m, st: m.on_task_end(self._ctx(i, masks, st)))))
    jax.block_until_ready(self.state)
    t1, c1 = time.perf_counter(), self.compile_s[0]
    prog["rows"].append(self.accuracies("test", masks, i))
    self._log(host_step, "test_accuracy", prog["rows"][-1], i)
    # The method's other classifiers, and the top-k accuracy if asked for.
    others = {name: dict(predictor=name) for name in self.predictors}
    if self.top_k != 1:
      others[f"top{self.top_k}"] = dict(top_k=self.top_k)
    for name, how in others.items():
      prog.setdefault("predictor_rows", {}).setdefault(name, []).append(
          self.accuracies("test", masks, i, **how))
      self._log(host_step, f"test_accuracy_{name}",
                prog["predictor_rows"][name][-1], i)
    if all(len(task.val) for task in stream.tasks):
      prog["val_rows"].append(self.accuracies("val", masks, i))
    prog["train_s"].append(t1 - t0 - (c1 - c0))
    prog["eval_s"].append(time.perf_counter() - t1 - (self.compile_s[0] - c1))
    prog["compile_s"].append(self.compile_s[0] - c0)
    prog["done"] = i + 1
    prog["position"] = None

  def _until_due(self, step: int, checkpoint_every: int) -> int:
    """Steps from global step ``step`` to the next one where a log line, an
    evaluation or a checkpoint is due (at most the scan's chunk)."""
    limit = self.scan[1] if self.scan else 2 ** 31
    for every in (self.log_every if self.writers else 0,
                  self.s["eval_every"], checkpoint_every):
      if every:
        limit = min(limit, every - step % every)
    return limit

  def _log(self, step, name, accuracies, seen=None):
    """Accuracy on each task (and, after task ``seen``, the mean over the
    tasks seen) to each member's writer."""
    per_member = [accuracies] if self.k is None else accuracies
    for writer, acc in zip(self.writers, per_member):
      scalars = {f"{name}/task_{j + 1}": a for j, a in enumerate(acc)}
      if seen is not None:
        scalars[f"{name}/average_seen"] = float(np.mean(acc[:seen + 1]))
      writer.write_scalars(step, scalars)


def _own(tree):
  """Copies of ``tree``'s arrays (buffers the donating step may consume)."""
  return jax.tree.map(jax.numpy.array, tree)
