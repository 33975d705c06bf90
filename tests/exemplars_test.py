import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import memory


def _herding_loop(features, m):
  """iCaRL's Alg. 4 as written, in float64, without repeats."""
  phi = features / np.linalg.norm(features, axis=1, keepdims=True)
  mu = phi.mean(axis=0)
  chosen, total = [], np.zeros(phi.shape[1])
  for k in range(1, m + 1):
    d = np.linalg.norm(mu - (total + phi) / k, axis=1)
    d[chosen] = np.inf
    i = int(np.argmin(d))
    chosen.append(i)
    total += phi[i]
  return chosen


@pytest.mark.parametrize("n,d,m", [(7, 3, 7), (50, 16, 20), (300, 64, 100)])
def test_herding_matches_a_loop_of_alg_4(n, d, m):
  rng = np.random.default_rng(n)
  f = rng.normal(size=(n, d)) + 0.3  # a class: features share a direction
  got = jax.jit(memory.herding_selection, static_argnums=1)(
      jnp.asarray(f, jnp.float32), m)
  assert np.asarray(got).tolist() == _herding_loop(f, m)


def test_herding_of_several_classes_at_once():
  rng = np.random.default_rng(0)
  counts = np.array([30, 12, 25])
  f = rng.normal(size=(3, 30, 8))
  f[1, 12:] = 1e3  # padding that must never be chosen
  got = np.asarray(jax.jit(memory.herding_classes, static_argnums=3)(
      jnp.asarray(f, jnp.float32), jnp.asarray(counts), 10, 16))
  for g, n in enumerate(counts):
    k = min(10, n)
    assert got[g, :k].tolist() == _herding_loop(f[g, :n], k)
  # A prefix is the herding selection of fewer (iCaRL's Alg. 5 keeps it).
  short = memory.herding_selection(jnp.asarray(f[0], jnp.float32), 4)
  assert np.asarray(short).tolist() == got[0, :4].tolist()


@pytest.mark.parametrize("m", [6, 0, 2.5, True])  # 2.5 gave 2, True 1
def test_herding_bad_m(m):
  with pytest.raises(ValueError, match=r"m must be (finite and an integer "
                     r"in \[1, 5\]|a real number)"):
    memory.herding_selection(jnp.ones((5, 2)), m)


def test_bad_memory_arguments_are_named():
  # Each was accepted (silently wrong) or failed deep in JAX (found by a
  # probe of bad inputs).
  mem = memory.exemplar_memory(6, (2,))
  x = jnp.ones((2, 3, 2))
  calls = {
      "features": lambda: memory.herding_selection(
          jnp.ones((5, 2)).at[1, 1].set(jnp.nan), 2),
      "capacity": lambda: memory.exemplar_memory(2.5, (2,)),
      "per_task": lambda: memory.episodic_memory(3, 2.5, (2,)),
      "keep": lambda: memory.add_exemplars(mem, x, jnp.arange(2), jnp.zeros(
          2, jnp.int32), jnp.array([1])),
      r"keep must be finite and an integer in \[0, 3\]": lambda: (
          memory.add_exemplars(mem, x, jnp.arange(2), jnp.zeros(2, jnp.int32),
                               jnp.array([1, 4]))),
      "y must have shape": lambda: memory.add_exemplars(
          mem, x, jnp.arange(3), jnp.zeros(2, jnp.int32), jnp.array([1, 1])),
      "n must be": lambda: memory.sample(mem, jax.random.key(0), -1),
      r"labels\[1\] = 7": lambda: memory.class_means(
          jnp.ones((3, 2)), jnp.array([0, 7, 1]), jnp.ones(3, bool), 5),
      "labels must be integers": lambda: memory.class_means(
          jnp.ones((3, 2)), jnp.array([0.0, 1.0, 1.0]), jnp.ones(3, bool), 5),
      "means must have shape": lambda: memory.nme_predict(
          jnp.ones((4, 3)), jnp.ones((5, 2)), jnp.ones(5, bool)),
  }
  for match, call in calls.items():
    with pytest.raises(ValueError, match=match):
      call()


def test_budgets():
  assert memory.per_class_budget(2000, 2) == 1000
  assert memory.per_class_budget(2000, 10) == 200
  assert memory.per_class_budget(2000, 4, "per_class", 100) == 100
  with pytest.raises(ValueError, match="exceed"):
    memory.per_class_budget(200, 10, "per_class", 30)


def test_add_shrink_add_keeps_classes_balanced_and_prefixes():
  mem = memory.exemplar_memory(12, (2,), num_logits=3)
  x = jnp.arange(2 * 6 * 2, dtype=jnp.float32).reshape(2, 6, 2)
  lg = jnp.ones((2, 6, 3))
  add = jax.jit(memory.add_exemplars)
  mem = add(mem, x, jnp.array([0, 1]), jnp.array([0, 0]), jnp.array([6, 6]),
            lg)
  assert int(mem.valid.sum()) == 12
  mem = memory.shrink(mem, 3)  # 4 classes now: 12 // 4 = 3 each
  assert int(mem.valid.sum()) == 6
  kept = {(int(y), int(r)) for y, r, v in zip(mem.y, mem.rank, mem.valid) if v}
  assert kept == {(c, r) for c in (0, 1) for r in range(3)}  # prefixes
  mem = add(mem, x + 100, jnp.array([2, 3]), jnp.array([1, 1]),
            jnp.array([3, 3]), 2 * lg)
  v = np.asarray(mem.valid)
  assert v.sum() == 12
  assert np.bincount(np.asarray(mem.y)[v], minlength=4).tolist() == [3] * 4
  for c, base in ((0, 0), (2, 100)):
    rows = np.flatnonzero(v & (np.asarray(mem.y) == c))
    order = np.argsort(np.asarray(mem.rank)[rows])
    np.testing.assert_array_equal(np.asarray(mem.x)[rows][order],
                                  np.asarray(x[0, :3]) + base)
  assert float(mem.logits[v & (np.asarray(mem.y) == 3)].mean()) == 2.0


def test_sample_draws_only_valid_slots():
  mem = memory.exemplar_memory(10, (1,))
  mem = mem._replace(valid=jnp.arange(10) < 4)
  idx = np.asarray(memory.sample(mem, jax.random.key(0), 1000))
  assert idx.max() < 4 and len(np.unique(idx)) == 4


def _nme_loop(feats, labels, valid, c, flipped=None):
  norm = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
  means = np.zeros((c, feats.shape[1]))
  for y in range(c):
    rows = [i for i in range(len(labels)) if valid[i] and labels[i] == y]
    if rows:
      phi = norm(feats[rows])
      if flipped is not None:
        phi = (phi + norm(flipped[rows])) / 2
      means[y] = norm(phi.mean(axis=0))
  return means


@pytest.mark.parametrize("flip", [False, True])
def test_nearest_mean_of_exemplars_against_a_loop(flip):
  rng = np.random.default_rng(1)
  k, d, c = 40, 6, 5
  feats, labels = rng.normal(size=(k, d)), rng.integers(0, 4, k)  # class 4: none
  valid = rng.uniform(size=k) < 0.8
  flipped = rng.normal(size=(k, d)) if flip else None
  means, present = memory.class_means(feats, labels, valid, c, flipped)
  want = _nme_loop(feats, labels, valid, c, flipped)
  np.testing.assert_allclose(means, want, atol=1e-5)
  assert np.asarray(present).tolist() == [True] * 4 + [False]
  x = rng.normal(size=(9, d))
  mask = np.array([True, True, False, True, False])
  norm = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
  dist = ((norm(x)[:, None] - want[None]) ** 2).sum(-1)
  dist[:, ~mask] = np.inf
  got = jax.jit(memory.nme_predict)(jnp.asarray(x, jnp.float32), means,
                                    jnp.asarray(mask))
  np.testing.assert_array_equal(got, dist.argmin(1))
