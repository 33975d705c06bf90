"""Compacting, Picking and Growing (Hung, Tu, Wu, Chen, Chan & Chen 2019,
"Compacting, Picking and Growing for Unforgetting Continual Learning",
NeurIPS)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax import _validate
from cljax.data._streamed import materialise
from cljax.losses._cross_entropy import masked_cross_entropy
from cljax.methods._base import Method, Phase, TaskContext
from cljax.methods.packnet import magnitude_rank, scale_by_tree
from cljax.models._heads import example_masks
from cljax.models._units import (connection_min, layer_at, unit_layers,
                                 with_layer)

THRESHOLD = 5e-3  # Piggyback's (and CPG's) binarisation threshold
PICK_INIT = 1e-2  # the real-valued mask's initial value: every weight picked


def binarise(pick):
  """The picking mask ``1[m > 5e-3]`` in the forward pass, with the
  straight-through gradient ``d/dm = 1`` (Mallya et al. 2018's Piggyback,
  which CPG's picking follows)."""
  hard = (pick > THRESHOLD).astype(pick.dtype)
  return hard + pick - jax.lax.stop_gradient(pick)


def release_smallest(weights, owner, task: int, count):
  """``owner`` with the ``count`` weights of smallest magnitude among those
  task ``task`` holds (``owner == task + 1``) released (0)."""
  own = owner == task + 1
  return jnp.where(own & (magnitude_rank(weights, own) < count), 0, owner)


def cubic_sparsity(final: float, step: int, steps: int) -> float:
  """Zhu & Gupta's (2017) gradual pruning schedule: ``s_t = s_f (1 - (1 -
  t / n)^3)`` from 0 to ``s_f`` over ``n`` pruning steps."""
  return final * (1 - (1 - step / steps) ** 3)


def _fresh_mask(params):
  """``params`` with the picking mask at ``1e-2`` (every weight picked)."""
  return {**params, "pick": jax.tree.map(
      lambda p: jnp.full_like(p, PICK_INIT), params["pick"])}


class CPG(Method):
  """CPG: each task trains the free weights and a picking mask over the
  weights earlier tasks kept, grows the network until an accuracy goal is
  met, is compacted by gradual pruning to the largest ratio that still
  meets the goal, and retrains its picking mask; what it keeps is frozen
  (task-IL).

  Task ``k``, as the authors' scripts run it:

  * ``train``: the free weights (of the available units) train together
    with a real-valued mask over the weights tasks ``< k`` kept, binarised
    at ``5e-3`` (``binarise``; from ``1e-2``, all picked; its updates
    scaled by ``mask_lr_scale``, as the authors give the mask a rate of its
    own): the network computes ``W_free + m_k * W_kept``.
  * ``grow`` (when growing is possible: ``goal > 0`` and ``initial_units <
    1``), up to ``ceil(1 / grow)`` times: while the task's accuracy
    (validation split, else training; ``_accuracy``) is below ``goal`` and
    units are left, ``grow`` more units per hidden layer become available
    (sizes are pre-allocated: ``model.hidden`` is the ceiling) and the task
    trains on for ``grow_epochs`` (the task's budget by default) on the
    wider network; once the goal is met or the layers are full, the
    remaining ``grow`` phases are skipped.
  * ``compact``, ``rounds`` times, at ``compact_lr_scale`` of the rate:
    each releases the task's smallest-magnitude weights up to the cubic
    schedule's fraction of them (``cubic_sparsity``, ending at ``prune``)
    and retrains the rest for ``compact_epochs``, the mask frozen; each
    round goes on from the last. The accuracy after each round is
    measured; the task keeps the largest pruning ratio whose accuracy is at
    least ``goal`` (the authors' ``choose_appropriate_pruning_ratio``, with
    no accuracy loss allowed), or none if no ratio meets it; if the task
    missed the goal before pruning with the layers full, the last round's
    (the authors prune regardless then). ``goal = 0`` keeps every round.
  * ``retrain`` (tasks ``k > 0``, when ``retrain``): from the kept
    ratio's network, the picking mask restarts at ``1e-2`` and retrains
    with the task's kept weights (at ``compact_lr_scale``; the mask at a
    fifth of its ``train`` rate: the authors' 1e-4 against 5e-4); the task
    keeps the result if it is more accurate than retraining's start, else
    the kept ratio's network (the authors' ``choose_retrain_or_not``).

  The weights a task released are zeroed and free for later tasks. Task
  ``j`` is predicted with its own weights plus its picked earlier ones.
  Biases train with the first task only; the head trains its task's
  classes (task-IL's masked cross-entropy). Every stage after ``train``
  starts a fresh optimizer state (each a run of its own in the authors'
  scripts). Needs a network without BatchNorm (mlp or cnn; model head
  ``"picking"``, built by ``cljax run``) and one device.

  Departures from the authors' code, for static shapes and one budget:

  * the pruning ratios are the cubic schedule's ``rounds`` points up to
    ``prune`` (they step by 0.1 up to 0.9, then 0.95, 20 epochs each; and
    with the layers full and the goal missed, up to a ratio set by the
    number of tasks left);
  * compaction and retraining run at the training rate by default
    (``compact_lr_scale`` 1): their rounds are short (``compact_epochs``
    1, where the authors retrain 20 epochs a round at a tenth of the
    rate);
  * growth and the choice of a ratio look at validation accuracy alone
    (they also need a training accuracy above 0.95);
  * a task that grows trains on from where it was (they retrain it from
    the previous task's network);
  * retraining has a fixed length and keeps its end (they stop after 5
    epochs without improvement and keep the best epoch), and runs even
    when a task kept no weights of its own (they skip it then);
  * no per-task biases.

  In a sweep a phase is skipped only when every member skips it; a member
  that would skip takes its steps with zero updates (its step count, and so
  its later random keys, move on).

  Args:
    prune: the largest fraction of a task's weights compaction releases.
    rounds: pruning rounds of the gradual schedule.
    compact_epochs: epochs of training after each round.
    goal: the accuracy a task must reach before compaction, else the
      network grows, and that a pruning ratio must keep (0: never grows,
      every ratio kept).
    grow: units added per hidden layer when it grows (as a fraction of the
      layer's pre-allocated units).
    initial_units: the fraction of each hidden layer's units available at
      the first task.
    grow_epochs: the length of each ``grow`` phase (0: the task's budget).
    mask_lr_scale: the picking mask's updates relative to the weights'
      (the authors: Adam at 5e-4 for the mask; 0.5 of a run's Adam at
      1e-3).
    retrain: whether tasks after the first retrain their picking mask.
    retrain_epochs: the length of the ``retrain`` phase (0: the task's
      budget; the authors retrain 30 epochs after 100 of training).
    compact_lr_scale: the weights' rate in ``compact`` and ``retrain``
      relative to training's (the authors: 0.1, 1e-3 against 1e-2).
  """

  name = "cpg"
  task_incremental_only = True
  head = "picking"

  def __init__(self, prune: float = 0.5, rounds: int = 3,
               compact_epochs: int = 1, goal: float = 0.0,
               grow: float = 0.25, initial_units: float = 1.0,
               grow_epochs: int = 0, mask_lr_scale: float = 0.5,
               retrain: bool = True, retrain_epochs: int = 0,
               compact_lr_scale: float = 1.0):
    _validate.check_value("prune", prune, lambda v: (v > 0) & (v < 1),
                          "in (0, 1)")
    _validate.check_integer("rounds", rounds, 1)
    _validate.check_integer("compact_epochs", compact_epochs, 1)
    _validate.check_unit_interval("goal", goal)
    _validate.check_value("grow", grow, lambda v: (v > 0) & (v <= 1),
                          "in (0, 1]")
    _validate.check_value("initial_units", initial_units,
                          lambda v: (v > 0) & (v <= 1), "in (0, 1]")
    self.prune, self.rounds = float(prune), int(rounds)
    self.compact_epochs, self.goal = int(compact_epochs), float(goal)
    self.grow, self.initial_units = float(grow), float(initial_units)
    _validate.check_integer("grow_epochs", grow_epochs, 0)
    _validate.check_positive("mask_lr_scale", mask_lr_scale)
    _validate.check_integer("retrain_epochs", retrain_epochs, 0)
    self.grow_epochs, self.mask_lr_scale = int(grow_epochs), float(
        mask_lr_scale)
    _validate.check_bool("retrain", retrain)
    self.retrain, self.retrain_epochs = bool(retrain), int(retrain_epochs)
    _validate.check_positive("compact_lr_scale", compact_lr_scale)
    self.compact_lr_scale = float(compact_lr_scale)

  # -- state ---------------------------------------------------------------

  def init_state(self, model, stream):
    if "pick" not in model.params or jax.tree.leaves(model.batch_stats):
      raise ValueError("cpg needs the picking model head (model.head="
                       "'picking', mlp or cnn: no BatchNorm)")
    keys = unit_layers(model.params)
    kernels = [layer_at(model.params, k)["kernel"] for k in keys]
    units = {}
    for i, kern in enumerate(kernels):
      n = kern.shape[-1]
      avail = np.zeros(n, bool)
      avail[:max(1, int(round(self.initial_units * n)))] = True
      units[i] = jnp.asarray(avail)
    self._logits = jax.jit(lambda params, s, batch_stats, x, task, compact:
                           model.apply(self._training(params, s, task,
                                                      compact),
                                       batch_stats, x)[0][0],
                           static_argnames="compact")
    return {"owner": {i: jnp.zeros(k.shape, jnp.int32)
                      for i, k in enumerate(kernels)},
            "picks": {i: jnp.zeros((stream.num_tasks, *k.shape), bool)
                      for i, k in enumerate(kernels)},
            "units": units,
            "total": {i: jnp.zeros((), jnp.int32) for i in units},
            "round": jnp.zeros((), jnp.int32),
            "trainable": jax.tree.map(jnp.ones_like, model.params),
            "skip": jnp.zeros((), bool),
            # The task's network at the largest pruning ratio kept so far
            # and its owners; whether every ratio is kept.
            "best": {"params": model.params,
                     "owner": {i: jnp.zeros(k.shape, jnp.int32)
                               for i, k in enumerate(kernels)}},
            "keep_any": jnp.zeros((), bool),
            # The accuracy retraining starts from (the mask at 1e-2).
            "retrain_from": jnp.zeros((), jnp.float32)}

  def phases(self, index):
    """``train``, the ``grow`` phases, the ``compact`` rounds and
    ``retrain``, each after ``train`` with a fresh optimizer state (each a
    run of its own in the authors' scripts)."""
    grow = (Phase("grow", epochs=self.grow_epochs or None,
                  fresh_optimizer=True),) * int(np.ceil(1 / self.grow)) if (
                      self.goal > 0 and self.initial_units < 1) else ()
    retrain = (Phase("retrain", epochs=self.retrain_epochs or None,
                     fresh_optimizer=True, lr_scale=self.compact_lr_scale),
               ) if self._retrains(index) else ()
    return (Phase("train"), *grow, *(Phase(
        "compact", epochs=self.compact_epochs, fresh_optimizer=True,
        lr_scale=self.compact_lr_scale),) * self.rounds, *retrain)

  def _retrains(self, index) -> bool:
    """Whether task ``index`` has a ``retrain`` phase."""
    return index > 0 and self.retrain

  def start_params(self, ctx):
    """Every task's picking mask starts at ``1e-2`` (all picked)."""
    return _fresh_mask(ctx.params), ctx.batch_stats

  def on_task_start(self, ctx):
    return {**ctx.method_state, "round": jnp.zeros((), jnp.int32)}

  # -- the network each task computes ---------------------------------------

  def _available(self, params, s):
    """Per unit layer, the connections between available units."""
    units = [s["units"][i] for i in sorted(s["units"])]
    return [c["kernel"] for c in connection_min(params, units)]

  def _effective(self, params, s, task, own, picks):
    """``params`` with each kernel ``W own + W kept_{<=task} picks`` (the
    weights tasks ``1..task`` kept, ``task`` 0-based: those of earlier
    tasks) and the biases of units not available yet zeroed."""
    for i, key in enumerate(unit_layers(params)):
      layer = layer_at(params, key)
      owner = s["owner"][i]
      kept = (owner >= 1) & (owner <= task)
      params = with_layer(params, key, {
          "kernel": layer["kernel"] * (own[i] + kept * picks[i]),
          "bias": layer["bias"] * s["units"][i]})
    return params

  def _training(self, params, s, task, compact: bool):
    """The network task ``task`` (an int or traced) trains: its own weights
    (``compact``, a bool or traced) or the free ones of available units
    too, and the weights earlier tasks kept through its live picking
    mask."""
    avail = self._available(params, s)
    compact = jnp.asarray(compact)
    own = [(s["owner"][i] == task + 1) | (
        (s["owner"][i] == 0) & (avail[i] > 0) & ~compact)
           for i in range(len(avail))]
    picks = [binarise(params["pick"][i]) for i in sorted(params["pick"])]
    return self._effective(params, s, task, own, picks)

  def _loss(self, model, compact: bool):

    def loss(params, batch_stats, s, batch, masks, rng):
      task = batch["t"][0]  # a task-IL batch holds one task
      (logits, _), new_stats = model.apply(
          self._training(params, s, task, compact), batch_stats, batch["x"],
          train=True)
      ce = jnp.mean(masked_cross_entropy(logits, batch["y"], example_masks(
          masks, batch["t"])))
      return ce, ({"ce": ce}, new_stats)

    return loss

  def loss_fn(self, model):
    return self._loss(model, compact=False)

  def phase_loss_fn(self, model, name):
    return self._loss(model, True) if name in ("compact", "retrain") else (
        self.loss_fn(model))

  @property
  def extra_args(self):
    return lambda params, batch_stats, s, *_: {"trainable": s["trainable"]}

  def optimizer(self, base, params):
    return optax.chain(base, scale_by_tree("trainable"))

  # -- phases ----------------------------------------------------------------

  def _trainable(self, params, s, task: int, classes, compact: bool,
                 mask_scale: float):
    """1 where the phase trains: the task's weights (``compact``) or the
    free ones of available units; the picking mask over kept weights at
    ``mask_scale``; the biases with the first task only; the head's columns
    of ``classes``."""
    avail = self._available(params, s)
    out = jax.tree.map(lambda p: jnp.full(p.shape, float(task == 0)), params)
    cols = np.zeros(np.shape(params["head"]["kernel"])[-1], np.float32)
    cols[classes] = 1.0
    out["head"] = jax.tree.map(lambda p: jnp.broadcast_to(
        jnp.asarray(cols), p.shape), params["head"])
    for i, key in enumerate(unit_layers(params)):
      owner = s["owner"][i]
      train = (owner == task + 1) if compact else (
          (owner == 0) & (avail[i] > 0))
      layer = layer_at(out, key)
      out = with_layer(out, key, {**layer, "kernel": train.astype(
          jnp.float32)})
      kept = (owner >= 1) & (owner <= task)
      out["pick"] = {**out["pick"], i: kept * mask_scale}
    return out

  def _accuracy(self, ctx: TaskContext, params, s, compact: bool) -> float:
    """The accuracy of task ``ctx.index``'s network in ``params`` and ``s``
    (its own and free weights, or its own only: ``compact``) on its
    validation split, else its training split."""
    k = ctx.index
    split = ctx.stream.tasks[k].val
    if not len(split):
      split = ctx.stream.tasks[k].train
    net = {"owner": s["owner"], "units": s["units"]}
    active = np.asarray(ctx.masks[k])
    correct = 0
    for i in range(0, len(split), 1000):  # batches of 1000: one compilation
      x = materialise(split.x[i:i + 1000])
      padded = np.concatenate([x, np.zeros((1000 - len(x), *x.shape[1:]),
                                           x.dtype)])
      z = np.asarray(self._logits(params, net, ctx.batch_stats, padded,
                                  jnp.int32(k), compact))[:len(x)]
      pred = np.argmax(np.where(active, z, -np.inf), -1)
      correct += int(np.sum(pred == np.asarray(split.y[i:i + 1000])))
    return correct / len(split)

  def _grown(self, s):
    """``s["units"]`` with ``grow`` more units (a fraction of each hidden
    layer's) available."""
    units = {}
    for i, u in s["units"].items():
      u = np.asarray(u).copy()
      add = max(1, int(round(self.grow * u.size)))
      idle = np.flatnonzero(~u)[:add]
      u[idle] = True
      units[i] = jnp.asarray(u)
    return units

  def _full(self, s) -> bool:
    return all(np.all(u) for u in s["units"].values())

  def on_phase_start(self, ctx, phase):
    s, k, params = dict(ctx.method_state), ctx.index, ctx.params
    classes = ctx.stream.tasks[k].classes
    s["skip"] = jnp.zeros((), bool)
    if phase.name == "grow":  # grow while the goal is missed
      grows = not self._full(s) and self._accuracy(
          ctx, params, s, False) < self.goal
      if grows:
        s["units"] = self._grown(s)
      s["skip"] = jnp.asarray(not grows)
    r = int(s["round"])
    if phase.name in ("compact", "retrain") and r == 0:
      # The end of training: the task's weights, their accuracy unpruned.
      avail = self._available(params, s)
      s["owner"] = {i: jnp.where((o == 0) & (avail[i] > 0), k + 1, o)
                    for i, o in s["owner"].items()}
      s["total"] = {i: jnp.sum(o == k + 1) for i, o in s["owner"].items()}
      acc = self._accuracy(ctx, params, s, True)
      s["best"] = {"params": params, "owner": s["owner"]}
      s["keep_any"] = jnp.asarray(acc < self.goal and self._full(s))
    elif phase.name in ("compact", "retrain"):
      s = self._kept(ctx, s)  # the last round's ratio, if it is kept
    if phase.name == "compact":  # on from the last round, kept or not
      target = cubic_sparsity(self.prune, r + 1, self.rounds)
      owner = {}
      for i, key in enumerate(unit_layers(params)):
        o = s["owner"][i]
        want = int(np.floor(target * int(s["total"][i])))
        have = int(s["total"][i]) - int(jnp.sum(o == k + 1))
        owner[i] = release_smallest(layer_at(params, key)["kernel"], o, k,
                                    want - have)
      s["owner"], s["round"] = owner, jnp.asarray(r + 1, jnp.int32)
    if phase.name == "retrain":  # from the chosen ratio, the mask afresh
      s["owner"] = s["best"]["owner"]
      s["retrain_from"] = jnp.asarray(self._accuracy(
          ctx, _fresh_mask(s["best"]["params"]), s, True), jnp.float32)
    # The mask's rate relative to the run's: mask_lr_scale in training, a
    # fifth of it in retraining (within a phase at compact_lr_scale).
    mask_scale = {"train": self.mask_lr_scale, "grow": self.mask_lr_scale,
                  "retrain": self.mask_lr_scale / 5 / self.compact_lr_scale
                  }.get(phase.name, 0.0)
    trainable = self._trainable(params, s, k, classes, phase.name not in (
        "train", "grow"), mask_scale)
    s["trainable"] = jax.tree.map(jnp.zeros_like, trainable) if bool(
        s["skip"]) else trainable  # a skipped phase changes nothing
    return s

  def phase_skipped(self, ctx, phase):
    return bool(ctx.method_state["skip"])

  def phase_params(self, ctx, phase):
    """``retrain`` starts from the chosen ratio's network, the picking mask
    at ``1e-2``."""
    if phase.name != "retrain":
      return None
    return _fresh_mask(ctx.method_state["best"]["params"]), ctx.batch_stats

  def _kept(self, ctx, s):
    """``s`` with ``s["best"]`` the network now (``ctx.params`` and
    ``s["owner"]``) if its pruning ratio is kept: its accuracy meets the
    goal, or any ratio is kept."""
    acc = self._accuracy(ctx, ctx.params, s, True)
    if acc >= self.goal or bool(s["keep_any"]):
      s = {**s, "best": {"params": ctx.params, "owner": s["owner"]}}
    return s

  def end_params(self, ctx):
    """The network the task keeps: after ``retrain``, the retrained one if
    it is more accurate than retraining's start, else the chosen ratio's;
    without, the chosen ratio's (``_kept``). The weights compaction
    released are zeroed (free for later tasks; weights of units not yet
    available keep their initial values)."""
    s = dict(ctx.method_state)
    if self._retrains(ctx.index):
      better = self._accuracy(ctx, ctx.params, s, True) > float(
          s["retrain_from"])
      params = ctx.params if better else s["best"]["params"]
    else:
      s = self._kept(ctx, s)
      params, s["owner"] = s["best"]["params"], s["best"]["owner"]
    avail = self._available(params, s)
    for i, key in enumerate(unit_layers(params)):
      layer = layer_at(params, key)
      released = (s["owner"][i] == 0) & (avail[i] > 0)
      params = with_layer(params, key, {
          **layer, "kernel": jnp.where(released, 0.0, layer["kernel"])})
    return params, ctx.batch_stats, s

  def on_task_end(self, ctx):
    s, k = ctx.method_state, ctx.index
    picks = {i: s["picks"][i].at[k].set(p > THRESHOLD)
             for i, p in ctx.params["pick"].items()}
    return {**s, "picks": picks}

  def eval_params(self, s, params, batch_stats, task, current):
    if task >= current:  # while compacting, without the released weights
      return (self._training(params, s, current, s["round"] > 0),
              batch_stats)
    own = [s["owner"][i] == task + 1 for i in sorted(s["owner"])]
    picks = [s["picks"][i][task] for i in sorted(s["picks"])]
    return self._effective(params, s, task, own, picks), batch_stats

  def network_use(self, s, num_tasks):
    """The fraction of the (pre-allocated) backbone weights each task
    keeps."""
    owned = np.concatenate([np.ravel(o) for o in s["owner"].values()])
    return [float(np.mean(owned == k + 1)) for k in range(num_tasks)]
