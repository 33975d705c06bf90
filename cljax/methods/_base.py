"""What a method is, as far as the task loop is concerned.

The loop (``cljax.train.run_stream``) knows no method by name; it calls only
the functions below. A method is a small subclass that overrides some of them:
its loss, its fixed-shape state and the hooks at the start and end of a task.
The base class is plain fine-tuning.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cljax.data._datasets import Split
from cljax.data._scenarios import Stream
from cljax.losses._cross_entropy import masked_cross_entropy
from cljax.models._functional import FunctionalModel
from cljax.models._heads import example_masks


class TaskContext(NamedTuple):
  """What a hook sees at the start or end of task ``index``.

  Attributes:
    index: the task's position in the stream.
    stream: the whole stream (hooks may read only tasks ``<= index``).
    model: the functional model (``apply`` and the initial state).
    params, batch_stats: the current model state.
    method_state: the method's current state.
    masks: ``(T, C)`` active-logit table for this task.
    seed: the run's seed (for a hook's own randomness, e.g. a random
      selection of exemplars).
    mesh: the data-parallel mesh (axis ``"data"``) the run trains on, or
      ``None`` on one device; a hook may split its work over it.
    reset_optimizer: whether the run resets its optimizer state at each
      task's start (a method with an optimizer state of its own follows it,
      e.g. DGR's generator).
  """
  index: int
  stream: Stream
  model: FunctionalModel
  params: Any
  batch_stats: Any
  method_state: Any
  masks: Any
  seed: int = 0
  mesh: Any = None
  reset_optimizer: bool = True


def task_cross_entropy(model: FunctionalModel, params, batch_stats, batch,
                       masks):
  """Mean masked cross-entropy of a training batch (each example over its
  task's active logits). Returns ``(ce, logits (B, C), new_batch_stats)``."""
  (logits, _), new_stats = model.apply(params, batch_stats, batch["x"],
                                       train=True)
  ce = jnp.mean(masked_cross_entropy(logits, batch["y"],
                                     example_masks(masks, batch["t"])))
  return ce, logits, new_stats


class Phase(NamedTuple):
  """A stage of training within a task.

  Attributes:
    name: selects the loss (``Method.phase_loss_fn``); each distinct name
      gets its own train step, compiled once per stream.
    epochs: passes over the task's data (``None``: the run's ``epochs``).
    head_only: train only ``params["head"]`` (the rest frozen), with an
      optimizer state of its own for the phase.
    lr_scale: multiplies the optimizer's updates (its learning rate, for SGD
      and Adam) in this phase, with an optimizer state of its own (e.g.
      End-to-End IL's balanced fine-tuning at a tenth of the rate).
    examples: if set, the phase lasts ``ceil(examples / batch size)``
      steps instead of ``epochs`` (e.g. passes over a memory rather than
      over the task's data).
    fresh_optimizer: an optimizer state of its own, new at the phase's
      start, as a new training run's (e.g. CPG's stages, each a run of
      its own in the authors' scripts); ``head_only`` and ``lr_scale`` imply
      it.
  """
  name: str = "train"
  epochs: int | None = None
  head_only: bool = False
  lr_scale: float = 1.0
  examples: int | None = None
  fresh_optimizer: bool = False


def head_labels(params) -> dict:
  """``"head"`` for parameters under ``params["head"]``, else ``"backbone"``."""
  return {k: jax.tree.map(lambda _, k=k: "head" if k == "head" else "backbone",
                          v) for k, v in params.items()}


def head_only(base: optax.GradientTransformation,
              params) -> optax.GradientTransformation:
  """``base`` on the head's parameters, zero updates elsewhere."""
  return optax.multi_transform({"head": base, "backbone": optax.set_to_zero()},
                               head_labels(params))


class Method:
  """Fine-tuning: cross-entropy on the current task's active classes.

  Subclasses override what their paper changes. Hyperparameters are
  constructor arguments, validated there (``ValueError`` naming the argument)
  and kept as attributes of the same names. Those in ``data_hparams`` are
  read as data: the step and the hooks use them only arithmetically, so
  ``with_hparams`` may set them to traced arrays and one ``jax.vmap``ped step
  trains a whole sweep (``cljax.train.vmap_step``).
  """

  name = "finetune"
  data_hparams: tuple[str, ...] = ()
  head = "linear"  # the classifier head it needs (cljax.models.HEADS)
  # The paper's own classifier where it is not the network's argmax: a key
  # of ``predictors`` (iCaRL's ``"nme"``). Its validation accuracies are
  # recorded too, and selection on validation reads them.
  classifier: str | None = None

  def hparams(self) -> dict:
    """``{name: value}`` of the float hyperparameters read as data."""
    return {k: getattr(self, k) for k in self.data_hparams}

  def with_hparams(self, **values) -> "Method":
    """A shallow copy with the hyperparameters ``values`` (names from
    ``data_hparams``; concrete numbers or traced arrays, not re-validated).
    The copy shares everything else, compiled helpers included."""
    unknown = sorted(set(values) - set(self.data_hparams))
    if unknown:
      raise ValueError(f"{self.name}: {unknown} not among the hyperparameters "
                       f"read as data {list(self.data_hparams)}")
    props = [k for k in values if isinstance(getattr(type(self), k, None),
                                             property)]
    if props:
      raise ValueError(f"{self.name}: {props} are properties; data_hparams "
                       "must name plain attributes")
    new = copy.copy(self)
    new.__dict__.update(values)
    return new

  # Parameter isolation predicts each task with its own part of the
  # network, so the task id must be given: task-IL streams only.
  task_incremental_only = False

  def check(self, stream: Stream) -> None:
    """Raises ``ValueError`` (naming the hyperparameter) if this method
    cannot run on ``stream`` (e.g. a memory larger than a task's data);
    called before anything trains."""
    if self.task_incremental_only and stream.kind != "task":
      raise ValueError(f"{self.name} predicts each task with its own part "
                       f"of the network: it needs a task-incremental "
                       f"stream, not {stream.kind!r}-incremental")

  def init_state(self, model: FunctionalModel, stream: Stream) -> Any:
    """The method's initial state: a pytree whose shapes never change over
    the stream (size anything per-task by ``stream.num_tasks``)."""
    return ()

  def optimizer(self, base: optax.GradientTransformation,
                params) -> optax.GradientTransformation:
    """The optimizer actually used (e.g. with some parameters frozen)."""
    return base

  def train_split(self, stream: Stream, index: int) -> Split:
    """The examples trained on during task ``index``."""
    return stream.tasks[index].train

  def loss_fn(self, model: FunctionalModel):
    """``(params, batch_stats, method_state, batch, masks, rng) ->
    (loss, (terms, new_batch_stats))`` for ``cljax.train.make_train_step``."""

    def loss(params, batch_stats, method_state, batch, masks, rng):
      ce, _, new_stats = task_cross_entropy(model, params, batch_stats, batch,
                                            masks)
      return ce, ({"ce": ce}, new_stats)

    return loss

  def phases(self, index: int) -> tuple[Phase, ...]:
    """The training phases of task ``index`` (default: one, all epochs)."""
    return (Phase(),)

  def phase_loss_fn(self, model: FunctionalModel, name: str):
    """The loss of phase ``name`` (default: ``loss_fn`` for every phase)."""
    return self.loss_fn(model)

  # Optional per-step hooks (see cljax.train.make_train_step): a state
  # update after each step (SI, a reservoir memory), optimizer extra args
  # (GEM), a batch extension before the loss (replay).
  update_method_state = None
  extra_args = None
  batch_fn = None

  def on_task_start(self, ctx: TaskContext) -> Any:
    return ctx.method_state

  def start_params(self, ctx: TaskContext):
    """``(params, batch_stats)`` to start task ``ctx.index`` from (after
    ``on_task_start``), or ``None`` to go on from the current ones."""
    return None

  def end_params(self, ctx: TaskContext):
    """``(params, batch_stats)`` the task ends with, set after its training
    and before ``on_task_end`` and the evaluation (e.g. WA's aligned head),
    or ``None`` to keep the trained ones; ``(params, batch_stats,
    method_state)`` sets the method state too (e.g. CPG's chosen pruning
    ratio)."""
    return None

  def eval_params(self, method_state, params, batch_stats, task: int,
                  current: int):
    """``(params, batch_stats)`` that predict for ``task`` after training
    task ``current`` (default: the one current model)."""
    return params, batch_stats

  def on_task_end(self, ctx: TaskContext) -> Any:
    return ctx.method_state

  def on_phase_start(self, ctx: TaskContext, phase: Phase) -> Any:
    """The method state at the start of ``phase`` of task ``ctx.index``
    (after ``on_task_start`` for the first phase)."""
    return ctx.method_state

  def network_use(self, method_state, num_tasks: int) -> list | None:
    """Parameter isolation's fraction of the network each of the
    ``num_tasks`` tasks took (of its weights, or of its units), recorded as
    the results' ``network_use`` after the stream; ``None`` for the other
    methods."""
    return None

  def phase_skipped(self, ctx: TaskContext, phase: Phase) -> bool:
    """Whether ``phase`` is skipped, asked after ``on_phase_start`` (e.g.
    CPG's growth once the task meets its goal). A sweep skips it only when
    every member does, so a member that would skip must make the phase's
    updates zero (its step count still moves on; default: ``False``)."""
    return False

  def phase_params(self, ctx: TaskContext, phase: Phase):
    """``(params, batch_stats)`` to start ``phase`` from (after
    ``on_phase_start``, e.g. DEN's duplicated units), or ``None`` to go on
    from the current ones."""
    return None

  def predictors(self, model: FunctionalModel) -> dict:
    """Classifiers besides the network's argmax, evaluated too (each gets an
    accuracy matrix of its own): ``{name: (prepare, predict)}`` with
    ``prepare(method_state, params, batch_stats) -> aux`` run once per
    evaluation and ``predict(params, batch_stats, aux, x, masks (B, C)) ->
    (B,)`` predictions (e.g. iCaRL's nearest mean of exemplars)."""
    return {}
