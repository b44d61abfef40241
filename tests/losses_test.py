"""Losses against values computed by hand / with numpy."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from mhkd_jax import losses


def _np_kd(s, t, temp):
  """KL(softmax(t/T) || softmax(s/T)) summed over classes, batch mean, T^2."""
  def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))

  ls, lt = log_softmax(s / temp), log_softmax(t / temp)
  return float(np.mean(np.sum(np.exp(lt) * (lt - ls), -1)) * temp * temp)


def test_cross_entropy_uniform_logits_is_log_num_classes():
  logits = jnp.zeros((4, 10))
  labels = jnp.array([0, 3, 9, 5])
  assert float(losses.cross_entropy(logits, labels)) == pytest.approx(
    math.log(10), rel=1e-6
  )


def test_cross_entropy_by_hand():
  # Row 0: logits (2, 0, 0), label 0: -log(e^2 / (e^2 + 2)).
  # Row 1: logits (0, 1, 0), label 2: -log(1 / (1 + e + 1)).
  logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  labels = jnp.array([0, 2])
  row0 = -math.log(math.e**2 / (math.e**2 + 2))
  row1 = -math.log(1 / (2 + math.e))
  assert float(losses.cross_entropy(logits, labels)) == pytest.approx(
    (row0 + row1) / 2, rel=1e-6
  )


def test_kd_loss_zero_when_equal():
  logits = jnp.array([[1.0, -2.0, 3.0], [0.5, 0.5, 9.0]])
  assert float(losses.kd_loss(logits, logits, 4.0)) == pytest.approx(
    0.0, abs=1e-6
  )


def test_kd_loss_two_class_by_hand():
  # T = 1, teacher (0, 0) -> p_t = (1/2, 1/2); student (log 3, 0) -> p_s =
  # (3/4, 1/4). KL = 1/2 log(2/3) + 1/2 log(2) = 1/2 log(4/3).
  s = jnp.array([[math.log(3.0), 0.0]])
  t = jnp.zeros((1, 2))
  assert float(losses.kd_loss(s, t, 1.0)) == pytest.approx(
    0.5 * math.log(4 / 3), rel=1e-6
  )
  # At T = 2 the same logits halve: p_s = (sqrt3, 1)/(sqrt3 + 1), and the
  # loss is scaled by T^2 = 4.
  p_s0 = math.sqrt(3) / (math.sqrt(3) + 1)
  kl = 0.5 * math.log(0.5 / p_s0) + 0.5 * math.log(0.5 / (1 - p_s0))
  assert float(losses.kd_loss(s, t, 2.0)) == pytest.approx(4 * kl, rel=1e-6)


@pytest.mark.parametrize('temperature', [1.0, 2.0, 4.0, 8.0])
@pytest.mark.parametrize('scale', [0.1, 1.0, 30.0])  # uniform-ish .. peaked
def test_kd_loss_matches_numpy(temperature, scale):
  rng = np.random.default_rng(int(temperature * 10 + scale))
  s = rng.normal(size=(8, 100)).astype(np.float32) * scale
  t = rng.normal(size=(8, 100)).astype(np.float32) * scale
  got = float(losses.kd_loss(jnp.asarray(s), jnp.asarray(t), temperature))
  assert got == pytest.approx(
    _np_kd(s.astype(np.float64), t.astype(np.float64), temperature),
    # float32 rounding of log-probabilities (~1e-7 each, summed over 100
    # classes) is amplified by T^2.
    rel=1e-4, abs=1e-6 * temperature**2,
  )


def test_kd_loss_peaked_teacher_is_finite():
  # A teacher so confident that exp underflows to 0 for the other classes.
  t = jnp.array([[1000.0, 0.0, 0.0]])
  s = jnp.array([[0.0, 5.0, 0.0]])
  value = float(losses.kd_loss(s, t, 1.0))
  # KL = -log p_s(class 0) = log(1 + e^5 + 1).
  assert value == pytest.approx(math.log(2 + math.e**5), rel=1e-5)


def test_accuracy_and_agreement():
  a = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
  b = jnp.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  labels = jnp.array([0, 0, 0, 1])
  assert float(losses.accuracy(a, labels)) == pytest.approx(0.75)
  assert float(losses.accuracy(b, labels)) == pytest.approx(1.0)
  assert float(jnp.mean(losses.agrees(a, b))) == pytest.approx(0.75)
