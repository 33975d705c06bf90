import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import losses, models


@pytest.mark.parametrize("name,shape,feat", [
    ("mlp", (28, 28, 1), 400), ("cnn", (28, 28, 1), 128),
    ("resnet32", (32, 32, 3), 64), ("reduced_resnet18", (32, 32, 3), 160),
    ("resnet18", (64, 64, 3), 512)])
def test_shapes_and_batch_stats(name, shape, feat):
  m = models.build_model(name, shape, 100, hidden=(400, 400))
  x = jax.random.normal(jax.random.key(0), (3, *shape))
  apply = jax.jit(m.apply, static_argnames="train")
  (logits, f), stats = apply(m.params, m.batch_stats, x, train=True)
  assert logits.shape == (3, 100) and f.shape == (3, feat)
  assert jax.tree.structure(stats) == jax.tree.structure(m.batch_stats)
  if jax.tree.leaves(m.batch_stats):  # BatchNorm running stats move in training
    assert any(not np.allclose(a, b) for a, b in zip(
        jax.tree.leaves(stats), jax.tree.leaves(m.batch_stats)))
  (logits_eval, _), same = apply(m.params, m.batch_stats, x, train=False)
  jax.tree.map(np.testing.assert_array_equal, same, m.batch_stats)
  assert "head" in m.params


def test_resnet32_size():
  m = models.build_model("resnet32", (32, 32, 3), 10)
  n = sum(a.size for a in jax.tree.leaves(m.params))
  assert 0.45e6 < n < 0.48e6  # He et al. 2016, Table 6: 0.46M


def test_resnet18_is_torchvisions():
  """ResNet-18's parameter count at 1,000 classes is torchvision's
  (11,689,512, its documented size; BatchNorm scales and offsets counted,
  running statistics not), and a 224x224 image pools to 512 features."""
  m = models.build_model("resnet18", (224, 224, 3), 1000)
  assert sum(a.size for a in jax.tree.leaves(m.params)) == 11_689_512
  (logits, feats), _ = jax.eval_shape(
      lambda x: m.apply(m.params, m.batch_stats, x),
      jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
  assert logits.shape == (2, 1000) and feats.shape == (2, 512)


def test_masked_cross_entropy_against_loop():
  rng = np.random.default_rng(0)
  for b, c in [(1, 2), (7, 10), (16, 100)]:
    logits = rng.normal(size=(b, c)) * 10
    mask = rng.uniform(size=(b, c)) < 0.5
    y = np.array([rng.choice(np.flatnonzero(m)) if m.any() else 0
                  for m in mask])
    mask[np.arange(b), y] = True
    want = []
    for i in range(b):
      z = logits[i][mask[i]].astype(np.float64)
      want.append(np.log(np.exp(z - z.max()).sum()) + z.max() - logits[i, y[i]])
    got = jax.jit(losses.masked_cross_entropy)(
        jnp.asarray(logits, jnp.float32), jnp.asarray(y), jnp.asarray(mask))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_masked_logits_get_no_gradient():
  logits = jnp.array([[1.0, 2.0, 3.0]])
  mask = jnp.array([True, True, False])
  g = jax.grad(lambda z: losses.masked_cross_entropy(z, jnp.array([0]),
                                                     mask).sum())(logits)
  assert g[0, 2] == 0 and np.isfinite(np.asarray(g)).all()
  masked = models.mask_logits(jnp.array([[1e30, 0.0]]), jnp.array([False, True]))
  assert np.isfinite(np.asarray(jax.nn.log_softmax(masked))).all()


@pytest.mark.parametrize("labels,match", [
    ([0, 10], r"labels\[1\] = 10 is outside \[0, 10\)"),
    ([-1, 0], r"labels\[0\] = -1 is outside"),
    ([0.0, 1.0], "labels must be integers"),
])
def test_masked_cross_entropy_rejects_bad_labels(labels, match):
  # A label of 10 of 10 classes used to give a loss of 1.7e38.
  with pytest.raises(ValueError, match=match):
    losses.masked_cross_entropy(jnp.zeros((2, 10)), jnp.asarray(labels))


def test_masked_cross_entropy_rejects_inactive_labels_and_bad_shapes():
  z = jnp.zeros((2, 4))
  mask = jnp.array([[True, True, False, False], [False, False, True, True]])
  with pytest.raises(ValueError, match=r"labels\[1\] = 1 is not an active"):
    losses.masked_cross_entropy(z, jnp.array([0, 1]), mask)
  with pytest.raises(ValueError, match="labels must have shape"):
    losses.masked_cross_entropy(z, jnp.array([0]))
  with pytest.raises(ValueError, match="mask must have shape"):
    losses.masked_cross_entropy(z, jnp.array([0, 2]), mask[:1])
  with pytest.raises(ValueError, match="logits must have shape"):
    losses.masked_cross_entropy(jnp.zeros(4), jnp.array([0]))
  with pytest.raises(ValueError, match="mask must be boolean"):
    losses.masked_cross_entropy(z, jnp.array([0, 2]), jnp.full((4,), 2))


def test_unknown_model():
  with pytest.raises(ValueError, match="model.name"):
    models.build_model("vit", (8, 8, 1), 10)


@pytest.mark.parametrize("name,shape", [("mlp", (8, 8, 1)),
                                        ("resnet32", (8, 8, 3))])
def test_bfloat16_computes_in_bfloat16_and_keeps_float32_state(name, shape):
  """Mixed precision: float32 parameters, gradients, outputs and running
  statistics; the network's arithmetic in bfloat16 (its logits differ from
  float32's by bfloat16 rounding, not more)."""
  f32 = models.build_model(name, shape, 10, hidden=(32,))
  bf16 = models.build_model(name, shape, 10, hidden=(32,), dtype="bfloat16")
  x = np.random.default_rng(0).normal(size=(16, *shape)).astype(np.float32)
  (a, _), _ = f32.apply(f32.params, f32.batch_stats, x, train=True)
  (b, fb), stats = bf16.apply(bf16.params, bf16.batch_stats, x, train=True)
  assert b.dtype == fb.dtype == jnp.float32
  assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(stats))
  rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))
  assert 1e-4 < rel < 5e-2, rel  # rounded like bfloat16, and only that
  jaxpr = str(jax.make_jaxpr(lambda p: bf16.apply(p, bf16.batch_stats, x))(
      bf16.params))
  assert "bf16" in jaxpr
  g = jax.grad(lambda p: jnp.sum(bf16.apply(p, bf16.batch_stats, x)[0][0]))(
      bf16.params)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(g))
  with pytest.raises(ValueError, match="dtype"):
    models.build_model(name, shape, 10, dtype="float16")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_norm_variance_is_two_pass(seed):
  """Training-mode BatchNorm normalises with the two-pass variance
  ``mean((x - mean)^2)`` (a NumPy float64 computation here): channels
  whose mean is large against their spread (here 1e3 against 1) lose
  their variance to cancellation in ``E[x^2] - E[x]^2``, flax's default.
  A ResNet's BatchNorm layers are such layers."""
  from flax import nnx
  from cljax.models._networks import _bn
  rng = np.random.default_rng(seed)
  x = (1e3 * rng.uniform(0.5, 1.5, 4) +
       rng.normal(size=(64, 4))).astype(np.float32)
  bn = _bn(4, nnx.Rngs(0))
  got = np.asarray(bn(jnp.asarray(x)), np.float64)
  x64 = x.astype(np.float64)
  want = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5)
  np.testing.assert_allclose(got, want, atol=1e-3)
  net = models.ResNet(3, 10, widths=(8, 16), blocks=(1, 1), shortcut="A",
                      rngs=nnx.Rngs(0))
  layers = [m for _, m in nnx.iter_modules(net) if isinstance(m, nnx.BatchNorm)]
  assert layers and not any(m.use_fast_variance for m in layers)
