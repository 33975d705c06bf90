import numpy as np
import pytest

from cljax import metrics

# A hand-computed 3-task example.
R = np.array([[0.9, 0.1, 0.2],
              [0.6, 0.8, 0.3],
              [0.5, 0.7, 0.9]])
B = np.array([0.1, 0.2, 0.25])


def test_hand_computed():
  assert metrics.average_accuracy(R) == pytest.approx((0.5 + 0.7 + 0.9) / 3)
  assert metrics.backward_transfer(R) == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
  assert metrics.forward_transfer(R, B) == pytest.approx(((0.1 - 0.2) + (0.3 - 0.25)) / 2)
  # forgetting: task 0: max(0.9, 0.6) - 0.5 = 0.4; task 1: max(0.1, 0.8) - 0.7 = 0.1
  assert metrics.forgetting(R) == pytest.approx(0.25)
  # avg incremental: 0.9, (0.6+0.8)/2, (0.5+0.7+0.9)/3
  assert metrics.average_incremental_accuracy(R) == pytest.approx(
      (0.9 + 0.7 + 0.7) / 3)
  assert metrics.average_incremental_accuracy(R, [1, 3, 1]) == pytest.approx(
      (0.9 + (0.6 + 2.4) / 4 + (0.5 + 2.1 + 0.9) / 5) / 3)


@pytest.mark.parametrize("t", [1, 2, 5, 9])
def test_against_loops(t):
  rng = np.random.default_rng(t)
  r, b = rng.uniform(size=(t, t)), rng.uniform(size=t)
  bwt = sum(r[t - 1, j] - r[j, j] for j in range(t - 1)) / max(t - 1, 1)
  fwt = sum(r[j - 1, j] - b[j] for j in range(1, t)) / max(t - 1, 1)
  fgt = sum(max(r[l, j] for l in range(t - 1)) - r[t - 1, j]
            for j in range(t - 1)) / max(t - 1, 1)
  assert metrics.backward_transfer(r) == pytest.approx(bwt)
  assert metrics.forward_transfer(r, b) == pytest.approx(fwt)
  assert metrics.forgetting(r) == pytest.approx(fgt)
  ref = rng.uniform(size=(t, t))
  assert metrics.intransigence(r, ref) == pytest.approx(
      ref[t - 1][t - 1] - r[t - 1][t - 1])
  s = metrics.summary(r, b)
  assert set(s) >= {"average_accuracy", "backward_transfer", "forgetting",
                    "forward_transfer", "average_incremental_accuracy"}


def test_score():
  a = [0.9, 0.8, 0.5, 0.7]
  b = [0.1, 0.5, 0.8, 0.75]
  s = metrics.score(a, b)
  assert s["index"] == 3
  assert s["score"] == pytest.approx(0.725)
  assert (s["score_a"], s["score_b"]) == (0.7, 0.75)


def test_bad_input():
  with pytest.raises(ValueError, match="square"):
    metrics.average_accuracy(np.zeros((2, 3)))
  with pytest.raises(ValueError, match="b must"):
    metrics.forward_transfer(R, [0.1])
  with pytest.raises(ValueError):
    metrics.score([0.1], [0.1, 0.2])
  with pytest.raises(ValueError, match=r"reference's accuracy matrix is \(2, 2\)"):
    metrics.intransigence(R, np.zeros((2, 2)))
