"""Dynamically Expandable Networks (Yoon, Yang, Lee & Hwang 2018,
"Lifelong Learning with Dynamically Expandable Networks", ICLR)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax import _validate
from cljax.data._streamed import materialise
from cljax.losses._cross_entropy import masked_cross_entropy
from cljax.methods._base import Method, Phase, TaskContext
from cljax.methods.hat import apply_gates
from cljax.methods.packnet import scale_by_tree
from cljax.models._heads import example_masks
from cljax.models._units import connection_min


def soft_threshold(w, threshold):
  """L1's proximal step (the authors' code, after each optimizer step):
  ``sign(w) max(|w| - t, 0)``."""
  return jnp.sign(w) * jnp.maximum(jnp.abs(w) - threshold, 0.0)


def group_soft_threshold(kernel, threshold, groups):
  """Group lasso's proximal step on each column (a unit's incoming
  weights) restricted to ``groups`` (a 0/1 mask like ``kernel``: the
  incoming weights of the units being added, from units that exist):
  ``w (1 - t / ||w||)``, or 0 when ``||w|| < t``; entries outside the
  mask are left alone."""
  w = kernel * groups
  norm = jnp.sqrt(jnp.sum(w ** 2, axis=0, keepdims=True))
  shrunk = kernel * jnp.maximum(1 - threshold / jnp.maximum(norm, 1e-12), 0)
  return jnp.where(groups > 0, shrunk, kernel)


def selected_units(kernels, head_rows, exist):
  """Selective retraining's subnetwork (Alg. 2): from the existing hidden
  units of the last layer with a nonzero weight into the task's head
  (``head_rows``, bool ``(units_L,)``), down the network through nonzero
  weights: an existing unit of layer ``l`` is selected when any weight
  from it into a selected unit of layer ``l + 1`` is nonzero. ``kernels``:
  the hidden layers' ``(in, out)`` kernels, bottom-up; ``exist``: bool
  ``(units_l,)`` per layer. Returns bool ``(units_l,)`` per layer."""
  sel = [None] * len(kernels)
  sel[-1] = head_rows & exist[-1]
  for l in range(len(kernels) - 1, 0, -1):
    sel[l - 1] = jnp.any((kernels[l] != 0) & sel[l][None, :],
                         axis=1) & exist[l - 1]
  return sel


def _proximal(l1, gl):
  """After the optimizer: the L1 proximal step on every trainable weight
  (``trainable`` extra argument > 0) and the group-lasso step on the
  incoming weights of the units being added (``groups``: ``{layer: mask
  like its kernel}``)."""
  def update(updates, state, params=None, *, trainable=None, groups=None,
             **extra):
    new = optax.apply_updates(params, updates)
    new = jax.tree.map(lambda w, m: jnp.where(m > 0, soft_threshold(w, l1),
                                              w), new, trainable)
    layers = {i: {**layer, "kernel": group_soft_threshold(
        layer["kernel"], gl, groups[i])}
              for i, layer in new["layers"].items()}
    new = {**new, "layers": layers}
    return jax.tree.map(lambda n, p: n - p, new, params), state
  return optax.GradientTransformationExtraArgs(
      lambda params: optax.EmptyState(), update)


class DEN(Method):
  """DEN: selective retraining, dynamic expansion with group sparsity, and
  splitting of drifting units, with units timestamped so that each task is
  predicted by the units that existed when it was learnt (task-IL, MLP).

  Hidden units are pre-allocated (``model.hidden`` is the ceiling;
  ``initial_units`` of each layer exist at first), each with a timestamp
  (the task that added it, 0: not yet). The first task trains the network
  with L1 sparsity. Task ``k > 0``, as in the authors' code:

  * ``top``: the task's head alone, L1-sparse, for ``top_epochs`` (the
    code: a tenth of the iterations);
  * ``select``: the subnetwork reached from the head's nonzero weights
    through nonzero weights of existing units (``selected_units``)
    retrains, L1-sparse, with ``regular/2 ||W - W_{k-1}||^2`` holding the
    units that existed before the task to their values then;
  * ``expand``: if the task's mean training cross-entropy is still ``>=
    loss_thr`` (the code: the last batch's sigmoid loss), ``ex_k`` units
    per hidden layer are added from fresh initial weights and trained
    alone (with the head) under L1 and group lasso on their incoming
    weights (``group_soft_threshold``); added units whose incoming weights
    all reach 0 are removed;
  * ``split`` (after an expansion only, as the code): the older units
    whose incoming weights drifted by more than ``spl_thr`` (L2 norm) since
    the task began are duplicated, at most ``ex_k`` per layer (the most
    drifted; the code takes the least drifted above the threshold): the
    copy, timestamped ``k``, takes the drifted weights, the original gets
    its old incoming weights and its old outgoing weights into older units
    back; then every existing unit retrains with the drift penalty.

  ``expand`` and ``split`` last as long as ``select`` (the task's budget)
  unless ``expand_epochs`` / ``split_epochs`` are set. Every step adds
  ``l2/2 ||W||^2`` over the trained weights and applies the L1 proximal
  step ``soft_threshold`` (threshold ``l1``) after the optimizer, as the
  authors' code. Task ``j`` is predicted by the units with timestamps
  ``<= j`` and its own head. Cross-entropy over the task's classes (the
  code's per-class sigmoids are for its one-vs-rest tasks). The optimizer
  state carries over between a task's phases (the code starts a fresh
  Adam for each).

  Args:
    l1, l2, gl, regular: the code's l1_lambda (1e-5), l2_lambda (1e-4),
      gl_lambda (1e-3) and regular_lambda (0.5).
    ex_k: units added (and split at most) per layer (10).
    loss_thr: expansion when the training loss is at or above it (0.01).
    spl_thr: the drift that splits a unit (0.05).
    initial_units: the fraction of each hidden layer that exists at first
      (the rest is room to grow).
    top_epochs, expand_epochs, split_epochs: the lengths of those phases
      (0: the task's training budget, as ``select``).
  """

  name = "den"
  task_incremental_only = True

  def __init__(self, l1: float = 1e-5, l2: float = 1e-4, gl: float = 1e-3,
               regular: float = 0.5, ex_k: int = 10, loss_thr: float = 0.01,
               spl_thr: float = 0.05, initial_units: float = 0.5,
               top_epochs: int = 1, expand_epochs: int = 0,
               split_epochs: int = 0):
    for name, value in (("l1", l1), ("l2", l2), ("gl", gl),
                        ("regular", regular), ("loss_thr", loss_thr),
                        ("spl_thr", spl_thr)):
      _validate.check_nonnegative(name, value)
    for name, value, low in (("ex_k", ex_k, 1), ("top_epochs", top_epochs, 1),
                             ("expand_epochs", expand_epochs, 0),
                             ("split_epochs", split_epochs, 0)):
      _validate.check_integer(name, value, low)
    _validate.check_value("initial_units", initial_units,
                          lambda v: (v > 0) & (v <= 1), "in (0, 1]")
    self.l1, self.l2, self.gl = float(l1), float(l2), float(gl)
    self.regular, self.ex_k = float(regular), int(ex_k)
    self.loss_thr, self.spl_thr = float(loss_thr), float(spl_thr)
    self.initial_units = float(initial_units)
    self.top_epochs, self.expand_epochs = int(top_epochs), int(expand_epochs)
    self.split_epochs = int(split_epochs)


  def init_state(self, model, stream):
    layers = model.params.get("layers")
    if layers is None or np.ndim(layers[0]["kernel"]) != 2 or jax.tree.leaves(
        model.batch_stats):
      raise ValueError("den expands fully connected layers: it needs an "
                       "mlp (model.name='mlp', the linear head)")
    stamps = {}
    for i, layer in layers.items():
      n = layer["kernel"].shape[-1]
      st = np.zeros(n, np.int32)
      st[:max(1, int(round(self.initial_units * n)))] = 1
      stamps[i] = jnp.asarray(st)
    no_layers = jax.tree.map(jnp.zeros_like, model.params["layers"])
    return {"stamps": stamps, "prev": model.params,
            "groups": {i: l["kernel"] for i, l in no_layers.items()},
            "anchored": no_layers,
            "source": {i: -jnp.ones(s.shape, jnp.int32)
                       for i, s in stamps.items()},
            "trainable": jax.tree.map(jnp.ones_like, model.params),
            "regular": jnp.zeros(())}

  def phases(self, index):
    if index == 0:
      return (Phase("train"),)
    return (Phase("top", epochs=self.top_epochs), Phase("select"),
            Phase("expand", epochs=self.expand_epochs or None),
            Phase("split", epochs=self.split_epochs or None))

  # -- the network ---------------------------------------------------------

  def _units(self, s, upto):
    """Per layer, 1.0 for units with a timestamp in ``[1, upto]``."""
    return [((st >= 1) & (st <= upto)).astype(jnp.float32)
            for _, st in sorted(s["stamps"].items())]

  def loss_fn(self, model):

    def loss(params, batch_stats, s, batch, masks, rng):
      live = self._units(s, jnp.iinfo(jnp.int32).max)
      (logits, _), new_stats = model.apply(apply_gates(params, live),
                                           batch_stats, batch["x"],
                                           train=True)
      ce = jnp.mean(masked_cross_entropy(logits, batch["y"], example_masks(
          masks, batch["t"])))
      decay = 0.5 * sum(jnp.sum(w ** 2 * m) for w, m in zip(
          jax.tree.leaves(params), jax.tree.leaves(s["trainable"])))
      drift = 0.5 * sum(jnp.sum((w - p) ** 2 * m) for w, p, m in zip(
          jax.tree.leaves(params["layers"]),
          jax.tree.leaves(s["prev"]["layers"]),
          jax.tree.leaves(s["anchored"])))
      total = ce + self.l2 * decay + s["regular"] * drift
      return total, ({"ce": ce, "drift": drift}, new_stats)

    return loss

  def optimizer(self, base, params):
    return optax.chain(base, scale_by_tree("trainable"),
                       _proximal(self.l1, self.gl))

  @property
  def extra_args(self):
    return lambda params, batch_stats, s, *_: {"trainable": s["trainable"],
                                               "groups": s["groups"]}

  def network_use(self, s, num_tasks):
    """The fraction of the pre-allocated hidden units each task added (the
    first task: those that exist at first)."""
    stamps = np.concatenate([np.asarray(v) for v in s["stamps"].values()])
    return [float(np.mean(stamps == k + 1)) for k in range(num_tasks)]

  def eval_params(self, s, params, batch_stats, task, current):
    upto = task + 1 if task < current else jnp.iinfo(jnp.int32).max
    return apply_gates(params, self._units(s, upto)), batch_stats

  # -- the task's stages ---------------------------------------------------

  def on_task_start(self, ctx):
    return {**ctx.method_state, "prev": ctx.params}

  def _mask_tree(self, params, units, head_cols):
    """1 on the weights between ``units`` (per hidden layer, bool) and on
    their biases, on the head rows of the last layer's ``units`` in the
    columns ``head_cols``, 0 elsewhere."""
    layers = self._layer_masks(params, units)
    rows = units[-1].astype(jnp.float32)[:, None]
    head = {"kernel": rows * head_cols[None, :], "bias": head_cols}
    return {**jax.tree.map(jnp.zeros_like, params), "layers": layers,
            "head": head}

  def _task_loss(self, ctx: TaskContext) -> float:
    """The task's mean training cross-entropy now (the expansion test)."""
    k, s = ctx.index, ctx.method_state
    split = ctx.stream.tasks[k].train
    net = apply_gates(ctx.params, self._units(s, k + 1))
    fn = jax.jit(lambda x, y: jnp.sum(masked_cross_entropy(
        ctx.model.apply(net, ctx.batch_stats, x)[0][0], y,
        jnp.asarray(ctx.masks[k]))))
    total = sum(float(fn(materialise(split.x[i:i + 1000]),
                         jnp.asarray(split.y[i:i + 1000])))
                for i in range(0, len(split), 1000))
    return total / len(split)

  def _layer_masks(self, params, units):
    """Per hidden layer ``{"kernel", "bias"}`` masks of the connections
    between ``units`` (bool per layer) and of their biases."""
    conn = connection_min(params, [u.astype(jnp.float32) for u in units])
    return {i: c for i, c in zip(sorted(params["layers"]), conn)}

  def on_phase_start(self, ctx, phase):
    s, k, params = dict(ctx.method_state), ctx.index, ctx.params
    cols = np.zeros(np.shape(params["head"]["kernel"])[-1], np.float32)
    cols[ctx.stream.tasks[k].classes] = 1.0
    cols = jnp.asarray(cols)
    exist = [st >= 1 for _, st in sorted(s["stamps"].items())]
    old = [(st >= 1) & (st <= k) for _, st in sorted(s["stamps"].items())]
    s["groups"] = {i: jnp.zeros_like(g) for i, g in s["groups"].items()}
    # The drift penalty holds the units that existed before the task to
    # their values then (the authors' code penalises that block only).
    s["anchored"] = self._layer_masks(params, old)
    s["regular"] = jnp.asarray(
        self.regular if phase.name in ("select", "split") else 0.0)
    if phase.name == "train":  # the first task: everything that exists
      s["trainable"] = self._mask_tree(params, exist, cols)
    elif phase.name == "top":
      none = [jnp.zeros_like(e) for e in exist]
      head_only = self._mask_tree(params, none, cols)
      head_only["head"] = {"kernel": jnp.broadcast_to(
          jnp.asarray(exist[-1], jnp.float32)[:, None] * cols[None, :],
          params["head"]["kernel"].shape), "bias": cols}
      s["trainable"] = head_only
    elif phase.name == "select":
      head = np.asarray(params["head"]["kernel"])[:, np.asarray(cols) > 0]
      kernels = [params["layers"][i]["kernel"] for i in sorted(
          params["layers"])]
      sel = selected_units(kernels, jnp.asarray(np.any(head != 0, axis=1)),
                           exist)
      s["trainable"] = self._mask_tree(params, sel, cols)
    elif phase.name == "expand":
      s = self._expand(ctx, s, exist, cols)
    elif phase.name == "split":
      s = self._drop_useless(s, params, k)
      expanded = any(np.any(np.asarray(st) == k + 1)
                     for st in s["stamps"].values())
      if expanded:  # the authors split only after an expansion
        s = self._split(s, params, k, cols)
      else:
        s["trainable"] = jax.tree.map(jnp.zeros_like, s["trainable"])
        s["regular"] = jnp.zeros(())
    return s

  def _expand(self, ctx, s, exist, cols):
    """Adds ``ex_k`` units per layer (timestamp ``k + 1``) if the task's
    loss is at or above ``loss_thr``; they train alone, with the head
    (``phase_params`` gives their slots fresh initial weights)."""
    k = ctx.index
    new = [jnp.zeros_like(e) for e in exist]
    if self._task_loss(ctx) >= self.loss_thr:
      stamps = {}
      for n, (i, st) in enumerate(sorted(s["stamps"].items())):
        st = np.asarray(st).copy()
        free = np.flatnonzero(st == 0)[:self.ex_k]
        st[free] = k + 1
        new[n] = jnp.asarray(np.isin(np.arange(st.size), free))
        stamps[i] = jnp.asarray(st)
      s["stamps"] = stamps
    # The new units' incoming and outgoing weights: a connection trains
    # when either end is new (and both exist).
    params = ctx.params
    exist = [st >= 1 for _, st in sorted(s["stamps"].items())]
    both = self._mask_tree(params, exist, cols)
    old = self._mask_tree(params, [e & ~n for e, n in zip(exist, new)],
                          cols)
    trainable = jax.tree.map(lambda b, o: b - o, both, old)
    trainable["head"] = both["head"]
    s["trainable"] = trainable
    # Group lasso: each new unit's incoming weights from existing units.
    s["groups"] = {i: m["kernel"] * n.astype(jnp.float32)[None, :]
                   for (i, m), n in zip(self._layer_masks(params, exist)
                                        .items(), new)}
    return s

  def _drop_useless(self, s, params, k):
    """Units added this task whose incoming weights from existing units
    are all 0 are removed (timestamp 0)."""
    exist = [st >= 1 for _, st in sorted(s["stamps"].items())]
    masks = self._layer_masks(params, exist)
    stamps = {}
    for i, st in s["stamps"].items():
      w = np.asarray(params["layers"][i]["kernel"]) * np.asarray(
          masks[i]["kernel"])
      dead = np.all(w == 0, axis=0)
      st = np.asarray(st).copy()
      st[(st == k + 1) & dead] = 0
      stamps[i] = jnp.asarray(st)
    return {**s, "stamps": stamps}

  def _split(self, s, params, k, cols):
    """Plans the duplication of the older units whose incoming weights
    drifted more than ``spl_thr`` since the task began: at most ``ex_k``
    per layer (the most drifted; the authors' code takes the least drifted
    above the threshold) and the free slots. ``source[l][m] = i`` makes
    slot ``m`` (timestamp ``k + 1``) a copy of unit ``i``;
    ``phase_params`` carries it out. Then the whole existing network
    trains, the older units held to their values before the task."""
    stamps, source = {}, {}
    for i in sorted(params["layers"]):
      cur = np.asarray(params["layers"][i]["kernel"])
      old = np.asarray(s["prev"]["layers"][i]["kernel"])
      st = np.asarray(s["stamps"][i]).copy()
      rows = np.asarray(s["anchored"][i]["kernel"]) > 0  # older inputs
      drift = np.sqrt(np.sum(((cur - old) * rows) ** 2, axis=0))
      drift[~((st >= 1) & (st <= k))] = -np.inf
      over = np.flatnonzero(drift > self.spl_thr)
      over = over[np.argsort(-drift[over], kind="stable")][:self.ex_k]
      free = np.flatnonzero(st == 0)[:len(over)]
      src = np.full(st.size, -1, np.int32)
      src[free] = over[:len(free)]
      st[free] = k + 1
      stamps[i], source[i] = jnp.asarray(st), jnp.asarray(src)
    s = {**s, "stamps": stamps, "source": source}
    exist = [st >= 1 for _, st in sorted(stamps.items())]
    s["trainable"] = self._mask_tree(params, exist, cols)
    return s

  def phase_params(self, ctx, phase):
    """At ``expand``: the added units' slots start from the model's
    initial weights (a slot freed earlier holds stale ones). At ``split``:
    each planned copy ``m`` of unit ``i`` takes ``i``'s current incoming
    weights and bias (reading from the copies of the split units below)
    and its outgoing weights; ``i`` gets back its incoming weights and its
    outgoing weights into the older units from before the task (into units
    added this task, and into the head, it keeps the current ones)."""
    if phase.name == "expand":
      return self._fresh_slots(ctx)
    if phase.name != "split":
      return None
    s, params = ctx.method_state, jax.device_get(ctx.params)
    prev = jax.device_get(s["prev"])
    k = ctx.index
    keys = sorted(params["layers"])
    layers, below = {}, []  # below: the (original, copy) pairs underneath
    for i in keys:
      cur, old = params["layers"][i], prev["layers"][i]
      st = np.asarray(s["stamps"][i])
      older = (st >= 1) & (st <= k)  # this layer's units before the task
      k_new, b_new = np.array(cur["kernel"]), np.array(cur["bias"])
      for j, n in below:  # rows: the copy sends what the original sent
        k_new[n] = cur["kernel"][j]
        k_new[j, older] = old["kernel"][j, older]
      pairs = [(int(src), m) for m, src in enumerate(
          np.asarray(s["source"][i])) if src >= 0]
      for orig, m in pairs:
        col = np.array(cur["kernel"][:, orig])
        restored = np.array(old["kernel"][:, orig])
        for j, n in below:
          col[n], col[j] = cur["kernel"][j, orig], 0.0
          restored[n] = 0.0
        k_new[:, m], k_new[:, orig] = col, restored
        b_new[m], b_new[orig] = cur["bias"][orig], old["bias"][orig]
      layers[i] = {"kernel": k_new, "bias": b_new}
      below = pairs
    head = np.array(params["head"]["kernel"])
    for j, n in below:
      head[n] = params["head"]["kernel"][j]
    return ({**params, "layers": layers,
             "head": {**params["head"], "kernel": head}}, ctx.batch_stats)

  def _fresh_slots(self, ctx):
    """The parameters with the slots added this task (timestamp ``k + 1``)
    reset to the model's initial values: their incoming weights, biases
    and outgoing weights."""
    s, k = ctx.method_state, ctx.index
    params, init = jax.device_get((ctx.params, ctx.model.params))
    layers, below = {}, None
    for i in sorted(params["layers"]):
      new = np.asarray(s["stamps"][i]) == k + 1
      kern = np.array(params["layers"][i]["kernel"])
      bias = np.array(params["layers"][i]["bias"])
      kern[:, new] = init["layers"][i]["kernel"][:, new]
      bias[new] = init["layers"][i]["bias"][new]
      if below is not None:
        kern[below] = init["layers"][i]["kernel"][below]
      layers[i] = {"kernel": kern, "bias": bias}
      below = new
    head = np.array(params["head"]["kernel"])
    head[below] = init["head"]["kernel"][below]
    return ({**params, "layers": layers,
             "head": {**params["head"], "kernel": head}}, ctx.batch_stats)
