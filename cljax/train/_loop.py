"""The task-stream runner.

For each task: the method's start hook, training for the configured epochs
(with optional evaluation every ``eval_every`` steps), the method's end hook,
evaluation on every task's test split (one row of the accuracy matrix), and a
checkpoint. It calls only the ``Method`` interface and knows no method by
name.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Callable, Sequence

import jax
import numpy as np
import optax
from tqdm.auto import tqdm

from cljax import metrics
from cljax.data._batching import num_batches, train_batches
from cljax.data._scenarios import Stream
from cljax.methods._base import Method, Phase, TaskContext, head_only
from cljax.models._functional import FunctionalModel
from cljax.train import _checkpoint
from cljax.train._step import (check_finite, data_parallel, evaluate,
                               init_train_state, make_eval_step,
                               make_train_step)


def _with_augmentation(loss_fn, augment):
  if augment is None:
    return loss_fn

  def loss(params, batch_stats, method_state, batch, masks, rng):
    k_aug, rng = jax.random.split(rng)
    batch = {**batch, "x": augment(k_aug, batch["x"])}
    return loss_fn(params, batch_stats, method_state, batch, masks, rng)

  return loss


def set_learning_rate(opt_state, lr: float):
  """``opt_state`` with every ``optax.inject_hyperparams`` learning rate set
  to ``lr`` (a state value: nothing recompiles)."""
  found = []

  def put(node):
    if isinstance(node, optax.InjectStatefulHyperparamsState) and (
        "learning_rate" in node.hyperparams):
      found.append(node)
      hp = dict(node.hyperparams)
      hp["learning_rate"] = jax.numpy.asarray(
          lr, hp["learning_rate"].dtype)
      return node._replace(hyperparams=hp)
    return node

  out = jax.tree.map(put, opt_state, is_leaf=lambda n: isinstance(
      n, optax.InjectStatefulHyperparamsState))
  if not found:
    raise ValueError("task_lrs needs an optimizer made with "
                     "optax.inject_hyperparams(...)(learning_rate=...)")
  return out


def _fingerprint(stream, method, settings) -> str:
  desc = json.dumps({"stream": stream.name, "tasks": stream.num_tasks,
                     "sizes": [len(t.train) for t in stream.tasks],
                     "method": method.name,
                     # public hyperparameters only: private attributes (e.g.
                     # jitted helpers) differ between processes
                     "hparams": repr({k: v for k, v in vars(method).items()
                                      if not k.startswith("_")}),
                     **settings}, sort_keys=True, default=str)
  return hashlib.sha256(desc.encode()).hexdigest()[:16]


def run_stream(stream: Stream, method: Method, model: FunctionalModel,
               optimizer: optax.GradientTransformation, *, epochs: int,
               batch_size: int, seed: int = 0, eval_every: int = 0,
               eval_batch_size: int = 1000, reset_optimizer: bool = True,
               augment: Callable | None = None, mesh=None,
               checkpoint_dir: str | None = None,
               progress: bool = True,
               task_lrs: Sequence[float] | None = None) -> dict:
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
    checkpoint_dir: where to checkpoint after each task and resume from.
    progress: show a progress bar.
    task_lrs: optional learning rate per task (e.g. task A at the standard
      lr, later tasks lower); ``optimizer`` must come from
      ``optax.inject_hyperparams`` so the lr is part of its state.
  Returns:
    A dict with ``accuracy_matrix`` (``R[i][j]``, test splits),
    ``val_accuracy_matrix`` (validation splits), ``random_init_accuracy``,
    ``metrics``, ``curves``, ``timings`` and ``steps``.
  """
  if epochs < 1:
    raise ValueError(f"epochs must be >= 1, got {epochs}")
  if batch_size < 1 or eval_batch_size < 1:
    raise ValueError("batch_size and eval_batch_size must be >= 1")
  if eval_every < 0:
    raise ValueError(f"eval_every must be >= 0, got {eval_every}")
  if task_lrs is not None and (len(task_lrs) != stream.num_tasks or
                               min(task_lrs) <= 0):
    raise ValueError(f"task_lrs must have {stream.num_tasks} values > 0, got "
                     f"{task_lrs}")
  t_count = stream.num_tasks
  for k in range(t_count):
    n = len(method.train_split(stream, k))
    if n < batch_size:
      raise ValueError(f"task {k} has {n} training examples, fewer than "
                       f"batch_size={batch_size}")
  out_dim = jax.tree.leaves(model.params["head"])[0].shape[-1]
  if out_dim != stream.num_classes:
    raise ValueError(f"model head has {out_dim} outputs, stream has "
                     f"{stream.num_classes} classes")

  opt = method.optimizer(optimizer, model.params)
  kwargs = dict(update_method_state=method.update_method_state,
                extra_args=method.extra_args)
  eval_step = make_eval_step(model.apply)
  key = jax.random.PRNGKey(seed)

  # Hooks may return arrays that alias the params (e.g. an anchor); the step
  # donates its state, so the method state gets buffers of its own.
  own = lambda tree: jax.tree.map(jax.numpy.array, tree)
  state = init_train_state(model.params, model.batch_stats, opt,
                           own(method.init_state(model, stream)),
                           stream.logit_masks(0))
  example = {k: getattr(stream.tasks[0].train, k)[:batch_size] for k in "xyt"}
  compiled = {}  # one train step per distinct phase, compiled once

  def phase_step(phase: Phase):
    """``(step, optimizer, term names)`` of ``phase``."""
    if (phase.name, phase.head_only) not in compiled:
      loss_fn = _with_augmentation(method.phase_loss_fn(model, phase.name),
                                   augment)
      o = head_only(opt, model.params) if phase.head_only else opt
      if mesh is None:
        step = jax.jit(make_train_step(loss_fn, o, **kwargs), donate_argnums=0)
      else:
        step = data_parallel(make_train_step(loss_fn, o, axis_name="data",
                                             **kwargs), mesh)
      names = list(jax.eval_shape(loss_fn, model.params, model.batch_stats,
                                  state.method_state, example, state.masks,
                                  key)[1][0])
      compiled[phase.name, phase.head_only] = (step, o, names)
    return compiled[phase.name, phase.head_only]

  def accuracies(split_of, masks, current) -> list:
    out = []
    for j, task in enumerate(stream.tasks):
      params, stats = method.eval_params(state.method_state, state.params,
                                         state.batch_stats, j, current)
      out.append(evaluate(eval_step, params, stats, masks, split_of(task),
                          eval_batch_size))
    return out

  curve_split = lambda task: task.val if len(task.val) else task.test
  fingerprint = _fingerprint(stream, method, dict(
      epochs=epochs, batch_size=batch_size, seed=seed, eval_every=eval_every,
      reset_optimizer=reset_optimizer,
      **({"task_lrs": list(task_lrs)} if task_lrs is not None else {})))
  prog = {"fingerprint": fingerprint, "done": 0, "rows": [], "val_rows": [],
          "curves": [],
          "train_s": [], "eval_s": [],
          # b[j]: random-init accuracy on task j, heads masked as at task j.
          "random_init": [evaluate(eval_step, state.params, state.batch_stats,
                                   stream.logit_masks(j), task.test,
                                   eval_batch_size)
                          for j, task in enumerate(stream.tasks)]}
  if checkpoint_dir:
    restored = _checkpoint.load(checkpoint_dir, state, fingerprint)
    if restored is not None:
      state, prog = restored
      prog.setdefault("val_rows", [])  # checkpoints from before val rows

  for i in range(prog["done"], t_count):
    masks = stream.logit_masks(i)
    ctx = lambda: TaskContext(i, stream, model, state.params, state.batch_stats,
                              state.method_state, masks)
    state = state._replace(masks=jax.numpy.asarray(masks))
    state = state._replace(method_state=own(method.on_task_start(ctx())))
    start = method.start_params(ctx())
    if start is not None:  # e.g. a fresh network per task
      state = state._replace(params=own(start[0]), batch_stats=own(start[1]),
                             opt_state=opt.init(start[0]))
    if reset_optimizer and i > 0:
      state = state._replace(opt_state=opt.init(state.params))
    if task_lrs is not None:
      state = state._replace(opt_state=set_learning_rate(state.opt_state,
                                                         task_lrs[i]))
    split = method.train_split(stream, i)
    phases = method.phases(i)
    per_epoch = num_batches(len(split), batch_size)
    total = sum(per_epoch * (p.epochs or epochs) for p in phases)
    host_step = int(state.step)  # one sync per task, not per step
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc=f"{method.name} task {i + 1}/{t_count}",
               disable=not progress, leave=False)
    for phase in phases:
      step, phase_opt, term_names = phase_step(phase)
      main_opt_state = state.opt_state
      if phase_opt is not opt:  # a phase's own optimizer state
        state = state._replace(opt_state=phase_opt.init(state.params))
      for epoch in range(phase.epochs or epochs):
        extra = [] if phase.name == "train" else list(map(ord, phase.name))
        rng = np.random.default_rng([seed, i, epoch, *extra])
        for batch in train_batches(split, batch_size, rng):
          state, _ = step(state, batch, key)
          bar.update()
          host_step += 1
          if eval_every and host_step % eval_every == 0:
            check_finite(state, term_names)
            prog["curves"].append({"step": host_step, "task": i,
                                   "acc": accuracies(curve_split, masks, i)})
        check_finite(state, term_names)
      if phase_opt is not opt:
        state = state._replace(opt_state=main_opt_state)
    bar.close()
    state = state._replace(method_state=own(method.on_task_end(ctx())))
    jax.block_until_ready(state)
    t1 = time.perf_counter()
    prog["rows"].append(accuracies(lambda task: task.test, masks, i))
    if all(len(task.val) for task in stream.tasks):
      prog["val_rows"].append(accuracies(lambda task: task.val, masks, i))
    prog["train_s"].append(t1 - t0)
    prog["eval_s"].append(time.perf_counter() - t1)
    prog["done"] = i + 1
    if checkpoint_dir:
      _checkpoint.save(checkpoint_dir, state, prog)

  r = np.asarray(prog["rows"])
  sizes = [len(task.test) for task in stream.tasks]
  return {
      "method": method.name,
      "stream": stream.name,
      "accuracy_matrix": r.tolist(),
      # The same on the validation splits (for model selection), if every
      # task has one; else empty.
      "val_accuracy_matrix": prog["val_rows"],
      "random_init_accuracy": prog["random_init"],
      "metrics": metrics.summary(r, prog["random_init"], sizes),
      "curves": prog["curves"],
      "timings": {"train_s": prog["train_s"], "eval_s": prog["eval_s"]},
      "steps": int(state.step),
      "final_state": state,
  }
