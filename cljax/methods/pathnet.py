"""PathNet (Fernando, Banarse, Blundell, Zwols, Ha, Rusu, Pritzel &
Wierstra 2017, "PathNet: Evolution Channels Gradient Descent in Super
Neural Networks"), in its continual form: a tournament over paths through
a modular network per task, then the winning path frozen."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax import _validate
from cljax.losses._cross_entropy import masked_cross_entropy
from cljax.methods._base import Method
from cljax.methods.packnet import scale_by_tree
from cljax.models._heads import example_masks, mask_logits


def path_masks(genes, modules: int):
  """A path's modules: genotypes ``(..., L, N)`` of module indices in
  ``[0, modules)`` (N per layer, repeats allowed) -> bool ``(..., L,
  modules)``, the modules each layer uses."""
  return jnp.any(jax.nn.one_hot(genes, modules, dtype=bool), axis=-2)


def apply_path(params, mask):
  """``params`` of a ``ModularMLP`` with the modules outside ``mask`` (bool
  ``(L, M)``) zeroed: as ``relu(0) = 0`` they add nothing to their layer's
  sum, so the network computes the path alone."""
  layers = {i: {"kernel": layer["kernel"] * mask[i][:, None, None],
                "bias": layer["bias"] * mask[i][:, None]}
            for i, layer in params["layers"].items()}
  return {**params, "layers": layers}


def mutate(genes, key, rate, modules: int):
  """PathNet's mutation (sec. 2.1): each index independently, with
  probability ``rate``, shifted by an integer drawn uniformly from ``[-2,
  2]`` (modulo the module count)."""
  k_which, k_shift = jax.random.split(key)
  which = jax.random.uniform(k_which, genes.shape) < rate
  shift = jax.random.randint(k_shift, genes.shape, -2, 3)
  return jnp.where(which, (genes + shift) % modules, genes)


class PathNet(Method):
  """PathNet: each task evolves a path (``active`` modules per layer)
  through a modular network by a binary tournament, trains only the path
  it evaluates, and freezes the winner (task-IL).

  A task starts from ``population`` random genotypes. A tournament takes
  two at random; each is trained for ``steps_per_path`` steps (only its
  unfrozen modules move) and scored by its mean training accuracy over
  them (the paper's fitness, the negative training error); the loser's
  genotype is overwritten by the winner's, mutated (``mutate``, rate
  ``1 / (active L)`` by default, the paper's). When the task ends, the
  fittest path measured is the task's: its modules are frozen for the rest
  of the stream (later paths may still use them), every other module is
  re-initialised, and task ``j`` is predicted through its own path. The
  head trains only its task's classes (task-IL's masked cross-entropy);
  the modules' sum per layer is ``ModularMLP``'s (model head
  ``"modular"``, built by ``cljax run``).

  Args:
    active: modules per layer in a path (the paper's ``N``: 3 on binary
      MNIST, 4 on CIFAR).
    population: genotypes (64, the paper's).
    steps_per_path: training steps per path in a tournament (the paper's
      ``T`` = 50 minibatches).
    mutation: the per-index mutation probability (0: ``1 / (active L)``).
  """

  name = "pathnet"
  task_incremental_only = True
  head = "modular"

  def __init__(self, active: int = 3, population: int = 64,
               steps_per_path: int = 50, mutation: float = 0.0):
    _validate.check_integer("active", active, 1)
    _validate.check_integer("population", population, 2)
    _validate.check_integer("steps_per_path", steps_per_path, 1)
    _validate.check_unit_interval("mutation", mutation)
    self.active, self.population = int(active), int(population)
    self.steps_per_path, self.mutation = int(steps_per_path), float(mutation)


  def _shape(self, params):
    """``(L, M)``: layers and modules of a ``ModularMLP``."""
    kernels = [params["layers"][i]["kernel"] for i in sorted(params["layers"])]
    return len(kernels), int(np.shape(kernels[0])[0])

  def init_state(self, model, stream):
    if "layers" not in model.params or np.ndim(
        model.params["layers"][0]["kernel"]) != 3:
      raise ValueError("pathnet needs the modular network (model.head="
                       "'modular' on an mlp)")
    layers, modules = self._shape(model.params)
    # Random paths of ``active`` modules (each task draws its own at its
    # start): what the untrained network predicts through for FWT's
    # random-init baseline.
    return {"genes": jax.random.randint(
                self._key(0, -1, 0), (self.population, layers, self.active),
                0, modules, jnp.int32),
            "fitness": jnp.full((self.population,), -jnp.inf),
            "pair": jnp.array([0, 1], jnp.int32),
            "slot": jnp.zeros((), jnp.int32),
            "count": jnp.zeros((), jnp.int32),
            "score": jnp.zeros((2,)),
            "frozen": jnp.zeros((layers, modules), bool),
            "paths": jnp.zeros((stream.num_tasks, layers, modules), bool)}

  def _key(self, seed, index, salt):
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed),
                                                 0x70617468 + index), salt)

  def _pair(self, key):
    """Two distinct genotypes drawn uniformly."""
    return jax.random.choice(key, self.population, (2,), replace=False
                             ).astype(jnp.int32)

  def on_task_start(self, ctx):
    s = ctx.method_state
    layers, modules = s["frozen"].shape
    genes = jax.random.randint(self._key(ctx.seed, ctx.index, 0),
                               s["genes"].shape, 0, modules, jnp.int32)
    return {**s, "genes": genes,
            "fitness": jnp.full_like(s["fitness"], -jnp.inf),
            "pair": self._pair(self._key(ctx.seed, ctx.index, 1)),
            "slot": jnp.zeros((), jnp.int32),
            "count": jnp.zeros((), jnp.int32),
            "score": jnp.zeros((2,))}

  def start_params(self, ctx):
    """From the second task: every module off the frozen paths drawn
    afresh (LeCun-normal kernels, zero biases)."""
    if ctx.index == 0:
      return None
    frozen = ctx.method_state["frozen"]
    key = self._key(ctx.seed, ctx.index, 2)
    layers = {}
    for i, layer in ctx.params["layers"].items():
      fresh = jax.nn.initializers.lecun_normal(batch_axis=0)(  # per module
          jax.random.fold_in(key, i), layer["kernel"].shape)
      keep = frozen[i]
      layers[i] = {"kernel": jnp.where(keep[:, None, None], layer["kernel"],
                                       fresh),
                   "bias": jnp.where(keep[:, None], layer["bias"], 0.0)}
    return {**ctx.params, "layers": layers}, ctx.batch_stats

  def _current(self, s):
    return path_masks(s["genes"][s["pair"][s["slot"]]], s["frozen"].shape[1])

  def loss_fn(self, model):

    def loss(params, batch_stats, s, batch, masks, rng):
      (logits, _), new_stats = model.apply(
          apply_path(params, self._current(s)), batch_stats, batch["x"],
          train=True)
      active = example_masks(masks, batch["t"])
      ce = jnp.mean(masked_cross_entropy(logits, batch["y"], active))
      correct = jnp.argmax(mask_logits(logits, active), -1) == batch["y"]
      return ce, ({"ce": ce}, new_stats, {"correct": correct})

    return loss

  @property
  def extra_args(self):
    def args(params, batch_stats, s, batch, masks, rng):
      train = self._current(s) & ~s["frozen"]  # the path's free modules
      layers = {i: {"kernel": jnp.broadcast_to(
                        train[i][:, None, None], layer["kernel"].shape),
                    "bias": jnp.broadcast_to(train[i][:, None],
                                             layer["bias"].shape)}
                for i, layer in params["layers"].items()}
      scale = {**jax.tree.map(jnp.ones_like, params), "layers": layers}
      return {"trainable": scale}
    return args

  def optimizer(self, base, params):
    return optax.chain(base, scale_by_tree("trainable"))

  def update_method_state(self, s, old_params, new_params, grads, info):
    """The tournament's clock: the evaluated path's accuracy accumulates;
    after ``steps_per_path`` steps the pair's second path trains, after
    both the loser takes the winner's mutated genotype and a new pair is
    drawn."""
    acc = jnp.mean(info.gather(info.outputs["correct"]).astype(jnp.float32))
    score = s["score"].at[s["slot"]].add(acc)
    count = s["count"] + 1
    done = count >= self.steps_per_path
    last = done & (s["slot"] == 1)
    fit = score / self.steps_per_path
    win = jnp.where(fit[0] >= fit[1], 0, 1)
    winner, loser = s["pair"][win], s["pair"][1 - win]
    layers, modules = s["frozen"].shape
    rate = self.mutation or 1.0 / (self.active * layers)
    k_mut, k_pair = jax.random.split(info.rng)
    child = mutate(s["genes"][winner], k_mut, rate, modules)
    fitness = s["fitness"].at[winner].set(fit[win]).at[loser].set(-jnp.inf)
    return {**s,
            "genes": jnp.where(last, s["genes"].at[loser].set(child),
                               s["genes"]),
            "fitness": jnp.where(last, fitness, s["fitness"]),
            "pair": jnp.where(last, self._pair(k_pair), s["pair"]),
            "slot": jnp.where(done, 1 - s["slot"], s["slot"]),
            "count": jnp.where(done, 0, count),
            "score": jnp.where(last, jnp.zeros(2), score)}

  def _best(self, s):
    """The fittest path measured (the pair's first while none is)."""
    best = jnp.where(jnp.isfinite(jnp.max(s["fitness"])),
                     jnp.argmax(s["fitness"]), s["pair"][0])
    return path_masks(s["genes"][best], s["frozen"].shape[1])

  def on_task_end(self, ctx):
    s, k = ctx.method_state, ctx.index
    if not np.isfinite(np.max(np.asarray(s["fitness"]))):
      warnings.warn(
          f"pathnet: task {k} ended before its first tournament finished "
          f"(2 x steps_per_path = {2 * self.steps_per_path} steps): its path "
          "is a random one; train longer or lower steps_per_path",
          stacklevel=2)
    best = self._best(s)
    return {**s, "paths": s["paths"].at[k].set(best),
            "frozen": s["frozen"] | best}

  def eval_params(self, s, params, batch_stats, task, current):
    mask = s["paths"][task] if task < current else self._best(s)
    return apply_path(params, mask), batch_stats

  def network_use(self, s, num_tasks):
    """The fraction of the modules each task's path uses."""
    return [float(np.mean(p)) for p in np.asarray(s["paths"])[:num_tasks]]
