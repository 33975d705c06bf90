"""GEM/A-GEM projections against quadprog (float64) and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import quadprog

from cljax import constraints

gem = jax.jit(constraints.gem_project)


def _primal(g, G):
  """Reference: argmin 1/2 ||x - g||^2 s.t. G x >= 0 (identity Hessian, so
  quadprog accepts any G, degenerate or not)."""
  return quadprog.solve_qp(np.eye(len(g)), np.asarray(g, np.float64),
                           np.asarray(G, np.float64).T, np.zeros(len(G)))[0]


def _dual(g, G, margin):
  """Reference as in the GEM code: the dual with v >= margin."""
  M = G @ G.T
  v = quadprog.solve_qp(0.5 * (M + M.T), -(G @ g), np.eye(len(G)),
                        np.full(len(G), margin))[0]
  return G.T @ v + g


def _f32(*a):
  return [jnp.asarray(x, jnp.float32) for x in a]


def _assert_projection(x, g, G, want):
  # Agreement: 1e-5 of the problem's scale (||g||; x* itself may be 0).
  x = np.asarray(x, np.float64)
  scale = max(np.linalg.norm(want), np.linalg.norm(g))
  assert np.linalg.norm(x - want) <= 1e-5 * scale
  # KKT: feasibility, x - g in the cone of the rows with v >= 0,
  # complementary slackness.
  gx = G @ x
  assert gx.min() >= -1e-5 * scale * np.abs(G).max() * np.sqrt(G.shape[1])
  v, *_ = np.linalg.lstsq(G.T, x - g, rcond=None)
  np.testing.assert_allclose(G.T @ v, x - g, atol=1e-4 * scale)


@pytest.mark.parametrize("t", [1, 2, 3, 5, 8, 13, 20])
def test_gem_matches_quadprog_on_random_problems(t):
  rng = np.random.default_rng(t)
  for trial in range(15):
    p = 300 if trial % 3 else 2 * t + 3  # two shapes: few compilations
    G = rng.normal(size=(t, p)) * rng.uniform(0.1, 10, size=(t, 1))
    g = rng.normal(size=p) - rng.uniform(0, 1) * G.mean(0) * (trial % 2)
    x = gem(*_f32(g, G))
    want = _primal(g, G)
    _assert_projection(x, g, G, want)
    if np.linalg.norm(want) > 0.1 * np.linalg.norm(g):  # relative to x*
      assert np.linalg.norm(np.asarray(x) - want) <= 1e-5 * np.linalg.norm(
          want)


def _degenerate(rng, t, p=120):
  G = rng.normal(size=(t, p))
  g = -G.sum(0) + 0.2 * rng.normal(size=p)
  zero = G.copy()
  zero[0] = 0
  return {
      "duplicate rows": (g, np.concatenate([G, G[:2], G[:1]])),
      "colinear rows": (g, np.concatenate([G, 3.0 * G[:1], 0.01 * G[1:2]])),
      "zero row": (g, zero),
      "zero gradient": (np.zeros(p), G),
      "all constraints active": (-G.sum(0), G),
      "more rows than dims": (rng.normal(size=8), rng.normal(size=(t + 8, 8))),
  }


@pytest.mark.parametrize("t", [2, 5, 20])
@pytest.mark.parametrize("case", ["duplicate rows", "colinear rows",
                                  "zero row", "zero gradient",
                                  "all constraints active",
                                  "more rows than dims"])
def test_gem_degenerate_problems(t, case):
  g, G = _degenerate(np.random.default_rng(t), t)[case]
  x = gem(*_f32(g, G))
  assert np.all(np.isfinite(np.asarray(x)))
  _assert_projection(x, g, G, _primal(g, G))


def test_feasible_gradient_is_unchanged_even_with_margin():
  rng = np.random.default_rng(0)
  G = rng.normal(size=(6, 50))
  g = G.sum(0) * 3 + 0.01 * rng.normal(size=50)
  assert np.all(G @ g > 0)
  for margin in (0.0, 0.5):
    np.testing.assert_array_equal(gem(*_f32(g, G), margin),
                                  np.float32(g))


@pytest.mark.parametrize("t", [1, 4, 20])
def test_gem_margin_matches_reference_dual(t):
  rng = np.random.default_rng(10 + t)
  for _ in range(10):
    G = rng.normal(size=(t, 200))
    g = rng.normal(size=200) - 0.5 * G.mean(0) * t
    if np.all(G @ g >= 0):
      continue
    x = gem(*_f32(g, G), 0.5)
    want = _dual(g, G, 0.5)
    assert np.linalg.norm(np.asarray(x) - want) <= 1e-5 * np.linalg.norm(want)


@pytest.mark.parametrize("t", [2, 5])
def test_gem_is_accurate_for_a_million_parameters(t):
  # Long float32 accumulations: the Gram matrix and <G_k, g> must not lose
  # precision with P (a plain XLA:CPU dot lost 4.6e-4 at P = 10^6, t = 2).
  rng = np.random.default_rng(t)
  G = rng.normal(size=(t, 10**6)).astype(np.float32)
  g = (rng.normal(size=10**6) - G.mean(0) * t).astype(np.float32)
  x = np.asarray(gem(*_f32(g, G), 0.5), np.float64)
  want = _dual(g.astype(np.float64), G.astype(np.float64), 0.5)
  assert np.linalg.norm(x - want) <= 1e-5 * np.linalg.norm(want)


@pytest.mark.parametrize("t", [2, 5, 10])
def test_the_gram_product_keeps_the_kernel_it_gets_alone(t):
  """Inside the projection, G G^T is compiled with the kernel it gets as a
  product alone (XLA:CPU's YNNPACK fusion, where this jaxlib has it): the
  QP's column-major LAPACK operands once made layout assignment give the
  product a column-major output at t = 2, which cost it that kernel (3x
  the time of product and QP)."""
  G, g = jnp.ones((t, 10 ** 5)), jnp.ones(10 ** 5)
  fast = lambda text: any(
      f"f32[{t},{t}]" in line and "__ynn_fusion" in line and
      "dot_general" in line for line in text.splitlines())
  if not fast(jax.jit(lambda G: G @ G.T).lower(G).compile().as_text()):
    pytest.skip("this jaxlib has no YNNPACK fusion for the product")
  assert fast(jax.jit(constraints.gem_project).lower(g, G).compile().as_text())


def test_long_rows_are_formed_by_column_chunks_on_cpu_and_stay_accurate():
  # On CPU a leaf with long rows, of either parity, is formed chunk by
  # chunk of columns (lax.map: a while loop in the lowered program); short
  # rows as single products, and on GPU always the single products. Mixed
  # in one pytree, the projection equals quadprog's on the flat vector; on
  # CPU each helper equals its float64 value to a tolerance that one
  # matrix-vector product per Gram row (3e-6 of the diagonal at this size)
  # would fail.
  from cljax.constraints import _project
  rng = np.random.default_rng(3)
  t, n = 4, _project._LONG_ROW + 5 * _project._CHUNK + 6
  sizes = {"long": n, "odd": n + 1, "short": 40}
  cuts = np.cumsum([0, *sizes.values()])
  parts = {k: slice(a, b) for k, a, b in zip(sizes, cuts, cuts[1:])}
  G = (0.9 * rng.normal(size=cuts[-1])
       + 0.1 * rng.normal(size=(t, cuts[-1]))).astype(np.float32)
  g = (rng.normal(size=cuts[-1]) - G.mean(0) * t).astype(np.float32)
  tree = lambda v: {k: v[..., part] for k, part in parts.items()}
  out = gem(tree(g), tree(G), 0.5)
  x = np.concatenate([np.asarray(out[k], np.float64) for k in parts])
  want = _dual(g.astype(np.float64), G.astype(np.float64), 0.5)
  assert np.linalg.norm(x - want) <= 1e-5 * np.linalg.norm(want)
  G64 = G.astype(np.float64)
  gram, dots = jax.jit(_project._gram), jax.jit(_project._row_dots)
  tol = 5e-7 if jax.default_backend() == "cpu" else 1e-5
  for name, part in parts.items():
    rows, vec = [jnp.asarray(G[:, part])], [jnp.asarray(g[part])]
    close = lambda got, want: np.testing.assert_allclose(
        got, want, rtol=0, atol=tol * np.abs(want).max())
    close(gram(rows), G64[:, part] @ G64[:, part].T)
    close(dots(rows, vec), G64[:, part] @ g[part])
    for f, args in ((gram, (rows,)), (dots, (rows, vec))):
      lowered = lambda platform: f.trace(*args).lower(
          lowering_platforms=(platform,)).as_text()
      assert ("while" in lowered("cpu")) == (name != "short")
      assert "while" not in lowered("cuda")


def test_no_rows_and_mismatched_qp_shapes_are_named():
  # A ZeroDivisionError and broadcasting errors before.
  with pytest.raises(ValueError, match="no rows"):
    constraints.gem_project(jnp.ones(4), jnp.ones((0, 4)))
  with pytest.raises(ValueError, match=r"c must have shape \(3,\)"):
    constraints.nonneg_qp(jnp.eye(3), jnp.ones(4))
  with pytest.raises(ValueError, match=r"m must have shape \(3, 3\)"):
    constraints.nonneg_qp(jnp.ones((3, 4)), jnp.ones(3))


def test_bfloat16_gradients_are_projected_in_float32():
  # The QP's solves have no bfloat16: the projection runs in float32 and
  # returns the gradient's dtype (it raised NotImplementedError before).
  rng = np.random.default_rng(4)
  G = jnp.asarray(rng.normal(size=(3, 50)), jnp.bfloat16)
  g = jnp.asarray(rng.normal(size=50) - 2 * rng.normal(size=50),
                  jnp.bfloat16) - G.sum(0)
  out = gem(g, G, 0.5)
  assert out.dtype == jnp.bfloat16
  want = gem(g.astype(jnp.float32), G.astype(jnp.float32), 0.5)
  np.testing.assert_array_equal(np.asarray(out, np.float32),
                                np.asarray(want.astype(jnp.bfloat16),
                                           np.float32))


def test_per_device_problems_inside_shard_map():
  # Each device projects its own gradient on its own rows (inputs that
  # vary per device): the QP's branches must agree on that typing (a
  # constant ``done`` flag made shard_map refuse the cond before).
  from jax.sharding import NamedSharding, PartitionSpec
  n = jax.device_count()
  mesh = jax.make_mesh((n,), ("data",))
  rng = np.random.default_rng(5)
  G = rng.normal(size=(n, 3, 50)).astype(np.float32)
  g = -G.sum(1)
  put = lambda a: jax.device_put(a, NamedSharding(mesh, PartitionSpec("data")))
  f = jax.jit(jax.shard_map(
      lambda g, G: constraints.gem_project(g[0], G[0], 0.5)[None], mesh=mesh,
      in_specs=PartitionSpec("data"), out_specs=PartitionSpec("data")))
  out = np.asarray(f(put(g), put(G)))
  for k in range(n):
    np.testing.assert_allclose(out[k], gem(g[k], G[k], 0.5), atol=1e-6)


def test_mask_equals_dropping_rows_and_pytrees_equal_flat():
  rng = np.random.default_rng(1)
  G = rng.normal(size=(7, 30))
  g = rng.normal(size=30) - G[:3].sum(0)
  mask = np.array([1, 0, 1, 1, 0, 0, 1], bool)
  np.testing.assert_allclose(gem(*_f32(g, G), 0.0, mask),
                             gem(*_f32(g, G[mask])), atol=1e-5)
  tree = lambda v: {"a": v[..., :12].reshape(*v.shape[:-1], 3, 4),
                    "b": v[..., 12:]}
  out = gem(tree(jnp.float32(g)), tree(jnp.float32(G)), 0.3, mask)
  flat = gem(*_f32(g, G), 0.3, mask)
  np.testing.assert_allclose(out["a"].reshape(-1), flat[:12], atol=1e-5)
  np.testing.assert_allclose(out["b"], flat[12:], atol=1e-5)


def test_gem_compiles_once_as_tasks_arrive():
  f = jax.jit(lambda *a: constraints.gem_project(*a))
  rng = np.random.default_rng(2)
  G = jnp.asarray(rng.normal(size=(5, 40)), jnp.float32)
  for k in range(1, 6):
    f(jnp.asarray(rng.normal(size=40), jnp.float32), G, 0.5,
      jnp.arange(5) < k)
  assert f._cache_size() == 1


def test_agem_closed_form_and_pytrees():
  rng = np.random.default_rng(3)
  for _ in range(20):
    g, r = rng.normal(size=(2, 25))
    want = g - min(0.0, g @ r) / (r @ r) * r
    got = jax.jit(constraints.agem_project)(*_f32(g, r))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert float(np.asarray(got) @ r) >= -1e-4
  g = jnp.ones(4)
  np.testing.assert_array_equal(constraints.agem_project(g, jnp.zeros(4)), g)
  tree = {"a": jnp.asarray(g[:2]), "b": jnp.asarray(-g[2:])}
  ref = {"a": jnp.ones(2), "b": jnp.ones(2)}
  flat = constraints.agem_project(jnp.array([1., 1, -1, -1]), jnp.ones(4))
  out = constraints.agem_project(tree, ref)
  np.testing.assert_allclose(jnp.concatenate([out["a"], out["b"]]), flat)


def test_optax_forms_follow_the_direct_projection():
  # A few SGD steps on a quadratic: chain(gem, sgd) == project then sgd.
  rng = np.random.default_rng(4)
  G = jnp.asarray(rng.normal(size=(3, 10)), jnp.float32)
  target = jnp.asarray(rng.normal(size=10), jnp.float32)
  grad = lambda p: p - target
  for tx, kw, proj in (
      (constraints.gem(0.5), {"memory_grads": G},
       lambda g: constraints.gem_project(g, G, 0.5)),
      (constraints.agem(), {"ref_grad": G[0]},
       lambda g: constraints.agem_project(g, G[0]))):
    opt = optax.chain(tx, optax.sgd(0.1))
    p, s, q = jnp.zeros(10), None, jnp.zeros(10)
    s = opt.init(p)
    for _ in range(5):
      u, s = opt.update(grad(p), s, p, **kw)
      p = optax.apply_updates(p, u)
      q = q - 0.1 * proj(grad(q))
    np.testing.assert_allclose(p, q, rtol=1e-6)


def test_bad_inputs_are_rejected():
  g, G = jnp.ones(5), jnp.ones((2, 5))
  with pytest.raises(ValueError, match="margin"):
    constraints.gem_project(g, G, -0.1)
  with pytest.raises(ValueError, match="shape"):
    constraints.gem_project(g, jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="NaN"):
    constraints.gem_project(g.at[0].set(jnp.nan), G)
  with pytest.raises(ValueError, match="NaN"):
    constraints.agem_project(g, G[0].at[1].set(jnp.inf))
  with pytest.raises(ValueError, match="shape"):
    constraints.agem_project(g, jnp.ones(4))
  with pytest.raises(ValueError, match="memory_grads"):
    constraints.gem().update(g, optax.EmptyState(), g)
  with pytest.raises(ValueError, match="margin"):
    constraints.gem(-1.0)


@pytest.mark.parametrize("margin", [jnp.array(-1.0), np.float32(-0.5),
                                    np.array(jnp.nan), float("inf")])
def test_margin_of_any_type_is_checked(margin):
  # A JAX or NumPy scalar used to skip the check and change the result.
  g, G = -jnp.ones(5), jnp.ones((2, 5))
  with pytest.raises(ValueError, match="margin must be finite and >= 0"):
    constraints.gem_project(g, G, margin)
  with pytest.raises(ValueError, match="margin"):
    constraints.gem(margin)


def test_traced_margin_is_left_to_the_caller():
  g, G = -jnp.ones(5), jnp.ones((2, 5))
  got = jax.jit(constraints.gem_project)(g, G, 0.5)
  np.testing.assert_allclose(got, constraints.gem_project(g, G, 0.5),
                             atol=1e-6)


def test_gem_mask_must_have_one_entry_per_row():
  g, G = -jnp.ones(5), jnp.ones((3, 5))
  with pytest.raises(ValueError, match=r"mask must have shape \(3,\)"):
    constraints.gem_project(g, G, mask=jnp.ones((1,), bool))
  with pytest.raises(ValueError, match="mask must be boolean"):
    constraints.gem_project(g, G, mask=jnp.array([0.3, 1.0, 1.0]))
