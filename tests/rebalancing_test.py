"""UCIR's less-forget and margin-ranking losses against loops written as the
authors' code computes them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import losses


@pytest.mark.parametrize("b,d,seed", [(1, 3, 0), (9, 8, 1), (32, 64, 2)])
def test_less_forget_against_a_loop(b, d, seed):
  rng = np.random.default_rng(seed)
  f, g = rng.normal(size=(2, b, d))
  w = (rng.uniform(size=b) > 0.3).astype(np.float32)
  got = jax.jit(losses.less_forget_loss)(f.astype(np.float32),
                                         g.astype(np.float32), w)
  per = [1 - f[i] @ g[i] / np.linalg.norm(f[i]) / np.linalg.norm(g[i])
         for i in range(b)]
  want = sum(w[i] * per[i] for i in range(b)) / max(w.sum(), 1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # No gradient reaches the previous model's features.
  grad = jax.grad(losses.less_forget_loss, argnums=1)(jnp.asarray(f),
                                                      jnp.asarray(g))
  assert not np.any(np.asarray(grad))


def _margin_ranking_loop(cos, y, old, new, m, k):
  """nn.MarginRankingLoss(margin=m) over (gt, k hardest new) pairs of the
  old-class examples, as in UCIR's class_incremental_cosine_*.py."""
  pairs = []
  for i in range(len(y)):
    if not old[y[i]]:
      continue
    hardest = sorted((cos[i, j] for j in range(len(new)) if new[j]),
                     reverse=True)[:k]
    pairs += [max(0.0, -(cos[i, y[i]] - h) + m) for h in hardest]
  return np.mean(pairs) if pairs else 0.0


@pytest.mark.parametrize("seed,k", [(0, 1), (1, 2), (2, 3)])
def test_margin_ranking_against_a_loop(seed, k):
  rng = np.random.default_rng(seed)
  b, c = 24, 10
  cos = rng.uniform(-1, 1, (b, c))
  y = rng.integers(0, 8, b)
  old = np.arange(c) < 5
  new = (np.arange(c) >= 5) & (np.arange(c) < 8)
  got = jax.jit(losses.margin_ranking_loss, static_argnums=(4, 5))(
      cos.astype(np.float32), y, old, new, 0.5, k)
  np.testing.assert_allclose(got, _margin_ranking_loop(cos, y, old, new,
                                                       0.5, k), rtol=1e-5)


def test_margin_ranking_without_old_examples_is_zero_and_checks_k():
  cos = np.zeros((3, 4), np.float32)
  old = np.array([True, True, False, False])
  assert float(losses.margin_ranking_loss(cos, np.array([2, 3, 2]), old,
                                          ~old)) == 0.0
  with pytest.raises(ValueError, match="k must be"):
    losses.margin_ranking_loss(cos, np.array([0, 1, 2]), old, ~old, k=5)


def test_margin_ranking_k_must_be_an_integer():
  # k=1.5 failed inside lax.top_k before.
  cos = jnp.zeros((4, 6))
  old = jnp.array([1, 1, 1, 0, 0, 0], bool)
  with pytest.raises(ValueError, match=r"k must be finite and an integer in "
                     r"\[1, 6\]"):
    losses.margin_ranking_loss(cos, jnp.zeros(4, jnp.int32), old, ~old,
                               k=1.5)
