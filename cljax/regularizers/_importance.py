"""Parameter importances from exact per-example gradients.

Everything here reduces ``jax.vmap(jax.grad(f))`` over examples, evaluated in
chunks of ``chunk_size`` examples with ``jax.lax.map``, so memory holds at most
``chunk_size`` per-example gradients whatever the number of examples. A padded
last chunk is masked out of the mean.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from cljax import _validate

FISHER_ESTIMATORS = ("empirical", "sampled", "expected", "predicted")


def chunk_examples(data, chunk_size: int | None):
  """Splits arrays with a common leading axis ``N`` into
  ``(n_chunks, chunk, ...)`` chunks, the last padded by repeating the final
  example. Returns ``(chunks, weight (n_chunks, chunk))`` where ``weight``
  is 0 on padding."""
  n = len(data[0])
  if n == 0:
    raise ValueError("no examples")
  if any(len(d) != n for d in data):
    raise ValueError(f"data arrays differ in length: {[len(d) for d in data]}")
  chunk = n if chunk_size is None else int(chunk_size)
  if chunk < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  chunk = min(chunk, n)
  n_chunks = -(-n // chunk)
  pad = n_chunks * chunk - n
  idx = jnp.arange(n_chunks * chunk)
  weight = (idx < n).astype(jnp.float32).reshape(n_chunks, chunk)
  padded = [jnp.concatenate([d, jnp.repeat(d[-1:], pad, 0)]) if pad else
            jnp.asarray(d) for d in data]
  return [d.reshape(n_chunks, chunk, *d.shape[1:]) for d in padded], weight


def example_keys(key: jax.Array, n: int) -> jax.Array:
  """``(n,)`` per-example keys: ``fold_in(key, i)`` for example ``i`` from
  one key, or ``key`` itself when it already holds ``n`` keys (e.g. a
  device's share of a sample's keys, so that a split sample draws what the
  whole one does)."""
  if key.shape == (n,):
    return key
  if key.shape:
    raise ValueError(f"key must be one key or {n} keys (one per example), "
                     f"got shape {key.shape}")
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n))


def mean_per_example(fn: Callable, params, *data, chunk_size: int | None = None,
                     key: jax.Array | None = None, weights=None):
  """``(1/sum w) sum_i w_i fn(params, *data_i[, key_i])``, a pytree like
  ``fn``'s output, computed with ``jax.vmap`` over chunks of ``chunk_size``
  examples.

  Args:
    fn: ``(params, *example[, key]) -> pytree`` on unbatched examples.
    params: passed unchanged to every call.
    *data: arrays with a leading example axis ``N``.
    chunk_size: examples per vmapped chunk (default: all at once).
    key: if given, a distinct key is passed to example i: ``fold_in(key,
      i)``, or ``key[i]`` for ``(N,)`` keys (``example_keys``).
    weights: ``(N,)`` example weights (e.g. 0 on padding); default all 1.
  """
  n = len(data[0])
  w_all = jnp.ones((n,)) if weights is None else jnp.asarray(weights,
                                                             jnp.float32)
  if key is not None:
    data = (*data, example_keys(key, n))
  (w_chunks, *chunks), weight = chunk_examples((w_all, *data), chunk_size)
  weight = weight * w_chunks

  def one_chunk(args):
    *xs, w = args
    out = jax.vmap(lambda *ex: fn(params, *ex))(*xs)
    return jax.tree.map(lambda o: jnp.tensordot(w, o, axes=1), out)

  sums = jax.lax.map(one_chunk, (*chunks, weight))
  return jax.tree.map(lambda s: jnp.sum(s, axis=0) / jnp.sum(w_all), sums)


def fisher_diagonal(per_example_loss: Callable, params, xs, ys, *,
                    chunk_size: int | None = None,
                    estimator: str = "empirical",
                    num_classes: int | None = None,
                    key: jax.Array | None = None, weights=None):
  """Diagonal of the Fisher information from exact per-example gradients.

  With ``l(theta, x, y) = -log p(y | x, theta)`` (``per_example_loss``):

  * ``"empirical"`` (default): ``F = (1/N) sum_i (grad l(theta, x_i, y_i))^2``
    with the data's labels (the estimator of Kirkpatrick et al. 2017's
    reference practice; Kunstner et al. 2019 discuss its limits).
  * ``"sampled"`` (the "true" Fisher, Monte Carlo with one sample):
    ``y~_i ~ p(. | x_i)``, ``F = (1/N) sum_i (grad l(theta, x_i, y~_i))^2``.
  * ``"expected"``: the exact expectation over the model's predictive
    distribution, ``F = (1/N) sum_i sum_c p(c | x_i) (grad l(theta, x_i, c))^2``.
  * ``"predicted"``: the model's most probable label,
    ``y^_i = argmax_c p(c | x_i)``, ``F = (1/N) sum_i (grad l(theta, x_i, y^_i))^2``
    (van de Ven & Tolias 2019's EWC code, ``--fisher-labels=pred`` in
    van de Ven's ``continual-learning``).

  ``p(c | x)`` is recovered as ``exp(-l(theta, x, c))``, so ``per_example_loss``
  must be a normalised negative log-likelihood (e.g. masked cross-entropy).
  Squared *minibatch* gradients are never used.

  Args:
    per_example_loss: ``(params, x, y) -> scalar`` on one unbatched example.
    params: a pytree.
    xs: ``(N, ...)`` inputs. ys: ``(N,)`` int labels.
    chunk_size: examples per vmapped chunk (bounds memory).
    estimator: one of ``FISHER_ESTIMATORS``.
    num_classes: needed by every estimator but ``"empirical"``.
    key: PRNG key, needed by ``"sampled"`` (example ``i`` draws with
      ``fold_in(key, i)``), or ``(N,)`` keys, one per example.
    weights: ``(N,)`` in {0, 1}: which examples count (e.g. 0 on padding).
  Returns:
    A pytree like ``params``.
  """
  _validate.check_shape("ys", ys, (len(xs),))  # (N, 1) broke the indexing
  if weights is not None:
    _validate.check_shape("weights", weights, (len(xs),))
  mean = functools.partial(mean_per_example, chunk_size=chunk_size,
                           weights=weights)
  if estimator not in FISHER_ESTIMATORS:
    raise ValueError(f"estimator must be one of {FISHER_ESTIMATORS}, got "
                     f"{estimator!r}")
  grad = jax.grad(per_example_loss)
  sq = lambda g: jax.tree.map(jnp.square, g)
  if estimator == "empirical":
    return mean(lambda p, x, y: sq(grad(p, x, y)), params, xs, ys)
  if num_classes is None or num_classes < 1:
    raise ValueError(f"estimator={estimator!r} needs num_classes >= 1")
  classes = jnp.arange(num_classes)

  def probs(p, x):
    nll = jax.vmap(lambda c: per_example_loss(p, x, c))(classes)
    return jnp.exp(-nll)

  if estimator == "sampled":
    if key is None:
      raise ValueError("estimator='sampled' needs a PRNG key")

    def sampled(p, x, k):
      y = jax.random.categorical(k, jnp.log(probs(p, x)))
      return sq(grad(p, x, y))

    return mean(sampled, params, xs, key=key)

  if estimator == "predicted":
    return mean(lambda p, x: sq(grad(p, x, jnp.argmax(probs(p, x)))),
                params, xs)

  def expected(p, x):
    pr = jax.lax.stop_gradient(probs(p, x))
    g2 = jax.vmap(lambda c: sq(grad(p, x, c)))(classes)
    return jax.tree.map(lambda a: jnp.tensordot(pr, a, axes=1), g2)

  return mean(expected, params, xs)


def mas_importance(output_fn: Callable, params, xs, *,
                   chunk_size: int | None = None, weights=None):
  """Memory Aware Synapses importance (Aljundi et al. 2018, eqs. 2-4).

  ``Omega = (1/N) sum_i | grad_theta ||F(x_i; theta)||_2^2 |``, the gradient of
  the squared L2 norm of the network's output, per example, in absolute
  value; no labels are needed.

  Args:
    output_fn: ``(params, x) -> (C,)`` outputs for one unbatched input.
    params: a pytree. xs: ``(N, ...)`` inputs.
    chunk_size, weights: as ``fisher_diagonal``.
  Returns:
    A pytree like ``params``.
  """
  sqnorm = lambda p, x: jnp.sum(jnp.square(output_fn(p, x)))
  g = jax.grad(sqnorm)
  return mean_per_example(lambda p, x: jax.tree.map(jnp.abs, g(p, x)), params,
                          xs, chunk_size=chunk_size, weights=weights)
