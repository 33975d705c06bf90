import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import _validate


@pytest.mark.parametrize("value", [0.5, 2, np.float32(1.0), np.int64(3),
                                   jnp.array(0.1), np.array([1.0, 2.0])])
def test_positive_values_of_every_type_pass(value):
  _validate.check_positive("x", value)


@pytest.mark.parametrize("value", [0.0, -1, np.float32(-1.0), jnp.array(0.0),
                                   jnp.array([1.0, -1.0]), float("nan"),
                                   jnp.inf, np.array(-np.inf)])
def test_bad_values_of_every_type_fail(value):
  with pytest.raises(ValueError, match="x must be finite and > 0"):
    _validate.check_positive("x", value)


@pytest.mark.parametrize("value", ["a", True, None, 1 + 2j])
def test_non_numbers_fail(value):
  with pytest.raises(ValueError, match="x must be a real number"):
    _validate.check_nonnegative("x", value)


def test_traced_values_are_not_checked_but_shapes_are():
  def f(t, a):
    _validate.check_positive("t", t)
    _validate.check_shape("a", a, (None, 3))
    return t * a
  assert jax.jit(f)(-1.0, jnp.ones((2, 3))).shape == (2, 3)
  with pytest.raises(ValueError, match=r"a must have shape \(\*, 3\)"):
    jax.jit(f)(1.0, jnp.ones((2, 4)))


def test_index_and_labels():
  assert _validate.check_index("k", np.int32(2), 3) == 2
  assert _validate.check_index("k", jnp.array(0), 3) == 0
  for bad in (3, -1, 0.5, "0"):
    with pytest.raises(ValueError, match="k must be"):
      _validate.check_index("k", bad, 3)
  _validate.check_labels("y", np.array([0, 4]), 5)
  with pytest.raises(ValueError, match=r"y\[2\] = 5 is outside \[0, 5\) "
                     r"\(2 such labels\)"):
    _validate.check_labels("y", np.array([0, 4, 5, 7]), 5)


def test_trees_must_match_exactly():
  p = {"a": jnp.ones((2, 3)), "b": jnp.ones(4)}
  _validate.check_tree_like("f", jax.tree.map(jnp.zeros_like, p), p)
  with pytest.raises(ValueError, match="f must match params"):
    _validate.check_tree_like("f", {"a": jnp.ones((1, 3)), "b": jnp.ones(4)},
                              p)
  with pytest.raises(ValueError, match="f must match params"):
    _validate.check_tree_like("f", {"a": jnp.ones((2, 3))}, p)
  with pytest.raises(ValueError, match="g contains NaN"):
    _validate.check_finite_tree("g", {"a": jnp.array([0.0, jnp.nan])})
