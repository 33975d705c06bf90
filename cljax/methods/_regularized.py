"""Shared pieces of the methods that add a term to fine-tuning's loss."""

from __future__ import annotations

import weakref

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cljax._distributed import one_device, replicate, split_rows
from cljax.data._batching import eval_batches
from cljax.losses._cross_entropy import masked_cross_entropy
from cljax.methods._base import Method, TaskContext, task_cross_entropy
from cljax.models._functional import FunctionalModel
from cljax.regularizers import (FISHER_ESTIMATORS, add_quadratic_penalty,
                                ewc_penalty, ewc_penalty_grad, example_keys,
                                fisher_diagonal, layerwise_fisher_diagonal,
                                layerwise_mas_importance, mas_importance)


def task_sample(ctx: TaskContext, n: int | None, seed: int = 0):
  """Up to ``n`` training examples of task ``ctx.index`` (a fixed random
  subset, so the importance estimate is reproducible)."""
  split = ctx.stream.tasks[ctx.index].train
  if n is None or n >= len(split):
    return split
  idx = np.random.default_rng([seed, ctx.index]).permutation(len(split))[:n]
  return split.take(np.sort(idx))


IMPORTANCE_PATHS = ("layerwise", "vmap")


def padded_task_sample(ctx: TaskContext, n: int | None):
  """``task_sample`` padded to exactly ``n`` examples (one padded
  ``eval_batches`` batch) so that the importance function compiles once per
  stream. Returns ``(x, y, w)`` with ``w`` 1 on real examples and 0 on
  padding."""
  split = task_sample(ctx, n)
  b = next(eval_batches(split, len(split) if n is None else n))
  return b["x"], b["y"], b["w"]


def check_importance_options(path: str, estimator: str = "empirical"):
  if path not in IMPORTANCE_PATHS:
    raise ValueError(f"path must be one of {IMPORTANCE_PATHS}, got {path!r}")
  if estimator not in FISHER_ESTIMATORS:
    raise ValueError(f"estimator must be one of {FISHER_ESTIMATORS}, got "
                     f"{estimator!r}")


def step_delta(info, who: str):
  """The step's parameter change, ``info.updates`` (``StepInfo``), for the
  path-integral methods; a clear error where a caller built the
  ``StepInfo`` without it."""
  if info is None or getattr(info, "updates", None) is None:
    raise ValueError(f"{who}.update_method_state needs StepInfo.updates "
                     "(the optimizer's updates, new_params - old_params)")
  return info.updates


def importance_function(model: FunctionalModel, kind: str, *,
                        chunk_size: int, path: str = "layerwise",
                        estimator: str = "empirical"):
  """A function jitted once: ``(params, batch_stats, xs, ys, weights, mask,
  key_data) -> importance`` (a pytree like params), for ``kind``
  ``"fisher"`` (``estimator`` as in ``fisher_diagonal``) or ``"mas"``, over
  the logits in ``mask`` (``(C,)`` bool), in eval mode; ``key_data`` holds
  one key per example (``jax.random.key_data``: raw, so that it splits over
  devices like the examples).

  ``path="layerwise"`` (default) uses the model's layer taps
  (``layerwise_fisher_diagonal``); ``"vmap"`` (or a model without taps) uses
  ``vmap(grad)`` over the whole network. Both are exact and agree.
  """
  check_importance_options(path, estimator)
  taps = model.taps if path == "layerwise" else None

  def fn(params, batch_stats, xs, ys, weights, mask, key_data):
    key = jax.random.wrap_key_data(key_data)  # (N,) keys, one per example
    if taps is not None and kind == "fisher":
      return layerwise_fisher_diagonal(
          taps, params, batch_stats, xs, ys, mask=mask, estimator=estimator,
          key=key, weights=weights, chunk_size=chunk_size)
    if taps is not None:
      return layerwise_mas_importance(taps, params, batch_stats, xs, mask=mask,
                                      weights=weights, chunk_size=chunk_size)

    def logits(p, x):
      return model.apply(p, batch_stats, x[None])[0][0]

    if kind == "fisher":
      nll = lambda p, x, y: masked_cross_entropy(logits(p, x), y[None],
                                                 mask)[0]
      return fisher_diagonal(nll, params, xs, ys, chunk_size=chunk_size,
                             estimator=estimator, num_classes=mask.shape[-1],
                             key=key, weights=weights)
    out = lambda p, x: jnp.where(mask, logits(p, x)[0], 0.0)
    return mas_importance(out, params, xs, chunk_size=chunk_size,
                          weights=weights)

  return jax.jit(fn)


def task_importance(fn, ctx: TaskContext, samples: int | None):
  """``fn`` (from ``importance_function``) on up to ``samples`` training
  examples of task ``ctx.index``, over that task's active logits; example
  ``i`` of the sample gets the key ``fold_in(key(ctx.index), i)`` (EWC's
  ``"sampled"`` estimator draws its label with it).

  On a data-parallel mesh (``ctx.mesh``) the examples, with their keys, are
  split over the mesh's devices (``sharded_mean``): equal to one device's
  result to float tolerance, for every estimator."""
  x, y, w = padded_task_sample(ctx, samples)
  keys = np.asarray(jax.random.key_data(
      example_keys(jax.random.key(ctx.index), len(w))))
  mask = jnp.asarray(ctx.masks[ctx.index])
  if ctx.mesh is None:
    return fn(ctx.params, ctx.batch_stats, x, y, w, mask, keys)
  pad = -len(w) % ctx.mesh.shape["data"]
  x, y, keys = (np.concatenate([a, np.repeat(a[-1:], pad, 0)])
                for a in (x, y, keys))
  w = np.concatenate([w, np.zeros(pad, w.dtype)])
  replicated = NamedSharding(ctx.mesh, P())
  out = sharded_mean(fn, ctx.mesh)(
      *replicate((ctx.params, ctx.batch_stats), replicated),
      *split_rows((x, y, w), NamedSharding(ctx.mesh, P("data"))),
      replicate(mask, replicated),
      split_rows(keys, NamedSharding(ctx.mesh, P("data"))))
  return one_device(out)


# fn -> {mesh: its sharded form}; an entry lives as long as its ``fn`` (a
# method's importance function).
_SHARDED = weakref.WeakKeyDictionary()


def sharded_mean(fn, mesh):
  """``_sharded_mean(fn, mesh)``, built once per function and mesh."""
  forms = _SHARDED.setdefault(fn, {})
  if mesh not in forms:
    forms[mesh] = _sharded_mean(fn, mesh)
  return forms[mesh]


def _sharded_mean(fn, mesh):
  """``fn(params, batch_stats, xs, ys, weights, mask, keys)``, a weighted
  mean over examples (as ``importance_function``'s), with the examples and
  their keys split over ``mesh``'s ``"data"`` axis: ``sum_d W_d m_d / sum_d W_d`` from each
  device's mean ``m_d`` of its share and the share's weight ``W_d`` (a
  share that is all padding counts 0)."""
  def shard(params, batch_stats, xs, ys, weights, mask, keys):
    local = fn(params, batch_stats, xs, ys, weights, mask, keys)
    own = jnp.sum(weights)
    total = jax.lax.psum(own, "data")
    return jax.tree.map(lambda m: jax.lax.psum(
        jnp.where(own > 0, m * own, 0.0), "data") / total, local)

  return jax.jit(jax.shard_map(
      shard, mesh=mesh, in_specs=(P(), P(), P("data"), P("data"), P("data"),
                                  P(), P("data")),
      out_specs=P(), check_vma=False))


PENALTY_FORMS = ("transform", "loss")


class PenalisedFineTune(Method):
  """Fine-tuning plus a quadratic penalty on the parameters:

  ``L = CE + strength * (0.5 sum_i importance_i (theta_i - anchor_i)^2 + const)``

  with ``anchor``, ``importance`` (and optionally a scalar ``const``) in the
  method state; subclasses define ``strength`` (a property of their
  hyperparameters, so that it follows ``with_hparams``) and fill the state in
  their task hooks.

  ``form="transform"`` (default): the penalty's gradient
  ``strength * importance * (theta - anchor)`` is added to the gradient by
  ``cljax.regularizers.add_quadratic_penalty`` chained before the optimizer,
  which gives the same trajectory as the loss form; the penalty's value is
  not computed per step (that reduction over every parameter cost more than
  the rest of the penalty in ``cljax bench``).
  ``form="loss"``: the penalty is added to the loss and logged per step as
  ``self.term``.
  """

  term = "penalty"
  strength = 0.0

  def __init__(self, form: str = "transform"):
    if form not in PENALTY_FORMS:
      raise ValueError(f"form must be one of {PENALTY_FORMS}, got {form!r}")
    self.form = form

  def penalty(self, params, s):
    """The penalty's value for ``method_state`` ``s``."""
    return self.strength * (ewc_penalty(params, s["anchor"], s["importance"])
                            + s.get("const", 0.0))

  def penalty_grad(self, params, s):
    """The penalty's gradient (what the transform form adds)."""
    return jax.tree.map(lambda g: self.strength * g, ewc_penalty_grad(
        params, s["anchor"], s["importance"]))

  def optimizer(self, base, params):
    if self.form == "loss":
      return base
    return optax.chain(add_quadratic_penalty(self.strength), base)

  @property
  def extra_args(self):
    if self.form == "loss":
      return None
    return lambda params, batch_stats, s, *_: {"anchor": s["anchor"],
                                               "importance": s["importance"]}

  def loss_fn(self, model):

    def loss(params, batch_stats, method_state, batch, masks, rng):
      ce, _, new_stats = task_cross_entropy(model, params, batch_stats, batch,
                                            masks)
      if self.form == "transform":
        return ce, ({"ce": ce}, new_stats)
      pen = self.penalty(params, method_state)
      return ce + pen, ({"ce": ce, self.term: pen}, new_stats)

    return loss


def zeros_like_tree(tree):
  return jax.tree.map(jnp.zeros_like, tree)
