"""Fisher and MAS importances from one batched backward pass per chunk.

The same quantities as ``fisher_diagonal`` and ``mas_importance`` (exact
per-example gradients, never squared minibatch gradients), computed layer by
layer from a ``LayerTaps`` forward pass (``cljax.models``) instead of
``vmap(grad)`` over the whole network: one backward pass gives every layer's
per-example output gradients ``delta_i``, and each layer's per-example
parameter gradients follow from its input ``a_i`` alone.

For a dense layer ``s = a W + b`` the per-example gradient is
``a_i delta_i^T``, so for ``f`` = square or abs (both multiplicative)

  ``sum_i f(a_i delta_i^T) = f(A)^T f(Delta)``,   ``sum_i f(delta_i)`` for ``b``,

one ``(D_in, N) x (N, D_out)`` matmul, with no per-example gradient ever
formed (Goodfellow 2015; Dangel et al. 2020, BackPACK's "SumGradSquared"
extension). A convolution is a dense layer applied at every output
position: with ``P_i`` (``L x K``) example ``i``'s receptive fields
(``LayerTaps.unfold``), ``s_i = P_i K + b``, so its kernel's per-example
gradient is ``P_i^T delta_i``, one batched matmul (memory ``chunk x L x
K`` for the receptive fields and ``chunk x`` the kernel's size for the
gradients; on CPU 7x faster than a vmapped convolution VJP for the default
CNN). Other layers (BatchNorm, convolutions that ``unfold`` does not
cover) form their own per-example gradients with ``vmap`` of the layer's
VJP: memory ``chunk x`` that layer's size, never the network's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cljax.losses._cross_entropy import masked_cross_entropy
from cljax.models._heads import mask_logits
from cljax.models._taps import LayerTaps, layer_params
from cljax.regularizers._importance import (FISHER_ESTIMATORS, chunk_examples,
                                            example_keys)

_REDUCE = {"square": jnp.square, "abs": jnp.abs}


def _set_path(tree: dict, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _layer_sums(taps: LayerTaps, params, batch_stats, inputs, deltas, f):
  out = {}
  for path, kind in taps.kinds.items():
    lp, a, d = layer_params(params, path), inputs[path], deltas[path]
    if kind == "Linear" and a.ndim == 2:
      sums = {"kernel": f(a).T @ f(d)}
      if "bias" in lp:
        sums["bias"] = jnp.sum(f(d), axis=0)
    elif path in taps.unfold and a.ndim == lp["kernel"].ndim:
      # s_i = P_i K (one batch axis): example i's gradient is P_i^T d_i
      d = d.reshape(d.shape[0], -1, d.shape[-1])  # (N, L, C_out)
      grads = jnp.einsum("nlk,nlo->nko", taps.unfold[path](a), d)
      sums = {"kernel": jnp.sum(f(grads), axis=0).reshape(
          lp["kernel"].shape)}
      if "bias" in lp:
        sums["bias"] = jnp.sum(f(jnp.sum(d, axis=1)), axis=0)
    else:
      def one(ai, di, lp=lp, path=path):
        _, vjp = jax.vjp(lambda q: taps.call(path, q, batch_stats, ai[None]),
                         lp)
        return vjp(di[None])[0]
      sums = jax.tree.map(lambda g: jnp.sum(f(g), axis=0),
                          jax.vmap(one)(a, d))
    _set_path(out, path, sums)
  return out


def per_example_grad_sum(taps: LayerTaps, params, batch_stats, xs, *aux,
                         example_losses, reduce: str = "square",
                         weights=None, chunk_size: int | None = None):
  """``sum_i w_i f(grad_theta l_i)`` with ``f`` = ``reduce`` (elementwise
  square or abs), from layer taps.

  Args:
    taps: the model's ``LayerTaps``.
    params, batch_stats: the model state (eval-mode BatchNorm).
    xs: ``(N, ...)`` inputs; ``*aux``: more ``(N, ...)`` arrays.
    example_losses: ``(logits (B, C), *aux_chunk) -> (B,)`` per-example
      losses; ``l_i`` may depend only on row ``i``.
    reduce: ``"square"`` or ``"abs"``.
    weights: ``(N,)`` in {0, 1} (which examples count); default all 1.
    chunk_size: examples per backward pass (bounds memory).
  Returns:
    A pytree like ``params``.
  """
  if reduce not in _REDUCE:
    raise ValueError(f"reduce must be one of {tuple(_REDUCE)}, got {reduce!r}")
  f = _REDUCE[reduce]
  n = len(xs)
  w_all = jnp.ones((n,)) if weights is None else jnp.asarray(weights,
                                                             jnp.float32)
  chunks, pad_w = chunk_examples((xs, w_all, *aux), chunk_size)

  def one_chunk(args):
    x, w, *a = args
    out_shapes = jax.eval_shape(lambda: taps.run(params, batch_stats, x)[2])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shapes)

    def total(z):
      logits, inputs, _ = taps.run(params, batch_stats, x, z)
      return jnp.sum(w * example_losses(logits, *a)), inputs

    deltas, inputs = jax.grad(total, has_aux=True)(zeros)
    return _layer_sums(taps, params, batch_stats, inputs, deltas, f)

  chunks[1] = chunks[1] * pad_w  # padding repeats the last example: weight 0
  # The sums accumulate in the loop's carry: stacking every chunk's sums
  # (lax.map) and adding them after took twice as long on XLA:CPU.
  chunk = lambda i: tuple(c[i] for c in chunks)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       jax.eval_shape(one_chunk, chunk(0)))
  return jax.lax.fori_loop(0, len(chunks[0]), lambda i, acc: jax.tree.map(
      jnp.add, acc, one_chunk(chunk(i))), zeros)


def layerwise_fisher_diagonal(taps: LayerTaps, params, batch_stats, xs, ys, *,
                              mask=None, estimator: str = "empirical",
                              key: jax.Array | None = None, weights=None,
                              chunk_size: int | None = None):
  """The Fisher diagonal of ``fisher_diagonal`` (same estimators, same
  result to float tolerance) for a model with layer taps.

  ``p(c | x) = softmax(mask_logits(logits, mask))``. ``"empirical"`` uses the
  labels ``ys``; ``"sampled"`` draws ``y~_i ~ p(. | x_i)`` with key
  ``fold_in(key, i)``; ``"predicted"`` takes ``y^_i = argmax_c p(c | x_i)``;
  ``"expected"`` sums over classes
  ``sum_c p_c (grad l_c)^2 = sum_c (grad (sqrt(p_c) l_c))^2`` (``p`` held
  constant), one backward pass per class.

  Args:
    taps: the model's ``LayerTaps``. params, batch_stats: its state.
    xs: ``(N, ...)``. ys: ``(N,)`` int (ignored unless ``"empirical"``).
    mask: ``(C,)`` bool active logits, or ``None`` for all.
    estimator: one of ``FISHER_ESTIMATORS``.
    key: PRNG key for ``"sampled"``, or ``(N,)`` keys, one per example.
    weights: ``(N,)`` in {0, 1}: the mean is over examples with weight 1.
    chunk_size: examples per backward pass.
  Returns:
    ``(1 / sum w) sum_i w_i F_i``, a pytree like ``params``.
  """
  if estimator not in FISHER_ESTIMATORS:
    raise ValueError(f"estimator must be one of {FISHER_ESTIMATORS}, got "
                     f"{estimator!r}")
  if estimator == "sampled" and key is None:
    raise ValueError("estimator='sampled' needs a PRNG key")
  n = len(xs)
  denom = n if weights is None else jnp.sum(jnp.asarray(weights, jnp.float32))
  log_probs = lambda z: jax.nn.log_softmax(
      z if mask is None else mask_logits(z, mask), axis=-1)
  sums = lambda aux, losses: per_example_grad_sum(
      taps, params, batch_stats, xs, *aux, example_losses=losses,
      weights=weights, chunk_size=chunk_size)

  if estimator == "empirical":
    total = sums((ys,), lambda z, y: masked_cross_entropy(z, y, mask))
  elif estimator == "sampled":
    keys = example_keys(key, n)

    def sampled(z, k):
      lp = log_probs(z)
      y = jax.vmap(jax.random.categorical)(k, jax.lax.stop_gradient(lp))
      return -jnp.take_along_axis(lp, y[:, None], axis=-1)[:, 0]

    total = sums((keys,), sampled)
  elif estimator == "predicted":

    def predicted(z):
      lp = log_probs(z)
      y = jnp.argmax(jax.lax.stop_gradient(lp), axis=-1)
      return -jnp.take_along_axis(lp, y[:, None], axis=-1)[:, 0]

    total = sums((), predicted)
  else:
    num_classes = jax.eval_shape(
        lambda: taps.run(params, batch_stats, xs[:1])[0]).shape[-1]

    def one_class(c):
      def weighted(z):
        lp = log_probs(z)[:, c]
        return jnp.sqrt(jax.lax.stop_gradient(jnp.exp(lp))) * -lp
      return sums((), weighted)

    total = jax.tree.map(lambda s: jnp.sum(s, axis=0),
                         jax.lax.map(one_class, jnp.arange(num_classes)))
  return jax.tree.map(lambda s: s / denom, total)


def layerwise_mas_importance(taps: LayerTaps, params, batch_stats, xs, *,
                             mask=None, weights=None,
                             chunk_size: int | None = None):
  """``mas_importance`` (Aljundi et al. 2018, eqs. 2-4) from layer taps:
  ``(1 / sum w) sum_i w_i |grad ||F(x_i)||_2^2|`` over the active outputs
  (``mask``; inactive outputs count as 0).

  Args: as ``layerwise_fisher_diagonal``. Returns: a pytree like ``params``.
  """
  n = len(xs)
  denom = n if weights is None else jnp.sum(jnp.asarray(weights, jnp.float32))
  sqnorm = lambda z: jnp.sum(jnp.square(
      z if mask is None else jnp.where(mask, z, 0.0)), axis=-1)
  total = per_example_grad_sum(taps, params, batch_stats, xs,
                               example_losses=sqnorm, reduce="abs",
                               weights=weights, chunk_size=chunk_size)
  return jax.tree.map(lambda s: s / denom, total)
