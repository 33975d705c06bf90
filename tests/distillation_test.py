import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cljax import losses


def _np_kd(s, t, temp, mask=None):
  s, t = s.astype(np.float64) / temp, t.astype(np.float64) / temp
  out = []
  for i in range(len(s)):
    keep = np.ones(s.shape[1], bool) if mask is None else mask
    a, b = t[i][keep], s[i][keep]
    p = np.exp(a - a.max()); p /= p.sum()
    lq = b - b.max() - np.log(np.exp(b - b.max()).sum())
    lp = a - a.max() - np.log(np.exp(a - a.max()).sum())
    out.append(np.sum(np.where(p > 0, p * (lp - lq), 0)))
  return temp ** 2 * np.mean(out)


@pytest.mark.parametrize("b,c", [(1, 2), (8, 10), (32, 100)])
@pytest.mark.parametrize("temp", [0.5, 1.0, 2.0, 20.0])
def test_kd_loss_against_numpy(b, c, temp):
  rng = np.random.default_rng(b * c)
  s, t = rng.normal(size=(2, b, c)) * 3
  got = jax.jit(losses.kd_loss, static_argnums=2)(s, t, temp)
  np.testing.assert_allclose(got, _np_kd(s, t, temp), rtol=2e-4, atol=1e-6)
  mask = rng.uniform(size=c) < 0.6
  mask[0] = True
  got = losses.kd_loss(s, t, temp, jnp.asarray(mask))
  np.testing.assert_allclose(got, _np_kd(s, t, temp, mask), rtol=2e-4,
                             atol=1e-6)


def test_kd_loss_extreme_logits_and_large_t():
  s = jnp.array([[1e4, -1e4, 0.0], [-3e4, 3e4, 5.0]])
  t = jnp.array([[-1e4, 1e4, 0.0], [3e4, -3e4, 0.0]])
  for temp in (1.0, 1e3):
    v = losses.kd_loss(s, t, temp)
    g = jax.grad(losses.kd_loss)(s, t, temp)
    assert np.isfinite(float(v)) and np.isfinite(np.asarray(g)).all()
  # Identical logits: zero loss, zero gradient, at any T.
  assert float(losses.kd_loss(s, s, 7.0)) == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_teacher_row_is_nan_not_dropped(bad):
  # The row's terms were masked to 0: the loss was 7/8 of the other rows'
  # (its gradient NaN), where soft_cross_entropy and lwf_loss give NaN.
  rng = np.random.default_rng(0)
  s, t = (jnp.asarray(rng.normal(size=(8, 5)), jnp.float32) for _ in "st")
  t = t.at[0, 0].set(bad)
  assert np.isnan(float(losses.kd_loss(s, t, 2.0)))
  assert np.isnan(float(losses.hinton_distillation_loss(
      s, t, jnp.zeros(8, jnp.int32), 2.0)))


def test_sigmoid_losses_refuse_bad_labels_and_weights():
  # Labels of shape (B, 1), out of range or float, and weights of another
  # length, each returned a value before.
  logits = jnp.zeros((8, 5))
  active = jnp.ones((8, 5), bool)
  labels = jnp.arange(8) % 5
  for bad, match in ((labels[:, None], "labels must have shape"),
                     (labels.at[2].set(9), r"labels\[2\] = 9"),
                     (labels.astype(jnp.float32), "labels must be integers")):
    with pytest.raises(ValueError, match=match):
      losses.sigmoid_classification(logits, bad, active)
  with pytest.raises(ValueError, match="weights must have shape"):
    losses.icarl_loss(logits, labels, logits, active, jnp.zeros(5, bool),
                      jnp.ones(7))


def test_weighted_sigmoid_losses_follow_their_formula():
  # sum_i w_i l_i / sum_i w_i: fractional weights were divided by
  # max(sum w, 1) (0.8 of the value for weights of 0.1).
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
  teacher = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
  active, w = jnp.ones((8, 5), bool), jnp.full((8,), 0.1)
  np.testing.assert_allclose(
      losses.sigmoid_distillation(logits, teacher, active, w),
      losses.sigmoid_distillation(logits, teacher, active), rtol=1e-6)
  zero = losses.sigmoid_distillation(logits, teacher, active, jnp.zeros(8))
  assert float(zero) == 0.0


def test_kd_gradient_against_finite_differences():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(2, 4, 5))
  temp = 3.0
  g = np.asarray(jax.grad(losses.kd_loss)(jnp.asarray(s, jnp.float32), t,
                                          temp))
  eps = 1e-4
  for idx in [(0, 0), (1, 3), (3, 4)]:
    d = np.zeros_like(s); d[idx] = eps
    fd = (_np_kd(s + d, t, temp) - _np_kd(s - d, t, temp)) / (2 * eps)
    assert g[idx] == pytest.approx(fd, rel=1e-3, abs=1e-6)
  # Closed form: dKD/ds = T (q - p) / B
  p = jax.nn.softmax(t / temp); q = jax.nn.softmax(s / temp)
  np.testing.assert_allclose(g, temp * (q - p) / 4, rtol=1e-4, atol=1e-6)


def test_hinton_hard_plus_soft():
  rng = np.random.default_rng(1)
  s, t = rng.normal(size=(2, 6, 4))
  y = rng.integers(0, 4, 6)
  got = losses.hinton_distillation_loss(s, t, y, 2.0, 0.7)
  ls = s - np.log(np.exp(s).sum(-1, keepdims=True))
  hard = -np.mean(ls[np.arange(6), y])
  np.testing.assert_allclose(got, 0.7 * _np_kd(s, t, 2.0) + 0.3 * hard,
                             rtol=1e-5)


def test_lwf_loss_against_loop():
  rng = np.random.default_rng(2)
  s, r = rng.normal(size=(2, 5, 9))
  groups = np.zeros((4, 9), bool)
  groups[0, :3] = groups[1, 3:6] = True  # rows 2, 3: unused
  want = 0.0
  for g in groups[:2]:
    a, b = r[:, g] / 2, s[:, g] / 2
    p = np.exp(a) / np.exp(a).sum(-1, keepdims=True)
    lq = b - np.log(np.exp(b).sum(-1, keepdims=True))
    want += np.mean(-(p * lq).sum(-1))
  got = jax.jit(losses.lwf_loss)(s, r, groups)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Gradient equals the KL form's (without T^2) within each group.
  g1 = jax.grad(losses.lwf_loss)(jnp.asarray(s), r, groups)
  g2 = sum(jax.grad(lambda z, m=m: losses.kd_loss(z, r, 2.0, m) / 4)(
      jnp.asarray(s)) for m in groups[:2])
  np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("temp", [0.0, -1.0])
def test_bad_temperature(temp):
  z = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="temperature"):
    losses.kd_loss(z, z, temp)
  with pytest.raises(ValueError, match="temperature"):
    losses.lwf_loss(z, z, jnp.ones((1, 3), bool), temp)
  with pytest.raises(ValueError, match="soft_weight"):
    losses.hinton_distillation_loss(z, z, jnp.zeros(2, int), 2.0, 1.5)


@pytest.mark.parametrize("temp", [0.0, -1.0, jnp.array(0.0), np.float32(-2.0),
                                  np.array(np.nan), jnp.inf])
def test_temperature_of_any_type_is_checked(temp):
  # kd_loss(T=jnp.array(0.)) used to return 0.0.
  s = jnp.zeros((4, 10))
  for fn in (lambda: losses.kd_loss(s, s, temp),
             lambda: losses.soft_cross_entropy(s, s, temp),
             lambda: losses.lwf_loss(s, s, jnp.ones((1, 10), bool), temp)):
    with pytest.raises(ValueError, match="temperature must be finite and > 0"):
      fn()


def test_traced_temperature_is_not_checked():
  s = jax.random.normal(jax.random.key(0), (4, 10))
  got = jax.jit(losses.kd_loss)(s, s * 2, 3.0)
  np.testing.assert_allclose(got, losses.kd_loss(s, s * 2, 3.0), rtol=1e-5)


@pytest.mark.parametrize("teacher_shape", [(1, 10), (10,), (4, 9), (4, 10, 1)])
def test_teacher_logits_never_broadcast(teacher_shape):
  # A (1, 10) or (10,) teacher used to broadcast against a (4, 10) student.
  s, t = jnp.zeros((4, 10)), jnp.zeros(teacher_shape)
  with pytest.raises(ValueError, match="shapes must be equal"):
    losses.kd_loss(s, t, 2.0)
  with pytest.raises(ValueError, match="shapes must be equal"):
    losses.lwf_loss(s, t, jnp.ones((1, 10), bool))


def test_bad_masks_and_soft_weight():
  s = jnp.zeros((4, 10))
  # A (1, 10) temperature broadcast into a non-scalar "loss".
  with pytest.raises(ValueError, match=r"temperature must have shape \(\)"):
    losses.kd_loss(s, s, jnp.ones((1, 10)))
  with pytest.raises(ValueError, match="mask must be boolean"):
    losses.kd_loss(s, s, 2.0, jnp.full((10,), 2))
  # Lists are arrays here.
  np.testing.assert_allclose(losses.kd_loss([[1.0, 2.0]], [[1.0, 2.0]], 2.0),
                             0.0, atol=1e-6)
  with pytest.raises(ValueError, match="mask must have shape"):
    losses.kd_loss(s, s, 2.0, jnp.ones((3,), bool))
  with pytest.raises(ValueError, match="group_masks"):
    losses.lwf_loss(s, s, jnp.ones((2, 9), bool))
  with pytest.raises(ValueError, match="soft_weight"):
    losses.hinton_distillation_loss(s, s, jnp.zeros(4, int), 2.0,
                                    jnp.array(1.5))
