import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from cljax import methods, models
from cljax.bench._suite import synthetic_stream
from cljax.bench._timing import method_state
from cljax.models._conv import canonical_conv, reverse_mode_convs

# (spatial size, C_in, C_out, kernel, strides, padding)
CASES = [((28, 28), 1, 8, (3, 3), (1, 1), "SAME"),
         ((15, 13), 3, 8, (3, 3), (2, 2), ((1, 1), (1, 1))),
         ((16, 16), 4, 8, (1, 1), (2, 2), "VALID"),
         ((17, 16), 3, 5, (7, 7), (2, 2), ((3, 3), (3, 3))),
         ((9, 10), 2, 3, (3, 2), (1, 3), ((2, 0), (1, 1))),
         ((11,), 3, 4, (3,), (2,), ((0, 2),)),
         ((6, 5, 4), 2, 3, (3, 2, 2), (1, 2, 1), "SAME")]


def channels_last(n):
  s = "DHW"[-n:]
  return (f"N{s}C", f"{s}IO", f"N{s}C")


def problem(case, seed):
  size, cin, cout, k, s, pad = case
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(4, *size, cin)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(*k, cin, cout)), jnp.float32)
  dn = channels_last(len(size))
  ref = lambda x, w: lax.conv_general_dilated(x, w, s, pad,
                                              dimension_numbers=dn)
  new = lambda x, w: canonical_conv(x, w, s, pad, dimension_numbers=dn)
  g = jnp.asarray(rng.normal(size=ref(x, w).shape), jnp.float32)
  return x, w, g, ref, new


@pytest.mark.parametrize("case", CASES, ids=str)
def test_values_and_gradient_are_jaxs_bit_for_bit(case):
  """At a program's top level XLA:CPU rewrites JAX's gradient convolutions
  into the same fast-form products, so the two agree to the bit there (and
  op by op)."""
  x, w, g, ref, new = problem(case, seed=len(str(case)))
  np.testing.assert_array_equal(new(x, w), ref(x, w))
  vjp = lambda f: jax.vjp(f, x, w)[1](g)
  for a, b in zip(vjp(new), vjp(ref)):
    np.testing.assert_array_equal(a, b)
  jitted = lambda f: jax.jit(lambda x, w, g: jax.vjp(f, x, w)[1](g))(x, w, g)
  for a, b in zip(jitted(new), jitted(ref)):
    np.testing.assert_array_equal(a, b)


def test_an_empty_output_passes_back_zeros():
  dn = channels_last(2)
  w = jnp.ones((3, 3, 3, 4))
  for conv in (canonical_conv, lax.conv_general_dilated):
    f = lambda x: conv(x, w, (1, 1), "VALID", dimension_numbers=dn).sum()
    np.testing.assert_array_equal(jax.grad(f)(jnp.ones((2, 2, 5, 3))), 0.0)


def compiled_in_fast_form(compiled_text):
  """Whether every 2-D convolution of a compiled program is channels last
  with an HWIO kernel (and there is one)."""
  convs = [line for line in compiled_text.splitlines()
           if " convolution(" in line]
  return bool(convs) and all("dim_labels=b01f_01io->b01f" in c
                             for c in convs)


def looped(f):
  """``(x, w, g) ->`` the VJP at ``x * (i + 1)``, summed over two iterations
  ``i`` of a ``fori_loop``, jitted."""
  def run(x, w, g):
    def body(i, acc):
      return jax.tree.map(jnp.add, acc, jax.vjp(f, x * (i + 1), w)[1](g))
    return jax.lax.fori_loop(0, 2, body, jax.tree.map(jnp.zeros_like, (x, w)))
  return jax.jit(run)


@pytest.mark.parametrize("case", CASES[:2], ids=str)
def test_inside_a_loop_every_convolution_is_in_the_fast_form(case):
  x, w, g, ref, new = problem(case, seed=1)
  for a, b in zip(looped(new)(x, w, g), looped(ref)(x, w, g)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
  if jax.default_backend() != "cpu":
    return
  text = lambda f: looped(f).lower(x, w, g).compile().as_text()
  assert compiled_in_fast_form(text(new))
  # JAX's own gradient is not, there: what this module is for.
  assert not compiled_in_fast_form(text(ref))


def test_models_use_it_only_inside_reverse_mode_convs():
  m = models.build_model("cnn", (8, 8, 1), 10)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 1)),
                  jnp.float32)
  out = lambda p: m.apply(p, m.batch_stats, x)[0][0]
  # Outside: lax's convolution, forward mode included.
  jax.jvp(out, (m.params,), (m.params,))

  def grads_in_a_cond(p, on):
    g = lambda: jax.grad(lambda q: jnp.sum(out(q) ** 2))(p)
    return jax.lax.cond(on, g, lambda: jax.tree.map(jnp.zeros_like, p))

  def inside(p, on):
    with reverse_mode_convs():
      return grads_in_a_cond(p, on)

  got = jax.jit(inside)(m.params, True)
  want = jax.jit(grads_in_a_cond)(m.params, True)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())
  if jax.default_backend() == "cpu":
    text = lambda f: jax.jit(f).lower(m.params, True).compile().as_text()
    assert compiled_in_fast_form(text(inside))
    assert not compiled_in_fast_form(text(grads_in_a_cond))


def test_agems_step_keeps_the_fast_convolutions():
  """A-GEM's reference gradient sits in a conditional (no memory work while
  the memory is empty): before the train step traced its model inside
  ``reverse_mode_convs``, its convolutions there ran naive on CPU (the
  CNN's step at batch 128: 32x fine-tuning's)."""
  if jax.default_backend() != "cpu":
    pytest.skip("XLA:CPU's convolution forms")
  stream = synthetic_stream("cnn", 64)
  model = models.build_model("cnn", (28, 28, 1), 10)
  agem = methods.build_method("agem", ref_size=16, memory_size=32)
  step, state = method_state(agem, model, stream, optax.sgd(0.1), 1)
  task = stream.tasks[1].train
  batch = {k: jnp.asarray(getattr(task, k)[:8]) for k in "xyt"}
  text = jax.jit(step).lower(state, batch, jax.random.key(0)).compile()
  assert compiled_in_fast_form(text.as_text())


@pytest.mark.parametrize("kwargs", [{"rhs_dilation": (2, 2)},
                                    {"lhs_dilation": (2, 1)},
                                    {"feature_group_count": 2}], ids=str)
def test_other_convolutions_are_jaxs(kwargs):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 9, 9, 4)), jnp.float32)
  groups = kwargs.get("feature_group_count", 1)
  w = jnp.asarray(rng.normal(size=(3, 3, 4 // groups, 6)), jnp.float32)
  dn = channels_last(2)
  pad = ((1, 1), (1, 1))
  ref = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), pad,
                                              dimension_numbers=dn, **kwargs)
  new = lambda x, w: canonical_conv(x, w, (1, 1), pad,
                                    dimension_numbers=dn, **kwargs)
  np.testing.assert_array_equal(new(x, w), ref(x, w))
  g = jnp.ones_like(ref(x, w))
  for a, b in zip(jax.vjp(new, x, w)[1](g), jax.vjp(ref, x, w)[1](g)):
    np.testing.assert_array_equal(a, b)
  # Channels-first dimension numbers, too.
  nchw = ("NCHW", "OIHW", "NCHW")
  xt, wt = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)
  np.testing.assert_array_equal(
      canonical_conv(xt, wt, (1, 1), pad, dimension_numbers=nchw, **kwargs),
      lax.conv_general_dilated(xt, wt, (1, 1), pad, dimension_numbers=nchw,
                               **kwargs))
