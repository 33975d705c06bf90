import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import data, memory


def _split(n, seed=0):
  rng = np.random.default_rng(seed)
  return data.Split(rng.normal(size=(n, 3, 3, 1)).astype(np.float32),
                    rng.integers(0, 5, n).astype(np.int32),
                    np.full(n, 2, np.int32))


def test_store_last_and_random_keep_shapes():
  mem = memory.episodic_memory(4, 5, (3, 3, 1))
  s = _split(12)
  mem2 = memory.store_task(mem, 2, s)
  assert jax_shapes(mem2) == jax_shapes(mem)
  np.testing.assert_array_equal(mem2.x[2], s.x[-5:])
  np.testing.assert_array_equal(mem2.y[2], s.y[-5:])
  np.testing.assert_array_equal(np.asarray(mem2.filled), [0, 0, 1, 0])
  assert float(jnp.abs(mem2.x[jnp.array([0, 1, 3])]).sum()) == 0
  r = memory.store_task(mem, 1, s, selection="random", seed=3)
  rows = {tuple(np.asarray(x).ravel()) for x in r.x[1]}
  assert len(rows) == 5 and rows <= {tuple(x.ravel()) for x in s.x}


def test_memory_larger_than_the_task_is_refused():
  # It used to repeat examples cyclically, silently weighting some twice.
  with pytest.raises(ValueError, match="memory_size=7 exceeds the task's 3"):
    memory.select_examples(_split(3), 7)


@pytest.mark.parametrize("k", [-1, 3, 1.5, 1.0, np.int64(7), jnp.array(-1)])
def test_store_task_rejects_a_task_index_out_of_range(k):
  # -1 used to write the last row; 3 was silently ignored.
  mem = memory.episodic_memory(3, 2, (2,))
  with pytest.raises(ValueError, match="k must be"):
    memory.store_task(mem, k, _split(4))


def test_store_task_under_jit_takes_a_traced_index():
  mem = memory.episodic_memory(3, 2, (3, 3, 1))
  s = _split(4)
  got = jax.jit(lambda m, k: memory.store_task(m, k, s))(mem, 2)
  assert np.asarray(got.filled).tolist() == [False, False, True]


def test_store_task_rejects_examples_of_another_shape():
  mem = memory.episodic_memory(3, 2, (3,))
  with pytest.raises(ValueError, match="split.x"):
    memory.store_task(mem, 0, _split(4))


def jax_shapes(mem):
  return [a.shape for a in mem]


def test_bad_memory_arguments():
  with pytest.raises(ValueError, match="per_task"):
    memory.episodic_memory(3, 0, (2,))
  with pytest.raises(ValueError, match="selection"):
    memory.select_examples(_split(4), 2, "first")


def test_reservoir_fills_then_samples_uniformly():
  import jax
  cap, n, runs = 5, 20, 400
  ids = np.arange(n, dtype=np.int32)
  x = ids[:, None].astype(np.float32)
  add = jax.jit(memory.reservoir_add)
  counts = np.zeros(n)
  for r in range(runs):
    buf = memory.reservoir_buffer(cap, (1,))
    # Two calls (as across tasks) equal one stream of all n examples.
    buf = add(buf, x[:5], ids[:5], ids[:5] * 0, jax.random.key(2 * r))
    if r == 0:
      np.testing.assert_array_equal(buf.y, ids[:5])  # filling in order
    buf = add(buf, x[5:], ids[5:], ids[5:] * 0 + 1, jax.random.key(2 * r + 1))
    held = np.asarray(buf.y)
    assert len(set(held)) == cap and int(buf.seen) == n
    np.testing.assert_array_equal(np.asarray(buf.x)[:, 0], held)
    counts[held] += 1
  # Each example is kept with probability cap / n = 0.25: 100 of 400 runs;
  # binomial sd ~ 8.7, so +-40 is > 4.5 sd (a wrong sampler, e.g. keeping
  # the last examples, fails by far).
  assert np.all(np.abs(counts - runs * cap / n) < 40), counts


def test_reservoir_insertion_equals_algorithm_r_one_by_one():
  # The vectorised write against Algorithm R example by example, with the
  # same random draws; slots drawn twice in a batch keep the later example.
  cap, n = 6, 9
  rng = np.random.default_rng(0)
  buf = memory.reservoir_buffer(cap, (2,), num_logits=3)
  ref_x, ref_y, seen = np.zeros((cap, 2)), np.zeros(cap, int), 0
  for call in range(5):
    x = rng.normal(size=(n, 2)).astype(np.float32)
    y = rng.integers(0, 100, n)
    valid = rng.uniform(size=n) < 0.8
    key = jax.random.key(call)
    keys = jax.random.split(key, n)
    for i in range(n):
      if not valid[i]:
        continue
      j = seen if seen < cap else int(jax.random.randint(keys[i], (), 0,
                                                          seen + 1))
      if j < cap:
        ref_x[j], ref_y[j] = x[i], y[i]
      seen += 1
    buf = jax.jit(memory.reservoir_add)(buf, x, y, np.zeros(n, np.int32), key,
                                        valid, np.ones((n, 3), np.float32))
    np.testing.assert_array_equal(np.asarray(buf.y), ref_y)
    np.testing.assert_array_equal(np.asarray(buf.x), ref_x.astype(np.float32))
    assert int(buf.seen) == seen
