"""Layer-tap importances equal the vmap(grad) ones on every model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cljax import models
from cljax import regularizers as reg
from cljax.losses import masked_cross_entropy
from cljax.models import build_model

# Every registry model, and two small ResNets with the same layers (BatchNorm,
# option-A and option-B shortcuts, strided stages) where the full-size ones
# would only cost time.
_SHAPES = {"mlp": (8, 8, 1), "cnn": (8, 8, 1), "resnet32": (8, 8, 1),
           "reduced_resnet18": (8, 8, 3), "small_resnet_a": (8, 8, 1),
           "small_resnet_b": (8, 8, 3)}


def _build(name, seed):
  if name.startswith("small_resnet_"):
    shortcut = name[-1].upper()
    return models.functional(models.ResNet(
        _SHAPES[name][-1], 10, widths=(4, 8), blocks=(1, 1),
        shortcut=shortcut, rngs=nnx.Rngs(seed)))
  return build_model(name, _SHAPES[name], 10, seed=seed, hidden=(32, 16))


def _setup(name, n=11, seed=0):
  model = _build(name, seed)
  rng = np.random.default_rng(seed)
  xs = rng.normal(size=(n, *_SHAPES[name])).astype(np.float32)
  ys = rng.integers(0, 6, n).astype(np.int32)
  weights = (rng.random(n) < 0.7).astype(np.float32)
  weights[0] = 1.0
  mask = jnp.arange(10) < 6
  return model, xs, ys, weights, mask


def _logits(model, p, x):
  return model.apply(p, model.batch_stats, x[None])[0][0]


def _assert_trees_close(got, want, rtol=2e-5):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    scale = float(np.max(np.abs(b))) + 1e-20
    np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale,
                               atol=rtol)


@pytest.mark.parametrize("name,estimator", [
    ("mlp", "empirical"), ("mlp", "sampled"), ("mlp", "expected"),
    ("mlp", "predicted"), ("cnn", "empirical"), ("cnn", "sampled"),
    ("cnn", "expected"), ("cnn", "predicted"),
    ("resnet32", "empirical"), ("reduced_resnet18", "empirical"),
    ("small_resnet_a", "expected")])
def test_layerwise_fisher_equals_vmap_path(name, estimator):
  model, xs, ys, w, mask = _setup(name)
  key = jax.random.key(3)
  got = jax.jit(lambda p: reg.layerwise_fisher_diagonal(
      model.taps, p, model.batch_stats, xs, ys, mask=mask,
      estimator=estimator, key=key, weights=w, chunk_size=4))(model.params)
  nll = lambda p, x, y: masked_cross_entropy(_logits(model, p, x), y[None],
                                             mask)[0]
  want = reg.fisher_diagonal(nll, model.params, xs, ys, chunk_size=3,
                             estimator=estimator, num_classes=10, key=key,
                             weights=w)
  _assert_trees_close(got, want)


@pytest.mark.parametrize("name", ["mlp", "cnn", "small_resnet_a",
                                  "small_resnet_b"])
def test_layerwise_mas_equals_vmap_path(name):
  model, xs, _, w, mask = _setup(name, seed=1)
  got = reg.layerwise_mas_importance(model.taps, model.params,
                                     model.batch_stats, xs, mask=mask,
                                     weights=w, chunk_size=5)
  out = lambda p, x: jnp.where(mask, _logits(model, p, x)[0], 0.0)
  want = reg.mas_importance(out, model.params, xs, weights=w)
  _assert_trees_close(got, want)


def test_per_example_grad_sum_against_loop_on_trained_bn_stats():
  # Non-trivial BatchNorm statistics: eval mode uses them, per example.
  model, xs, ys, _, _ = _setup("small_resnet_a", n=6, seed=2)
  stats = jax.tree.map(lambda a: a + 0.3 * jnp.abs(jnp.sin(jnp.arange(
      a.size, dtype=a.dtype).reshape(a.shape))), model.batch_stats)
  losses = lambda z, y: masked_cross_entropy(z, y) * 1.7
  got = reg.per_example_grad_sum(model.taps, model.params, stats, xs, ys,
                                 example_losses=losses, reduce="abs")
  g = jax.jit(jax.grad(lambda p, x, y: losses(
      model.apply(p, stats, x[None])[0][0], y[None])[0]))
  want = jax.tree.map(lambda *a: np.sum(np.abs(np.stack(a)), 0),
                      *[g(model.params, xs[i], ys[i]) for i in range(6)])
  _assert_trees_close(got, want)


def test_taps_reject_bad_reduce_and_reused_layer():
  model, xs, ys, _, _ = _setup("mlp")
  with pytest.raises(ValueError, match="reduce"):
    reg.per_example_grad_sum(model.taps, model.params, model.batch_stats, xs,
                             example_losses=lambda z: z.sum(-1), reduce="cube")
  with pytest.raises(ValueError, match="estimator"):
    reg.layerwise_fisher_diagonal(model.taps, model.params, model.batch_stats,
                                  xs, ys, estimator="batch")
  with pytest.raises(ValueError, match="key"):
    reg.layerwise_fisher_diagonal(model.taps, model.params, model.batch_stats,
                                  xs, ys, estimator="sampled")


def test_taps_reject_a_layer_called_twice():
  from flax import nnx
  from cljax.models import Classifier, functional

  class Shared(Classifier):
    def __init__(self, rngs):
      self.layer = nnx.Linear(4, 4, rngs=rngs)
      self.head = nnx.Linear(4, 3, rngs=rngs)

    def features(self, x, train=False):
      return self.layer(jax.nn.relu(self.layer(x)))

  model = functional(Shared(nnx.Rngs(0)))
  with pytest.raises(ValueError, match="more than once"):
    model.taps.run(model.params, model.batch_stats, jnp.ones((2, 4)))


@pytest.mark.parametrize("kernel,kw", [
    ((3, 3), dict(strides=1, padding="SAME")),
    ((3, 2), dict(strides=(2, 1), padding="VALID")),
    ((3, 3), dict(strides=2, padding=((1, 0), (2, 1)))),
    ((2, 2), dict(kernel_dilation=2, padding="SAME")),
    ((3, 3), dict(strides=2, padding=1)),
    ((3,), dict(strides=2, padding="SAME")),
    ((3, 3), dict(strides=None, kernel_dilation=None, padding=(1, 2))),
    ((2, 3), dict(kernel_dilation=(2, 1), strides=(1, 2), padding="SAME"))])
def test_conv_unfold_reproduces_the_convolution(kernel, kw):
  # A convolution is its receptive fields times the reshaped kernel, which
  # the per-example kernel gradients P_i^T delta_i rely on.
  from cljax.models._taps import conv_unfold
  conv = nnx.Conv(3, 5, kernel, rngs=nnx.Rngs(0), **kw)
  spatial = (9, 8)[:len(kernel)]
  a = np.random.default_rng(0).normal(size=(4, *spatial, 3)).astype(
      np.float32)
  want = np.asarray(conv(a))
  got = conv_unfold(conv)(a) @ conv.kernel[...].reshape(-1, 5) + conv.bias[...]
  np.testing.assert_allclose(got, want.reshape(4, -1, 5), rtol=1e-5,
                             atol=1e-5)


def test_conv_unfold_crops_for_negative_padding():
  # Against the cropped input, padded and convolved without padding
  # (XLA:CPU's own convolution with negative padding returns garbage).
  from cljax.models._taps import conv_unfold
  conv = nnx.Conv(3, 5, (3, 3), strides=2, padding=((-1, 2), (0, -1)),
                  rngs=nnx.Rngs(0))
  a = np.random.default_rng(0).normal(size=(4, 9, 8, 3)).astype(np.float32)
  cropped = np.pad(a[:, 1:, :-1], ((0, 0), (0, 2), (0, 0), (0, 0)))
  want = jax.lax.conv_general_dilated(
      cropped, conv.kernel[...], (2, 2), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  got = conv_unfold(conv)(a) @ conv.kernel[...].reshape(-1, 5)
  np.testing.assert_allclose(got, np.asarray(want).reshape(4, -1, 5),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 2, 2, 2), (2, 4, 2)])
def test_conv_unfold_of_an_input_smaller_than_the_kernel_is_empty(shape):
  from cljax.models._taps import conv_unfold
  nd = len(shape) - 2
  conv = nnx.Conv(2, 3, (5,) * nd, padding="VALID", rngs=nnx.Rngs(0))
  assert conv(jnp.ones(shape)).size == 0
  assert conv_unfold(conv)(jnp.ones(shape)).shape == (2, 0, 5 ** nd * 2)


def test_conv_unfold_leaves_other_convolutions_to_the_vjp():
  from cljax.models._taps import conv_unfold
  rngs = nnx.Rngs(0)

  class Standardised(nnx.Conv):  # its own __call__: not a plain conv
    def __call__(self, x):
      k = self.kernel[...]
      return jax.lax.conv_general_dilated(
          x, (k - k.mean()) / k.std(), (1, 1), "SAME",
          dimension_numbers=("NHWC", "HWIO", "NHWC"))

  for conv in (Standardised(4, 4, (3, 3), rngs=rngs),
               nnx.Conv(4, 4, (3, 3), feature_group_count=2, rngs=rngs),
               nnx.Conv(4, 4, (3, 3), padding="CIRCULAR", rngs=rngs),
               nnx.Conv(4, 4, (3, 3), input_dilation=2, rngs=rngs),
               nnx.Conv(4, 4, (3, 3), rngs=rngs, conv_general_dilated=(
                   lambda x, k, *a, **kw: jax.lax.conv_general_dilated(
                       x, jnp.round(k), *a, **kw)))):
    assert conv_unfold(conv) is None
  model = build_model("cnn", (8, 8, 1), 10)
  assert set(model.taps.unfold) == {p for p, k in model.taps.kinds.items()
                                    if k == "Conv"}
