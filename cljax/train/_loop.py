"""The task loop (``_Run``, set up by ``_run.run_stream``/``run_sweep``).

For each task: the method's start hook, training for the configured epochs
(with optional evaluation every ``eval_every`` steps), the method's end hook,
evaluation on every task's test split (one row of the accuracy matrix), and a
checkpoint. It calls only the ``Method`` interface and knows no method by
name.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from cljax import metrics
from cljax._distributed import (data_axis_mesh, is_primary, one_device,
                                replicate)
from cljax.data._batching import batch_indices, num_batches
from cljax.data._datasets import Split
from cljax.methods._base import Method, Phase, TaskContext
from cljax.train._checkpoint import Checkpoints, check_identity
from cljax.train._epochs import HostEngine, ScanEngine
from cljax.train._phases import phase_parts, set_learning_rate
from cljax.train._sweep import member, member_step, stack, stack_hparams
from cljax.train._evaluate import (DeviceEvaluator, evaluate,
                                   make_eval_step)
from cljax.train._step import (check_finite, data_parallel,
                               init_train_state, make_train_step,
                               nonfinite_message)


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
  hooks run member by member, and accuracies carry the member axis first.
  With ``own`` (``(streams, models)``, one per member, and
  ``settings["seed"]`` a seed per member), each member also has its own
  data, initialisation, batches and keys: the engines and evaluators take
  a split per member (``_of_streams``), stacked on the member axis, and
  its hooks run on its own copy of the method, set up on its own stream
  (what ``init_state`` keeps on the method, e.g. a rehearsal method's
  padded class size, is each stream's)."""

  def __init__(self, stream, method, model, optimizer, settings, *, members,
               own, mesh, progress, writer, log_every, scan, device_eval_mb):
    self.stream, self.method, self.model = stream, method, model
    self.own = own is not None
    self.streams, self.models = own if self.own else ([stream], [model])
    self.seeds = settings["seed"] if self.own else [settings["seed"]]
    # Each member's method (the run's own first: the steps trace it).
    self.methods = [method] + [copy.copy(method)
                               for _ in self.streams[1:]]
    self.s, self.mesh, self.progress = settings, mesh, progress
    self.scan = scan  # (data size, chunk) for the scan engine, or None
    # Evaluation on the device (None: split by split), and its evaluators.
    self.device_eval_mb, self.evaluators = device_eval_mb, {}
    # Evaluation batches: ``eval_batch_size``, or the largest split where
    # every split is smaller: split by split, each split's last batch is
    # padded, and a split of 40 examples in batches of 1,000 spent 25x the
    # forward passes it needs. On the device, where the splits are padded
    # once all together, smaller batches cost more iterations instead (an
    # MLP's evaluation of 20-200-example splits took 13-20% longer); both
    # paths take the same size, so that they agree to the bit. One size for
    # the whole stream, so each evaluation compiles once. Predictions are
    # those of any batch size up to float rounding (a kernel's summation
    # order can depend on the batch).
    self.eval_batch = min(settings["eval_batch_size"], max(
        [1] + [len(getattr(task, kind)) for st in self.streams
               for task in st.tasks for kind in ("test", "val")]))
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
    sweep = dict(members=self.k is not None, member_data=self.own)
    self.eval_step = make_eval_step(model.apply, **sweep)
    self.top_k = settings.get("top_k", 1)
    self.top_k_step = make_eval_step(model.apply, top_k=self.top_k, **sweep)
    # The method's other classifiers: name -> (jitted prepare, eval step).
    self.predictors = {
        name: (jax.jit(prepare if members is None else jax.vmap(prepare)),
               make_eval_step(model.apply, predict, **sweep))
        for name, (prepare, predict) in method.predictors(model).items()}
    if method.classifier is not None and method.classifier not in (
        self.predictors):
      raise ValueError(f"{method.name}: classifier {method.classifier!r} is "
                       f"none of its predictors {sorted(self.predictors)}")
    keys = [jax.random.PRNGKey(sd) for sd in self.seeds]
    self.key = stack(keys) if self.own else keys[0]
    self.compiled = {}  # one train step per distinct phase, compiled once
    # Hooks may return arrays that alias the params (e.g. an anchor); the
    # step donates its state, so the method state gets buffers of its own.
    init = [init_train_state(md.params, md.batch_stats, self.opt,
                             _own(m.init_state(md, st)),
                             stream.logit_masks(0))
            for m, st, md in zip(self.methods, self.streams, self.models)]
    self.state = stack(init) if self.own else self._members(init[0])

  def _of_streams(self, get):
    """``get(stream)`` of the run's stream, or a list of each member's
    (members with streams of their own)."""
    return [get(st) for st in self.streams] if self.own else get(self.stream)

  def _members(self, tree):
    """``tree`` as every member's (stacked K times in a sweep)."""
    return tree if self.k is None else stack([tree] * self.k)

  def _init_opt(self, optimizer, params):
    """``optimizer``'s fresh state for ``params`` (each member's)."""
    return (optimizer.init(params) if self.k is None else
            jax.vmap(optimizer.init)(params))

  def _each(self, hook):
    """``hook(method, state, k)`` of the run (``k`` = 0), or of each member
    ``k`` with its own method and state, stacked (``None`` where the hook
    returns ``None``)."""
    if self.k is None:
      if self.mesh is None:
        return hook(self.method, self.state, 0)
      # The hook works on one device's copy; what it returns goes back to
      # the mesh, replicated, where the step and the evaluation find it.
      return replicate(hook(self.method, one_device(self.state), 0),
                       NamedSharding(self.mesh, PartitionSpec()))
    # Copies made now share what their method has set up (init_state).
    outs = [hook(self.methods[i if self.own else 0].with_hparams(**{
        n: float(v[i]) for n, v in self.hp.items()}), member(self.state, i),
                 i) for i in range(self.k)]
    return None if outs[0] is None else stack(outs)

  def _host_step(self) -> int:
    return int(np.ravel(jax.device_get(self.state.step))[0])

  def phase_step(self, phase: Phase):
    """``(engine, optimizer, term names)`` of ``phase``; the engine runs
    its train step over rows of batch indices (``_epochs``)."""
    cache_key = (phase.name, phase.head_only, phase.lr_scale,
                 phase.fresh_optimizer)
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
                             member(self.key, 0) if self.own else self.key)
      names = list(shape)
      if self.k is not None:  # one vmapped step of every member
        each = 0 if self.own else None  # batches and keys of its own
        vstep = jax.vmap(member_step(method, model, self.base_opt, phase,
                                     self.s["augment"]),
                         in_axes=(0, 0, each, each))
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
        step = ScanEngine(plain, shape, *self.scan, members=self.own)
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
      with data_axis_mesh(self.mesh):  # e.g. NME's means, split over it
        aux = prepare(st.method_state, st.params, st.batch_stats)
    splits = [self._of_streams(lambda st, j=j: getattr(st.tasks[j], kind))
              for j in range(self.stream.num_tasks)]
    masks = self._members(jax.numpy.asarray(masks))
    if self._on_device(splits):
      key = (kind, predictor, top_k)
      if key not in self.evaluators:
        predict = (None if predictor is None else
                   self.method.predictors(self.model)[predictor][1])
        self.evaluators[key] = DeviceEvaluator(
            splits, self.eval_batch, self.model.apply, predict,
            members=self.k is not None, member_data=self.own, top_k=top_k)
      return self.evaluators[key](st.params, st.batch_stats, masks, aux)
    out = []
    for j, split in enumerate(splits):
      params, stats = self._eval_params(j, current)
      out.append(evaluate(step, params, stats, masks, split,
                          self.eval_batch, aux))
    return out if self.k is None else np.transpose(out).tolist()

  def _eval_params(self, j, current):
    """The parameters the method predicts task ``j`` with."""
    st, method = self.state, self.method
    if self.k is None:
      return method.eval_params(st.method_state, st.params, st.batch_stats,
                                j, current)
    # Each member predicts with its own hyperparameters (e.g. HAT's smax).
    fn = lambda hp, ms, p, s: method.with_hparams(**hp).eval_params(
        ms, p, s, j, current)
    return jax.vmap(fn)(self.hp, st.method_state, st.params, st.batch_stats)

  def _on_device(self, splits) -> bool:
    """Whether evaluation runs as one device computation: one device, the
    method predicts every task with the one model, and the splits fit."""
    return (self.mesh is None and self.device_eval_mb is not None and
            type(self.method).eval_params is Method.eval_params and
            DeviceEvaluator.nbytes(jax.tree.leaves(
                splits, is_leaf=lambda s: isinstance(s, Split))) <=
            self.device_eval_mb * 2 ** 20)

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
    """Where a run resumes or stopped: said even without progress bars
    (by process 0 alone in a distributed run)."""
    if is_primary():
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
    saved = {}  # the step of the last checkpoint inside a task
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
        saved["step"] = self._host_step()
        self._say(f"{method.name}: resuming "
                  + (f"after task {prog['done']} of {t_count}" if pos is None
                     else f"inside task {pos['task'] + 1} of {t_count} at "
                     f"step {self._host_step()}"))
    if prog is None:
      prog = {"identity": ident, "done": 0, "position": None, "rows": [],
              "val_rows": [], "curves": [], "train_s": [], "eval_s": [],
              "compile_s": [], "diverged": {},
              # b[j]: random-init accuracy on task j, heads masked as at j
              # and predicted through the method's eval_params as R[j-1][j]
              # is (current = j - 1), on the initial state: e.g. DEN's
              # initial units, CPG's available ones, a random PathNet path,
              # HAT's untrained (half-open) gates.
              "random_init": [evaluate(self.eval_step,
                                       *self._eval_params(j, max(j - 1, 0)),
                                       self._members(stream.logit_masks(j)),
                                       self._of_streams(
                                           lambda st, j=j: st.tasks[j].test),
                                       self.eval_batch)
                              for j in range(t_count)]}
    for writer in self.writers:  # what a killed attempt logged after this
      writer.truncate(self._host_step())

    def save(items, position, step=None):
      prog["position"] = position
      checkpoints.save(items, prog)
      saved["step"] = step  # (the caller's count: no device sync here)

    for i in range(prog["done"], t_count):
      try:
        self._train_task(i, prog, stash, save if checkpoints else None,
                         checkpoint_every)
      except KeyboardInterrupt:
        where = (f"inside task {i + 1} at step {saved['step']}"
                 if prog["position"] is not None else
                 f"after task {prog['done']}" if prog["done"] else
                 "from the start")
        self._say(f"\n{method.name}: interrupted in task {i + 1} of "
                  f"{t_count}" + (f"; rerun the same command to resume {where}"
                                  if checkpoints else ""))
        raise
      stash = None
      if checkpoints is not None:
        save({"state": self.state}, None)
    if self.k is None:
      return self._results(prog, lambda x: x, self.state, self.stream)
    return [{"diverged": prog["diverged"][str(m)]}
            if str(m) in prog["diverged"] else
            self._results(prog, lambda x, m=m: x[m], member(self.state, m),
                          self.streams[m if self.own else 0])
            for m in range(self.k)]

  def _results(self, prog, pick, state, stream) -> dict:
    """The results of the run, or of the member that ``pick`` takes from
    each per-member value (on its ``stream``)."""
    rows = [pick(row) for row in prog["rows"]]
    random_init = [pick(a) for a in prog["random_init"]]
    r = np.asarray(rows)
    sizes = [len(task.test) for task in stream.tasks]
    b = None if stream.kind == "class" else random_init
    # The method's other classifiers (e.g. iCaRL's nearest mean) and the
    # top-k accuracy: their own accuracy matrices and metrics, beside the
    # network's argmax.
    extra = {}
    use = self.method.network_use(jax.device_get(state.method_state),
                                  stream.num_tasks)
    for name, p_rows in prog.get("predictor_rows", {}).items():
      p_rows = [pick(row) for row in p_rows]
      extra[f"accuracy_matrix_{name}"] = p_rows
      extra[f"metrics_{name}"] = metrics.summary(np.asarray(p_rows), None,
                                                 sizes)
    if self.method.classifier is not None:  # the paper's own classifier
      name = self.method.classifier
      extra["classifier"] = name
      extra[f"val_accuracy_matrix_{name}"] = [
          pick(row) for row in prog.get("classifier_val_rows", [])]
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
        **({} if use is None else {"network_use": use}),
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
        lambda m, st, k: m.on_task_start(self._ctx(i, masks, st, k)))))
    start = self._each(lambda m, st, k: m.start_params(self._ctx(i, masks, st, k)))
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

  def _ctx(self, i, masks, st, k):
    """Task ``i``'s context for member ``k`` (its stream, model and seed
    where it has its own) in state ``st``."""
    k = k if self.own else 0
    return TaskContext(i, self.streams[k], self.models[k], st.params,
                       st.batch_stats, st.method_state, masks, self.seeds[k],
                       self.mesh, self.s["reset_optimizer"])

  def _check_finite(self, prog, term_names):
    """Raises on NaN/inf (see ``check_finite``); in a sweep, records each
    member that went NaN/inf (it no longer updates) and goes on."""
    if self.k is None:
      check_finite(self.state, term_names)
      return
    bad, term = jax.device_get((self.state.nonfinite_step,
                                self.state.nonfinite_term))  # one transfer
    for m in np.flatnonzero(bad >= 0):
      prog["diverged"].setdefault(str(m), nonfinite_message(
          int(bad[m]), int(term[m]), term_names))

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
    split = ([m.train_split(st, i) for m, st in zip(self.methods,
                                                    self.streams)]
             if self.own else method.train_split(stream, i))
    size = len(split[0] if self.own else split)  # every member's
    phases = method.phases(i)
    per_epoch = num_batches(size, s["batch_size"])
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
            lambda m, st, k: m.on_phase_start(self._ctx(i, masks, st, k),
                                           phases[p]))))
        moved = self._each(lambda m, st, k: m.phase_params(
            self._ctx(i, masks, st, k), phases[p]))
        if moved is not None:
          self.state = self.state._replace(params=_own(moved[0]),
                                           batch_stats=_own(moved[1]))
        if np.all(jax.device_get(self._each(lambda m, st, k: m.phase_skipped(
            self._ctx(i, masks, st, k), phases[p])))):
          bar.update(budget[p])
          continue
      if own_opt:  # a phase's own optimizer state; the main one is stashed
        if resuming:
          main_opt_state = stash
        else:
          main_opt_state = self.state.opt_state
          fresh = self._init_opt(phase_opt, self.state.params)
          if s["task_lrs"] is not None:  # the task's rate, as the main one
            fresh = set_learning_rate(fresh, s["task_lrs"][i])
          self.state = self.state._replace(opt_state=fresh)
      for epoch in range(pos["epoch"] if resuming else 0, n_epochs[p]):
        first = pos["batch"] if resuming and epoch == pos["epoch"] else 0
        extra = [] if phases[p].name == "train" else list(
            map(ord, phases[p].name))
        # (steps, B) rows of indices; (steps, K, B) with seeds of their own
        rows = np.stack([batch_indices(
            size, s["batch_size"], np.random.default_rng(
                [seed, i, epoch, *extra]), start=first,
            stop=budget[p] - per_epoch * epoch) for seed in self.seeds],
                        axis=1)
        rows = rows if self.own else rows[:, 0]
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
                  "compile_s": self.compile_s[0] - c0}, host_step)
        self._check_finite(prog, term_names)
      if own_opt:
        self.state = self.state._replace(opt_state=main_opt_state)
    bar.close()
    end = self._each(lambda m, st, k: m.end_params(self._ctx(i, masks, st, k)))
    if end is not None:  # e.g. a corrected head
      self.state = self.state._replace(params=_own(end[0]),
                                       batch_stats=_own(end[1]))
      if len(end) == 3:
        self.state = self.state._replace(method_state=_own(end[2]))
    self.state = self.state._replace(method_state=_own(self._each(
        lambda m, st, k: m.on_task_end(self._ctx(i, masks, st, k)))))
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
      if self.method.classifier is not None:  # selection reads it
        prog.setdefault("classifier_val_rows", []).append(self.accuracies(
            "val", masks, i, predictor=self.method.classifier))
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
