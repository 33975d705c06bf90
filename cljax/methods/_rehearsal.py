"""What the rehearsal methods share: a memory of past examples, a replay
batch appended to every step, and the memory's update.

Two memories (``cljax.memory``): a class-balanced exemplar memory filled at
the end of each task by herding or at random (iCaRL's and End-to-End IL's,
and ER's in class-IL), or a class-agnostic reservoir filled online, every
step, from the incoming batch (Chaudhry et al. 2019's ER, Buzzega et al.
2020's DER). The replay sample is drawn with a key every device shares and
split among the devices, so any number of devices trains on what one would.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cljax import _validate
from cljax._distributed import data_axis_mesh, on_mesh, rowwise
from cljax.data._streamed import materialise
from cljax import memory as mem
from cljax.losses._cross_entropy import masked_cross_entropy
from cljax.methods._base import Method
from cljax.models._heads import example_masks

MEMORIES = ("herding", "random", "reservoir")
REPLAYS = ("equal", "union")


def weighted_cross_entropy(logits, batch, masks):
  """``sum_i w_i CE_i / sum_i w_i`` over the batch (``batch["w"]``: 0 for a
  replay slot with nothing in the memory yet), each example over its own
  task's active logits."""
  ce = masked_cross_entropy(logits, batch["y"], example_masks(masks,
                                                               batch["t"]))
  return weighted_mean(ce, batch["w"])


def weighted_mean(values, w):
  """``sum_i w_i v_i / max(sum_i w_i, 1)``: a batch mean in which replay
  slots with nothing in the memory yet (``w = 0``) do not count."""
  return jnp.sum(w * values) / jnp.maximum(jnp.sum(w), 1.0)


def nme_predictors(model, flip: bool = False) -> dict:
  """``{"nme": (prepare, predict)}``: classification by the nearest mean of
  the memory's exemplars (iCaRL, Alg. 1; ``cljax.memory.class_means``),
  with the means also over horizontal flips when ``flip``; for
  ``Method.predictors`` of a method whose state holds ``"memory"``."""

  num_classes = np.shape(model.params["head"]["kernel"])[-1]

  def features(params, batch_stats, x):  # split over a data axis if any
    return rowwise(lambda r: model.apply(params, batch_stats, r)[0][1], x)

  def prepare(s, params, batch_stats):
    m = s["memory"]
    flipped = (features(params, batch_stats, m.x[:, :, ::-1]) if flip
               else None)
    return mem.class_means(features(params, batch_stats, m.x), m.y,
                           m.valid, num_classes, flipped)

  def predict(params, batch_stats, aux, x, active):
    means, present = aux
    return mem.nme_predict(features(params, batch_stats, x), means,
                           active & present)

  return {"nme": (prepare, predict)}


def teacher_state(model, num_classes: int) -> dict:
  """The state of a method that distils from the previous model: that model
  (the initial one until a task ends) and the classes it has learned."""
  return {"teacher": model.params, "teacher_stats": model.batch_stats,
          "old": jnp.zeros((num_classes,), bool)}


def with_teacher(s: dict, ctx) -> dict:
  """``s`` with the model that finished task ``ctx.index`` as the teacher
  and that task's classes among the old ones."""
  old = np.asarray(s["old"]).copy()
  old[ctx.stream.tasks[ctx.index].classes] = True
  return {**s, "teacher": ctx.params, "teacher_stats": ctx.batch_stats,
          "old": jnp.asarray(old)}


class Rehearsal(Method):
  """Fine-tuning on the current batch plus a replay batch from a memory.

  Args:
    memory_size: ``K``, the memory's slots for the whole stream.
    selection: ``"herding"`` or ``"random"`` (class-balanced exemplars
      chosen at each task's end) or ``"reservoir"`` (online).
    budget: ``"total"`` (``K // classes seen`` exemplars per class) or
      ``"per_class"`` (``per_class`` each); exemplar memories only.
    per_class: exemplars per class for ``budget="per_class"``.
    replay_size: replay examples per step (all devices together); 0: as
      ``replay`` says.
    replay: with ``replay_size=0``, ``"equal"``: as many replay examples as
      current ones (ER's balanced batch), or ``"union"``: in the proportion
      of the memory to a task's data, ``round(B K / N)`` for a batch of
      ``B`` (``N`` the mean training examples of a task), so each batch is
      in expectation a sample of the union of new data and exemplars the
      papers of iCaRL, BiC, WA, UCIR and IL2M train on (imbalanced: the
      bias toward new classes those methods correct).
  """

  num_logits = 0      # outputs stored with each exemplar (DER's logits)
  exemplars_only = False  # needs the class-balanced exemplar memory
  replay_batches = 1  # independent replay batches a step (DER++: 2)

  def __init__(self, memory_size: int = 2000, selection: str = "herding",
               budget: str = "total", per_class: int = 0,
               replay_size: int = 0, replay: str = "equal"):
    _validate.check_integer("memory_size", memory_size, 1)
    if selection not in MEMORIES:
      raise ValueError(f"selection must be one of {MEMORIES}, got "
                       f"{selection!r}")
    if self.exemplars_only and selection == "reservoir":
      raise ValueError(f"{self.name}: selection must be 'herding' or "
                       "'random' (it keeps class-balanced exemplars)")
    if budget not in mem.BUDGETS:
      raise ValueError(f"budget must be one of {mem.BUDGETS}, got {budget!r}")
    _validate.check_integer("per_class", per_class,
                            1 if budget == "per_class" else 0)
    _validate.check_integer("replay_size", replay_size, 0)
    self.memory_size, self.selection = int(memory_size), selection
    self.budget, self.per_class = budget, int(per_class)
    if replay not in REPLAYS:
      raise ValueError(f"replay must be one of {REPLAYS}, got {replay!r}")
    self.replay_size, self.replay = int(replay_size), replay

  # -- the memory ------------------------------------------------------------

  @property
  def capacity(self) -> int:
    """The training exemplars' slots (``memory_size``, unless a method keeps
    part of it for something else: BiC's validation set)."""
    return self.memory_size

  def check(self, stream):
    total = sum(len(self.train_split(stream, k))
                for k in range(stream.num_tasks))
    if self.capacity > total:
      part = ("" if self.capacity == self.memory_size else
              f" ({self.capacity} for exemplars)")
      raise ValueError(f"memory_size={self.memory_size}{part} exceeds the "
                       f"{total} training examples of the whole stream: "
                       "more slots than examples to hold")
    if self.selection == "reservoir":
      return
    if self.budget == "per_class":
      mem.per_class_budget(self.capacity, stream.num_classes, "per_class",
                           self.per_class)
    elif self.capacity < stream.num_classes:
      part = ("" if self.capacity == self.memory_size else
              f" ({self.capacity} for exemplars)")
      raise ValueError(f"memory_size={self.memory_size}{part} is smaller "
                       f"than the stream's {stream.num_classes} classes: "
                       "the total budget would keep no exemplar of some")

  def init_state(self, model, stream):
    self._model = model
    self._union = self.capacity / np.mean(
        [len(self.train_split(stream, k)) for k in range(stream.num_tasks)])
    shape, c = stream.input_shape, self.num_logits and stream.num_classes
    if self.selection == "reservoir":
      return {"memory": mem.reservoir_buffer(self.capacity, shape,
                                             num_logits=c)}
    # Padding sizes fixed for the stream, so selection compiles once.
    self._groups = max(len(t.classes) for t in stream.tasks)
    self._rows = max(int(np.max(np.bincount(self.train_split(stream, k).y)))
                     for k in range(stream.num_tasks))
    self._m_max = mem.per_class_budget(
        self.capacity, min(len(t.classes) for t in stream.tasks),
        self.budget, self.per_class)
    self._select = jax.jit(self._select_fn, static_argnums=0)
    return {"memory": mem.exemplar_memory(self.capacity, shape,
                                          num_logits=c)}

  def _slots(self, memory):
    """``(x, y, t, valid, logits)`` of every slot."""
    if isinstance(memory, mem.ReservoirBuffer):
      valid = jnp.arange(memory.y.shape[0]) < memory.seen
      return memory.x, memory.y, memory.t, valid, memory.logits
    return memory.x, memory.y, memory.t, memory.valid, memory.logits

  def draw(self, memory, rng, n_global: int, shard, batch, allowed=None):
    """This shard's part of ``n_global`` slots drawn uniformly without
    replacement from the filled ones (Gumbel top-k over the valid slots,
    those in ``allowed`` ``(K,)`` bool if given), as a batch with the stored
    ``logits`` and weights ``w``: 0 for a slot left over when the memory
    holds fewer examples.

    While the memory is empty, the replay batch is a copy of the current
    one (weight 0): a BatchNorm layer then sees the current batch's own
    statistics, so training equals training without replay (when the
    replay batch is as large as the current one; else it is the current
    batch repeated to its size).
    """
    x, y, t, valid, logits = self._slots(memory)
    if allowed is not None:
      valid = valid & allowed
    index, count = shard
    if n_global % count:
      raise ValueError(f"replay_size={n_global} does not divide by the "
                       f"{count} devices")
    scores = jax.random.gumbel(rng, valid.shape) + jnp.where(valid, 0.0,
                                                             -jnp.inf)
    # A memory smaller than the replay batch: some slots drawn twice.
    k = min(n_global, valid.shape[0])
    idx = jnp.resize(jax.lax.top_k(scores, k)[1], (n_global,))
    n = n_global // count
    idx = jax.lax.dynamic_slice_in_dim(idx, index * n, n)
    any_ = jnp.any(valid)
    own = lambda a: jnp.resize(jnp.asarray(a), (n, *np.shape(a)[1:]))
    pick = lambda a, cur: jnp.where(
        any_, a[idx], own(cur).astype(a.dtype))
    return {"x": pick(x, batch["x"]), "y": pick(y, batch["y"]),
            "t": pick(t, batch["t"]), "w": valid[idx].astype(jnp.float32),
            "logits": logits[idx]}

  def batch_fn(self, s, batch, rng, shard):
    """The current batch followed by ``replay_batches`` replay batches, each
    drawn for the global batch and split among the shards (as long, in all,
    as ``memory_logits``, their stored outputs)."""
    b, count = batch["y"].shape[0], shard[1]
    n_global = self.replay_size or count * b
    if not self.replay_size and self.replay == "union":
      # From the global batch, so any number of devices draws what one
      # device would.
      n_global = max(1, round(count * b * self._union))
      if n_global % count:
        raise ValueError(
            f"replay='union' replays round({count * b} x "
            f"{self._union:.4g}) = {n_global} examples a step, which do not "
            f"split over {count} devices: set replay_size to a multiple of "
            f"{count}")
    parts = [self.draw(s["memory"], jax.random.fold_in(rng, k), n_global,
                         shard, batch) for k in range(self.replay_batches)]
    cat = lambda k, a: jnp.concatenate([jnp.asarray(a)] + [
        r[k].astype(jnp.asarray(a).dtype) for r in parts])
    out = {k: cat(k, batch[k]) for k in ("x", "y", "t")}
    out["w"] = cat("w", jnp.ones((b,), jnp.float32))
    out["memory_logits"] = jnp.concatenate([r["logits"] for r in parts])
    return out

  def update_method_state(self, s, old_params, new_params, grads, info):
    """A reservoir memory streams in the current (not replayed) examples of
    the global batch, in order, every step."""
    if self.selection != "reservoir":
      return s
    b = info.batch
    n = b["y"].shape[0] - b["memory_logits"].shape[0]  # current examples
    logits = info.outputs.get("logits") if self.num_logits else None
    current = lambda a: info.gather(a[:n])  # the global batch, in order
    return {**s, "memory": mem.reservoir_add(
        s["memory"], current(b["x"]), current(b["y"]), current(b["t"]),
        info.rng, logits=None if logits is None else current(logits))}

  # -- exemplars at the end of a task -----------------------------------------

  def _outputs(self, params, batch_stats, x):
    """``(logits (N, C), features (N, D))`` in eval mode, in chunks of up
    to 512 examples (the last padded); each chunk split over the devices of
    a data-parallel mesh (``on_task_end``) by ``rowwise``."""
    n = x.shape[0]
    size = min(n, 512)
    x = jnp.concatenate([x, jnp.zeros((-n % size, *x.shape[1:]), x.dtype)])
    chunks = x.reshape(-1, size, *x.shape[1:])
    logits, f = jax.lax.map(lambda c: rowwise(
        lambda r: self._model.apply(params, batch_stats, r)[0], c), chunks)
    return logits.reshape(-1, logits.shape[-1])[:n], f.reshape(
        -1, f.shape[-1])[:n]

  def _features(self, params, batch_stats, x):
    return self._outputs(params, batch_stats, x)[1]

  @staticmethod
  def on_devices(ctx, fn, *args):
    """``fn(*args)``, end-of-task work whose forward passes go through
    ``_outputs`` or ``rowwise``: on ``ctx``'s data-parallel mesh, ``args``
    placed replicated on it (``on_mesh``; arrays placed so already, e.g.
    the parameters placed once for a hook's calls class by class, are
    kept) and ``fn`` traced under ``data_axis_mesh``, so those passes
    split their rows over the devices when their count divides them
    (``rowwise``). The outputs stay replicated on the mesh: a hook doing
    eager work on them beside ``ctx``'s arrays takes them back with
    ``one_device``. Without a mesh, ``fn(*args)``."""
    if ctx.mesh is None:
      return fn(*args)
    with data_axis_mesh(ctx.mesh):
      return fn(*on_mesh(ctx.mesh, args))

  def grouped(self, stream, index: int):
    """Task ``index``'s training examples (``train_split``) by class, padded
    to shapes fixed for the stream: ``(x (G, N, ...), counts (G,), y
    (G,))``, the first ``counts[g]`` rows of group ``g`` real (so what runs
    on them compiles once)."""
    split = self.train_split(stream, index)
    by_class = {c: np.flatnonzero(split.y == c)
                for c in stream.tasks[index].classes}
    rows, counts, y = group_rows(by_class, self._groups,
                                 _round_up(self._rows, 8))
    return split.x[rows], counts, y

  def per_group(self, fn, x, counts, *group_args):
    """``fn(x, counts, *group_args)`` on ``grouped``'s rows: all groups at
    once when ``x`` is in memory; for streamed data, class by class (one
    class's images decoded at a time; padding groups are zeros), the
    outputs concatenated along the group axis."""
    if isinstance(x, np.ndarray):
      return fn(x, counts, *group_args)
    outs = {g: fn(*args) for g, args in _by_class(x, counts, *group_args)}
    zero = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                        next(iter(outs.values())))
    return jax.tree.map(lambda *o: jnp.concatenate(o), *[
        outs.get(g, zero) for g in range(len(counts))])

  def _select_fn(self, herding, params, batch_stats, memory, x, counts, y, t,
                 m, keys):
    """Shrinks old classes to ``m`` and stores ``m`` exemplars of each new
    class (rows of ``x``: ``(G, N, ...)``, the first ``counts[g]`` real;
    ``keys`` ``(G,)``, each group's for random selection)."""
    g, n = x.shape[:2]
    if herding:
      feats = self._features(params, batch_stats,
                             x.reshape(g * n, *x.shape[2:]))
      order = mem.herding_classes(feats.reshape(g, n, -1), counts, m,
                                  self._m_max)
    else:  # a random permutation of each class's rows, real rows first
      noise = jax.vmap(lambda k: jax.random.uniform(k, (n,)))(keys)
      noise = jnp.where(jnp.arange(n)[None] < counts[:, None], noise, 2.0)
      order = jnp.argsort(noise, axis=1)[:, :self._m_max]
      order = jnp.pad(order, ((0, 0), (0, self._m_max - order.shape[1])))
    chosen = jnp.take_along_axis(
        x, order.reshape(g, -1, *([1] * (x.ndim - 2))), axis=1)
    logits = None
    if self.num_logits:
      flat = chosen.reshape(-1, *x.shape[2:])
      logits = rowwise(lambda r: self._model.apply(params, batch_stats, r)[
          0][0], flat).reshape(g, self._m_max, -1)
    memory = mem.shrink(memory, m)
    return mem.add_exemplars(memory, chosen, y, t, jnp.minimum(counts, m),
                             logits)

  def on_task_end(self, ctx):
    if self.selection == "reservoir":
      return ctx.method_state
    seen = sum(len(t.classes) for t in ctx.stream.tasks[:ctx.index + 1])
    m = mem.per_class_budget(self.capacity, seen, self.budget,
                             self.per_class)
    x, counts, y = self.grouped(ctx.stream, ctx.index)
    keys = jax.random.split(jax.random.key(ctx.seed * 1000 + ctx.index),
                            len(y))
    state = ctx.method_state
    # Placed on a data-parallel mesh once; the memory stays there from
    # class to class when the task streams.
    params, batch_stats, memory = on_mesh(ctx.mesh, (
        ctx.params, ctx.batch_stats, state["memory"]))
    select = lambda memory, x, counts, y, keys: self.on_devices(
        ctx, functools.partial(self._select, self.selection == "herding"),
        params, batch_stats, memory, x, counts, y,
        np.full(len(y), ctx.index), m, keys)

    if isinstance(x, np.ndarray):  # every class at once
      return {**state, "memory": select(memory, x, counts, y, keys)}
    # Streamed: one class's images decoded at a time (the same memory).
    for _, args in _by_class(x, counts, y, keys):
      memory = select(memory, *args)
    return {**state, "memory": memory}


def _by_class(x, counts, *group_args):
  """``(g, (x[g:g+1] decoded, counts[g:g+1], *args[g:g+1]))`` for each
  group ``g`` with rows, of a streamed ``grouped`` task: one class's images
  decoded at a time."""
  for g in np.flatnonzero(counts):
    yield g, (materialise(x[g:g + 1]), counts[g:g + 1],
              *(a[g:g + 1] for a in group_args))


def group_rows(by_class: dict, groups: int, width: int):
  """``{class: row indices}`` as fixed-shape ``(rows (groups, width),
  counts (groups,), y (groups,))``: group ``g``'s first ``counts[g]`` rows
  real, the rest (and unused groups) padding."""
  rows = np.zeros((groups, width), np.int64)
  counts = np.zeros(groups, np.int64)
  y = np.zeros(groups, np.int64)
  for g, (c, idx) in enumerate(by_class.items()):
    rows[g, :len(idx)], counts[g], y[g] = idx, len(idx), c
  return rows, counts, y


def _round_up(n: int, k: int) -> int:
  return -(-n // k) * k
