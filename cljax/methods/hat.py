"""Hard Attention to the Task (Serra, Suris, Miron & Karatzoglou 2018,
"Overcoming Catastrophic Forgetting with Hard Attention to the Task",
ICML)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cljax import _validate
from cljax.losses._cross_entropy import masked_cross_entropy
from cljax.methods._base import Method
from cljax.methods.packnet import scale_by_tree
from cljax.models._heads import example_masks
from cljax.models._units import (connection_min, layer_at, unit_layers,
                                 with_layer)


def apply_gates(params, gates):
  """``params`` with layer ``l``'s output units scaled by ``gates[l]``
  (``(units_l,)``, in ``[0, 1]``): its kernel's last axis and its bias. As
  ``a >= 0``, ``relu((W a) x + b a) = a relu(W x + b)`` (and max-pooling
  commutes with it): the network with gated units (Serra et al. 2018, eq.
  1) without touching its forward pass."""
  for key, a in zip(unit_layers(params), gates):
    layer = layer_at(params, key)
    params = with_layer(params, key, {"kernel": layer["kernel"] * a,
                                      "bias": layer["bias"] * a})
  return params


def attention_regularizer(gates, previous):
  """HAT's attention regulariser (eq. 6): ``sum_l sum_i a_li (1 - p_li) /
  sum_l sum_i (1 - p_li)`` over the gates ``a`` of the current task and
  the cumulative ones ``p`` of the earlier tasks (all 0 before the second
  task: the mean gate)."""
  if len(gates) != len(previous):
    raise ValueError(f"gates ({len(gates)} layers) and previous "
                     f"({len(previous)}) must have one entry per gated layer")
  num = sum(jnp.sum(a * (1 - p)) for a, p in zip(gates, previous))
  den = sum(jnp.sum(1 - p) for p in previous)
  return num / jnp.maximum(den, 1e-12)


def conditioning(params, previous):
  """The gradient factor of eq. 2, a tree like ``params``: ``1 -
  min(p_l[i], p_{l-1}[j])`` for the weight from unit ``j`` of layer ``l-1``
  to unit ``i`` of layer ``l`` (the first layer: ``1 - p_1[i]``; a dense
  layer after convolutions repeats the last conv's gate over positions:
  ``models.connection_min``), ``1 - p_l[i]`` for its bias; 1 for the head
  and the gates."""
  scale = jax.tree.map(jnp.ones_like, params)
  for key, m in zip(unit_layers(params), connection_min(params, previous)):
    scale = with_layer(scale, key, jax.tree.map(lambda v: 1 - v, m))
  return scale


def annealed_scale(step, steps: int, smax):
  """The gate's scale at batch ``step`` (0-based) of an epoch of ``steps``
  (eq. 3): ``1/smax + (smax - 1/smax) step / (steps - 1)``, from ``1/smax``
  to ``smax``."""
  frac = step / jnp.maximum(steps - 1, 1)
  return 1 / smax + (smax - 1 / smax) * jnp.minimum(frac, 1.0)


def compensation(e, s, smax, limit: float = 50.0):
  """The embeddings' gradient factor (eq. 5, as the authors' code clamps
  it): ``smax [cosh(clip(s e, +-limit)) + 1] / (s [cosh(e) + 1])``."""
  return (smax * (jnp.cosh(jnp.clip(s * e, -limit, limit)) + 1) /
          (s * (jnp.cosh(e) + 1)))


def clamp_gates(limit: float) -> optax.GradientTransformation:
  """After the optimizer: keeps the embeddings ``params["gates"]`` in
  ``[-limit, limit]`` (the authors' code clamps them at 6 after each
  step)."""
  def update(updates, state, params=None):
    gates = jax.tree.map(lambda u, p: jnp.clip(p + u, -limit, limit) - p,
                         updates["gates"], params["gates"])
    return {**updates, "gates": gates}, state
  return optax.GradientTransformation(lambda params: optax.EmptyState(),
                                      update)


class HAT(Method):
  """Hard Attention to the Task: a task embedding gates every hidden unit,
  ``a^t_l = sigmoid(s e^t_l)``, and the units earlier tasks use are
  protected from later gradients (task-IL).

  Each step gates the network with the current task's embedding
  (``apply_gates``) at the scale ``s`` annealed over each epoch from
  ``1/smax`` to ``smax`` (eq. 3), minimises ``CE + c R`` with the attention
  regulariser ``R`` (eq. 6) against the cumulative gates ``a^{<t} =
  max_{j<t} sigmoid(smax e^j)``, multiplies the gradients of the weights
  by ``1 - min(a^{<t}_l[i], a^{<t}_{l-1}[j])`` (eq. 2) and those of the
  embeddings by the compensation of eq. 5, and clamps the embeddings to
  ``[-6, 6]`` after the update (the authors' code). Each task starts from
  fresh ``N(0, 1)`` embeddings; task ``j`` is predicted with its own gates
  at ``s = smax``. The head trains only its task's classes (task-IL's
  masked cross-entropy).

  Needs the gated model head (``head = "gated"``: ``cljax run`` builds it;
  mlp or cnn, networks without BatchNorm) and one device.

  Args:
    c: the regularisation strength (0.75, the paper's; it reports a wide
      plateau over 0.1-2.5).
    smax: the largest scale (400, the paper's; 25-800 work about equally).
    lr: the learning rate of the plain SGD HAT trains with in place of the
      run's optimizer (0.05, the authors' code; no momentum, no weight
      decay: see ``optimizer``). ``train.first_task_lr`` still sets it per
      task; ``train.schedule`` does not apply.
  """

  name = "hat"
  task_incremental_only = True
  head = "gated"
  data_hparams = ("c", "smax")
  CLAMP = 6.0  # the embeddings' bound, the authors' code's thres_emb

  def __init__(self, c: float = 0.75, smax: float = 400.0, lr: float = 0.05):
    _validate.check_nonnegative("c", c)
    _validate.check_value("smax", smax, lambda v: v >= 1, ">= 1")
    _validate.check_positive("lr", lr)
    self.c, self.smax, self.lr = float(c), float(smax), float(lr)


  def init_state(self, model, stream):
    if "gates" not in model.params:
      raise ValueError("hat needs the gated model head (model.head="
                       "'gated', mlp or cnn); got a model without "
                       "params['gates']")
    gates = model.params["gates"]
    return {"embeddings": jax.tree.map(
                lambda g: jnp.zeros((stream.num_tasks, *g.shape)), gates),
            "previous": jax.tree.map(jnp.zeros_like, gates),
            "count": jnp.zeros((), jnp.int32),
            "n_train": jnp.zeros((), jnp.int32)}

  def optimizer(self, base, params):
    """Plain SGD at ``lr``, whatever the run's optimizer: the compensation
    (eq. 5) and the conditioning (eq. 2) scale gradients, which an adaptive
    optimizer such as Adam divides out (the embeddings then barely move
    and protected weights drift)."""
    del base
    sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=self.lr)
    return optax.chain(scale_by_tree("scale"), sgd, clamp_gates(self.CLAMP))

  def start_params(self, ctx):
    key = jax.random.fold_in(jax.random.key(ctx.seed), 0x686174 + ctx.index)
    keys = jax.random.split(key, len(ctx.params["gates"]))
    fresh = {i: jax.random.normal(k, g.shape) for (i, g), k in
             zip(sorted(ctx.params["gates"].items()), keys)}
    return {**ctx.params, "gates": fresh}, ctx.batch_stats

  def on_task_start(self, ctx):
    n = len(self.train_split(ctx.stream, ctx.index))
    return {**ctx.method_state, "count": jnp.zeros((), jnp.int32),
            "n_train": jnp.asarray(n, jnp.int32)}

  def on_task_end(self, ctx):
    s, k = ctx.method_state, ctx.index
    gates = ctx.params["gates"]
    return {**s,
            "embeddings": jax.tree.map(lambda t, e: t.at[k].set(e),
                                       s["embeddings"], gates),
            "previous": jax.tree.map(
                lambda p, e: jnp.maximum(p, jax.nn.sigmoid(self.smax * e)),
                s["previous"], gates)}

  @staticmethod
  def _list(tree):
    return [tree[i] for i in sorted(tree)]

  def batch_fn(self, s, batch, rng, shard):
    """Adds the batch's scale ``s`` (eq. 3), from the step's position in
    the epoch (epochs of ``n_train // batch`` steps, as the loop draws)."""
    if shard[1] > 1:
      raise ValueError("hat runs on one device: set parallel.data=1")
    steps = jnp.maximum(s["n_train"] // batch["x"].shape[0], 1)
    return {**batch, "hat_s": annealed_scale(s["count"] % steps, steps,
                                             self.smax)}

  def loss_fn(self, model):

    def loss(params, batch_stats, s, batch, masks, rng):
      gates = [jax.nn.sigmoid(batch["hat_s"] * e)
               for e in self._list(params["gates"])]
      (logits, _), new_stats = model.apply(apply_gates(params, gates),
                                           batch_stats, batch["x"],
                                           train=True)
      ce = jnp.mean(masked_cross_entropy(logits, batch["y"], example_masks(
          masks, batch["t"])))
      reg = attention_regularizer(gates, self._list(s["previous"]))
      return ce + self.c * reg, ({"ce": ce, "attention": reg}, new_stats)

    return loss

  @property
  def extra_args(self):
    def args(params, batch_stats, s, batch, masks, rng):
      scale = conditioning(params, self._list(s["previous"]))
      scale["gates"] = jax.tree.map(
          lambda e: compensation(e, batch["hat_s"], self.smax),
          params["gates"])
      return {"scale": scale}
    return args

  def update_method_state(self, s, old_params, new_params, grads, info):
    return {**s, "count": s["count"] + 1}

  def network_use(self, s, num_tasks):
    """The fraction of the gated units each task's gates open
    (``sigmoid(smax e^t) > 0.5``, i.e. ``e^t > 0``); tasks may share
    units."""
    table = np.concatenate([np.asarray(t) for t in self._list(
        s["embeddings"])], axis=-1)
    return [float(np.mean(row > 0)) for row in table[:num_tasks]]

  def eval_params(self, s, params, batch_stats, task, current):
    e = (params["gates"] if task >= current else
         jax.tree.map(lambda t: t[task], s["embeddings"]))
    gates = [jax.nn.sigmoid(self.smax * g) for g in self._list(e)]
    return apply_gates(params, gates), batch_stats
