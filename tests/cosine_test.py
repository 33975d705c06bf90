"""UCIR's cosine classifier head."""

import jax
import numpy as np
import pytest
from flax import nnx

from cljax import models


@pytest.mark.parametrize("b,d,c", [(1, 3, 2), (7, 16, 10)])
def test_cosine_logits_against_numpy(b, d, c):
  rng = np.random.default_rng(b)
  f = rng.normal(size=(b, d))
  w = rng.normal(size=(d, c))
  got = jax.jit(models.cosine_logits)(f.astype(np.float32),
                                      w.astype(np.float32), 2.5)
  want = np.array([[2.5 * f[i] @ w[:, j] / np.linalg.norm(f[i]) /
                    np.linalg.norm(w[:, j]) for j in range(c)]
                   for i in range(b)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_cosine_head_in_a_model():
  m = models.build_model("mlp", (8, 8, 1), 10, hidden=(16,), head="cosine")
  head = m.params["head"]
  assert set(head) == {"kernel", "sigma"} and head["kernel"].shape == (16, 10)
  assert float(head["sigma"]) == 1.0
  assert np.all(np.abs(head["kernel"]) <= 16 ** -0.5)
  x = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype(np.float32)
  (logits, feats), _ = m.apply(m.params, m.batch_stats, x)
  np.testing.assert_allclose(logits, models.cosine_logits(
      feats, head["kernel"], head["sigma"]), rtol=1e-6)
  assert np.all(np.abs(np.asarray(logits)) <= 1 + 1e-6)
  with pytest.raises(ValueError, match="model.head"):
    models.build_model("mlp", (8, 8, 1), 10, head="cosin")


def test_cosine_head_module_alone():
  layer = models.CosineLinear(4, 3, rngs=nnx.Rngs(0))
  x = np.ones((2, 4), np.float32)
  assert layer(x).shape == (2, 3)
