"""WA's weight aligning, BiC's bias layer and IL2M's rectification against
plain NumPy loops."""

import jax
import numpy as np
import pytest

from cljax import models


@pytest.mark.parametrize("d,c,seed", [(5, 4, 0), (32, 10, 1), (64, 100, 2)])
def test_align_weights_against_a_loop(d, c, seed):
  rng = np.random.default_rng(seed)
  kernel = rng.normal(size=(d, c)) * rng.uniform(0.5, 3, size=c)
  old = np.zeros(c, bool)
  old[:c // 2] = True
  new = np.zeros(c, bool)
  new[c // 2:c // 2 + max(1, c // 4)] = True
  got, gamma = jax.jit(models.align_weights)(kernel.astype(np.float32), old,
                                             new)
  norms = [np.sqrt(sum(kernel[i, j] ** 2 for i in range(d)))
           for j in range(c)]
  want_gamma = (np.mean([norms[j] for j in range(c) if old[j]]) /
                np.mean([norms[j] for j in range(c) if new[j]]))
  want = kernel.copy()
  for j in range(c):
    if new[j]:
      want[:, j] *= want_gamma
  np.testing.assert_allclose(gamma, want_gamma, rtol=1e-5)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  aligned = np.linalg.norm(np.asarray(got), axis=0)
  np.testing.assert_allclose(aligned[new].mean(), aligned[old].mean(),
                             rtol=1e-5)


def test_align_weights_refuses_mismatched_masks():
  with pytest.raises(ValueError, match="old must have shape"):
    models.align_weights(np.ones((3, 4)), np.ones(3, bool), np.ones(4, bool))


def test_bias_correct_against_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 5)).astype(np.float32)
  alpha, beta = rng.uniform(0.5, 2, 5), rng.normal(size=5)
  got = jax.jit(models.bias_correct)(logits, alpha, beta)
  want = np.array([[alpha[c] * logits[i, c] + beta[c] for c in range(5)]
                   for i in range(6)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="alpha must have shape"):
    models.bias_correct(logits, alpha[:4], beta)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_il2m_rectification_against_a_hand_computation(seed):
  """Belouadah & Popescu (2019)'s rectification as the authors' script
  applies it: example by example, old scores scaled only when the top class
  is new."""
  rng = np.random.default_rng(seed)
  c, b, states = 9, 40, 3
  class_state = np.repeat(np.arange(states), 3)  # 3 classes a state
  init_means = rng.uniform(0.5, 1.0, c)
  current_means = rng.uniform(0.05, 0.5, c)
  confidence = rng.uniform(0.6, 1.0, states)
  state = 2
  old = class_state < state
  new = class_state == state
  scores = rng.uniform(0, 1, (b, c))
  ratio = models.il2m_ratio(init_means, current_means, confidence,
                            class_state, state, old)
  got = jax.jit(models.il2m_rectify)(scores, ratio, new, np.ones(c, bool))
  want = scores.copy()
  for i in range(b):
    if int(np.argmax(scores[i])) >= 6:  # a new class on top
      for o in range(6):
        want[i, o] *= (init_means[o] / current_means[o] *
                       confidence[state] / confidence[o // 3])
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert np.any(np.argmax(np.asarray(got), 1) != np.argmax(scores, 1))


def test_il2m_rectify_masks_inactive_classes():
  scores = np.array([[0.1, 0.2, 0.9], [0.5, 0.3, 0.1]], np.float32)
  active = np.array([True, True, False])
  got = np.asarray(models.il2m_rectify(scores, np.ones(3), np.array(
      [False, True, False]), active))
  assert np.argmax(got, 1).tolist() == [1, 0]
