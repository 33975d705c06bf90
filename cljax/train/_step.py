"""Jitted, pure train and eval steps; data parallelism via shard_map or pmap.

The per-shard step is one pure function ``(state, batch, rng) -> (state,
metrics)``. Given an ``axis_name`` it averages gradients, loss terms and
BatchNorm statistics over that axis with ``jax.lax.pmean``, so the same
function runs on one device (``jax.jit``), under ``jax.shard_map`` over a
``jax.make_mesh`` mesh (``data_parallel``), or under ``jax.pmap``.

Every array in ``TrainState`` keeps its shape for the whole stream (the head
is allocated at the total class count, ``masks`` is ``(T, C)``, method state
is fixed-size), so the step compiles once per stream.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cljax._distributed import data_axis, process_share, replicate
from cljax.models._conv import reverse_mode_convs
from cljax.models._functional import sync_batch_norm



class TrainState(NamedTuple):
  """Everything the train step reads and writes.

  Attributes:
    step: ``()`` int32, steps taken so far in the stream.
    params: trainable parameters (nested dict).
    batch_stats: BatchNorm statistics (nested dict, maybe empty).
    opt_state: the optax state.
    method_state: the method's fixed-shape state (anchors, importances, ...).
    masks: ``(T, C)`` bool active-logit table (``Stream.logit_masks``).
    nonfinite_step: ``()`` int32, first step whose loss terms, gradient or
      update were not all finite (its update and every later one are
      skipped); -1 if none.
    nonfinite_term: ``()`` int32, what was not finite at that step: the
      index of the first such loss term (in sorted term names), or, when
      every term was finite, ``len(terms)`` for the gradient of the total
      loss and ``len(terms) + 1`` for the update (after the optimizer and
      any projection or penalty transform).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  method_state: Any
  masks: jax.Array
  nonfinite_step: jax.Array
  nonfinite_term: jax.Array


def init_train_state(params, batch_stats, optimizer, method_state,
                     masks) -> TrainState:
  """A fresh state; ``params`` and ``batch_stats`` are copied (the jitted
  step donates its state, and the caller's arrays must survive it)."""
  params, batch_stats = jax.tree.map(jnp.array, (params, batch_stats))
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
      opt_state=optimizer.init(params), method_state=method_state,
      masks=jnp.asarray(masks, bool), nonfinite_step=-jnp.ones((), jnp.int32),
      nonfinite_term=jnp.zeros((), jnp.int32))


# loss_fn(params, batch_stats, method_state, batch, masks, rng)
#   -> (loss, (terms: dict[str, scalar], new_batch_stats[, outputs: dict]))
LossFn = Callable[..., tuple]


class StepInfo(NamedTuple):
  """What ``update_method_state`` sees of a step besides the parameters.

  Attributes:
    batch: this shard's batch as the loss saw it (after ``batch_fn``), but
      before a run's on-device augmentation, which happens inside the loss
      (so a memory stores the examples themselves).
    outputs: the loss's optional third aux element (e.g. logits), or ``{}``.
    rng: a key shared by every shard (it decides the same on all).
    gather: ``x -> x`` of every shard concatenated along axis 0, in shard
      order (the global batch's order); the identity on one device. Method
      state must stay identical on every shard, so anything it stores from
      the batch goes through this.
    shard: ``(index, count)`` of this shard (``(0, 1)`` on one device).
    masks: the ``(T, C)`` active-logit table.
    batch_stats: the BatchNorm statistics after the step.
    updates: the optimizer's updates, ``new_params - old_params`` (up to
      float rounding). A method that needs the step's parameter change
      reads it here: reading ``old_params`` after the update makes XLA
      copy every parameter array (it can no longer update them in place),
      unless the updates are themselves an elementwise function of the
      parameters (plain SGD with a penalty, weight decay), which XLA
      recomputes from them.
  """
  batch: dict
  outputs: dict
  rng: jax.Array
  gather: Callable
  shard: tuple
  masks: Any = None
  batch_stats: Any = None
  updates: Any = None


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                    *, axis_name: str | None = None,
                    update_method_state: Callable | None = None,
                    extra_args: Callable | None = None,
                    batch_fn: Callable | None = None) -> Callable:
  """Builds the pure per-shard train step ``(state, batch, rng) -> (state,
  metrics)``; wrap it with ``jax.jit``, ``data_parallel`` or ``jax.pmap``.

  Args:
    loss_fn: ``(params, batch_stats, method_state, batch, masks, rng) ->
      (loss, (terms, new_batch_stats[, outputs]))``; ``terms`` is a dict of
      scalar loss terms, ``outputs`` an optional dict handed to
      ``update_method_state``. Every step checks the terms, the gradient and
      the update for NaN/inf (``TrainState.nonfinite_step``).
    optimizer: any optax transformation (``GradientTransformationExtraArgs``
      receive ``extra_args``' keyword arguments in ``update``).
    axis_name: the data-parallel axis, or ``None`` on one device.
    update_method_state: optional ``(method_state, old_params, new_params,
      grads, info: StepInfo) -> method_state`` run after the update (e.g.
      SI's path integral, a reservoir memory's insertion).
    extra_args: optional ``(params, batch_stats, method_state, batch, masks,
      rng) -> dict`` of keyword arguments for ``optimizer.update``. Its
      ``rng`` is the same on every shard (the optimizer's inputs must agree
      across shards, e.g. A-GEM's reference sample).
    batch_fn: optional ``(method_state, batch, rng, shard) -> batch`` run
      before the loss (e.g. a replay batch appended from a memory), with a
      key shared by every shard and ``shard = (index, count)``: drawing the
      global sample with the shared key and keeping this shard's part makes
      any number of devices draw what one device would.
  Returns:
    The step. ``rng`` may be the same key every call: the step folds in
    ``state.step``. On CPU it traces the model inside
    ``reverse_mode_convs``: the plain convolutions of cljax's models have
    no forward-mode derivative there, so a loss that takes ``jax.jvp``
    through a convolutional network raises (reverse mode is unaffected).
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  mean = ((lambda x: jax.lax.pmean(x, axis_name)) if axis_name
          else (lambda x: x))
  gather = ((lambda x: jax.lax.all_gather(x, axis_name, tiled=True))
            if axis_name else (lambda x: x))

  def step(state: TrainState, batch: dict, rng: jax.Array):
    # The step differentiates the model in reverse mode only, so on CPU its
    # convolutions may take the VJP that keeps XLA:CPU's fast kernel inside
    # the step's own loops and conditionals (cljax.models._conv).
    with reverse_mode_convs():
      return _step(state, batch, rng)

  def _step(state: TrainState, batch: dict, rng: jax.Array):
    rng = shared_rng = jax.random.fold_in(rng, state.step)
    shard = (0, 1)
    if axis_name:
      shard = (jax.lax.axis_index(axis_name), jax.lax.axis_size(axis_name))
      rng = jax.random.fold_in(rng, shard[0])
    if batch_fn is not None:
      batch = batch_fn(state.method_state, batch,
                       jax.random.fold_in(shared_rng, 1), shard)
    args = (state.batch_stats, state.method_state, batch, state.masks, rng)
    (_, (terms, batch_stats, *outputs)), grads = grad_fn(state.params, *args)
    grads, terms, batch_stats = mean((grads, terms, batch_stats))
    kwargs = {}
    if extra_args:  # which may split its own work over the axis (rows_mean)
      with data_axis(axis_name):
        kwargs = extra_args(state.params, *args[:-1], shared_rng)
    updates, opt_state = optimizer.update(grads, state.opt_state,
                                          state.params, **kwargs)
    params = optax.apply_updates(state.params, updates)
    method_state = state.method_state
    if update_method_state is not None:
      method_state = update_method_state(
          method_state, state.params, params, grads,
          StepInfo(batch, outputs[0] if outputs else {},
                   jax.random.fold_in(shared_rng, 2), gather, shard,
                   state.masks, batch_stats, updates))
    # One reduction per step, over the new parameters (finite before, so
    # finite after iff the update is); the gradient is looked at only when
    # that fails, to say which it was. (The check costs ~7% of a fine-tuning
    # step of the MLP 784-400-400-10 at batch 128 on 2 CPU cores:
    # cljax bench.)
    # A sum (in at least float32, so float16 parameters cannot overflow it)
    # is NaN/inf iff some element is, or the parameters are beyond 1e38.
    all_finite = lambda tree: jnp.isfinite(sum(
        jnp.sum(x, dtype=jnp.promote_types(x.dtype, jnp.float32))
        for x in jax.tree.leaves(tree)))
    update_ok = all_finite(params)
    grad_ok = jax.lax.cond(update_ok, lambda: jnp.array(True),
                           lambda: all_finite(grads))
    finite = jnp.stack([jnp.all(jnp.isfinite(terms[k])) for k in
                        sorted(terms)] + [grad_ok, update_ok])
    ok = jnp.all(finite) & (state.nonfinite_step < 0)
    keep = lambda new, old: jax.tree.map(
        lambda a, b: jnp.where(ok, a, b), new, old)
    first_bad = (state.nonfinite_step < 0) & ~jnp.all(finite)
    new = state._replace(
        step=state.step + 1,
        params=keep(params, state.params),
        batch_stats=keep(batch_stats, state.batch_stats),
        opt_state=keep(opt_state, state.opt_state),
        method_state=keep(method_state, state.method_state),
        nonfinite_step=jnp.where(first_bad, state.step, state.nonfinite_step),
        nonfinite_term=jnp.where(first_bad, jnp.argmin(finite).astype(jnp.int32),
                                 state.nonfinite_term))
    return new, terms

  return step


def data_parallel(step: Callable, mesh: jax.sharding.Mesh,
                  axis_name: str = "data", sync_bn: bool = True) -> Callable:
  """Runs a per-shard step under ``jax.shard_map`` over ``mesh``.

  The batch is split along ``axis_name`` (its leading dimension must divide
  by the axis size: a ``ValueError`` naming both otherwise), the state and
  key are replicated. Inputs are placed with those shardings first (a no-op
  for arrays already placed so, e.g. the state returned by the previous
  step). With ``sync_bn`` (the default) BatchNorm layers normalise with the
  global batch's statistics (``cljax.models.sync_batch_norm``), so a BN
  model trains as on one device; without it each shard uses its own batch
  statistics and the running statistics are averaged over shards.

  On a mesh that spans several processes (``jax.distributed``) each process
  passes only its own rows of the global batch (``process_share``), and the
  global batch is assembled with ``jax.make_array_from_process_local_data``;
  every process calls the step with the same state and key.
  """
  def synced(*args):
    with sync_batch_norm(axis_name if sync_bn else None):
      return step(*args)

  mapped = jax.jit(jax.shard_map(
      synced, mesh=mesh, in_specs=(P(), P(axis_name), P()),
      out_specs=(P(), P()), check_vma=False), donate_argnums=0)
  split = NamedSharding(mesh, P(axis_name))
  replicated = NamedSharding(mesh, P())
  devices = mesh.shape[axis_name]
  processes = len({d.process_index for d in mesh.devices.flat})
  mine = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)

  def run(state, batch, rng):
    size = len(jax.tree.leaves(batch)[0]) * devices // mine
    if size % devices:
      raise ValueError(f"a batch of {size} examples does not split over "
                       f"{devices} devices: use a batch size divisible by "
                       f"{devices}")
    if processes > 1:
      batch = jax.tree.map(lambda a: jax.make_array_from_process_local_data(
          split, a, (size, *a.shape[1:])), batch)
    else:
      batch = jax.device_put(batch, split)
    return mapped(replicate(state, replicated), batch,
                  replicate(rng, replicated))

  run.process_share = functools.partial(process_share, mesh, axis_name)
  return run




def check_finite(state: TrainState, term_names) -> None:
  """Raises ``FloatingPointError`` naming the step and what first went
  NaN/inf there: a loss term, or (all terms finite) the gradient of the total
  loss or the update. Training stopped updating from that step on."""
  bad, term = map(int, jax.device_get((state.nonfinite_step,
                                       state.nonfinite_term)))
  if bad >= 0:
    raise FloatingPointError(nonfinite_message(bad, term, term_names))


def nonfinite_message(bad: int, term: int, term_names) -> str:
  """What went NaN/inf at step ``bad`` (``TrainState.nonfinite_*``)."""
  names = sorted(term_names)
  what = (f"loss term {names[term]!r}" if term < len(names) else
          "the gradient of the total loss (every loss term was finite)"
          if term == len(names) else
          "the update (after the optimizer and the method's gradient "
          "transforms; loss terms and gradient were finite)")
  return f"{what} was NaN or inf at step {bad}; training stopped there"
