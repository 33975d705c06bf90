import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cljax import models
from cljax.models._pooling import max_pool_2x2


def reference(x):
  return nnx.max_pool(x, (2, 2), (2, 2))


def inputs(shape, kind, seed):
  rng = np.random.default_rng(seed)
  if kind == "ties":  # five values: most windows hold equal maxima
    x = rng.integers(-2, 3, size=shape)
  else:
    x = rng.normal(size=shape)
  return jnp.asarray(x, jnp.float32), rng


@pytest.mark.parametrize("kind", ["ties", "continuous"])
@pytest.mark.parametrize("shape", [(3, 6, 8, 2), (2, 7, 5, 3), (1, 28, 28, 4)])
def test_values_gradient_and_jvp_are_flaxs_bit_for_bit(shape, kind):
  x, rng = inputs(shape, kind, seed=sum(shape))
  y = reference(x)
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  t = jnp.asarray(rng.normal(size=shape), jnp.float32)
  np.testing.assert_array_equal(max_pool_2x2(x), y)
  vjp = lambda f: jax.vjp(f, x)[1](g)[0]
  np.testing.assert_array_equal(vjp(max_pool_2x2), vjp(reference))
  jvp = lambda f: jax.jvp(f, (x,), (t,))[1]
  np.testing.assert_array_equal(jvp(max_pool_2x2), jvp(reference))
  # Per example under vmap, as the exact Fisher takes them.
  per = lambda f: jax.vmap(lambda a, b: jax.vjp(f, a[None])[1](b[None])[0])(
      x, g)
  np.testing.assert_array_equal(per(max_pool_2x2), per(reference))
  if kind == "ties":  # the ties matter: an equal split differs
    split = lambda a: a[:, :a.shape[1] // 2 * 2, :a.shape[2] // 2 * 2].reshape(
        a.shape[0], a.shape[1] // 2, 2, a.shape[2] // 2, 2, -1).max((2, 4))
    assert not np.array_equal(vjp(split), vjp(reference))


def test_refuses_other_than_nhwc():
  with pytest.raises(ValueError, match="NHWC"):
    max_pool_2x2(jnp.zeros((4, 4, 2)))


def test_the_cnns_gradient_has_no_scatter():
  """XLA:CPU expands a max-pool's ``select_and_scatter`` into a scatter
  (slow to run and to compile); the CNN's gradient has neither."""
  m = models.build_model("cnn", (28, 28, 1), 10)
  x = jnp.zeros((2, 28, 28, 1))
  loss = lambda p: jnp.sum(m.apply(p, m.batch_stats, x)[0][0])
  hlo = jax.jit(jax.grad(loss)).lower(m.params).as_text()
  assert "select_and_scatter" not in hlo and "scatter" not in hlo
