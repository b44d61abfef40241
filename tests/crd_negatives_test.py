"""CRD's negatives are drawn as RepDistiller's CIFAR100InstanceSample draws
them: k distinct other-class examples when the pool allows, with
replacement when it does not."""

import types

import jax
import numpy as np
import pytest

from mhkd_jax.distill import crd


def _sampler(labels, num_classes):
  data = types.SimpleNamespace(
    train_labels=np.asarray(labels, np.int32),
    num_train_examples=len(labels), num_classes=num_classes,
  )
  state = crd._negative_sampler(data)  # pylint: disable=protected-access
  return types.SimpleNamespace(**{k: v.get_value() for k, v in state.items()})


def _draw(labels, num_classes, batch_labels, k, seed=0):
  trainable = _sampler(labels, num_classes)
  batch = types.SimpleNamespace(labels=np.asarray(batch_labels, np.int32))
  draw = jax.jit(
    lambda key: crd._draw_negatives(trainable, batch, k, key)  # pylint: disable=protected-access
  )
  return np.asarray(draw(jax.random.key(seed)))


# Unbalanced, shuffled classes, so the pools differ from row to row and
# the class-sorted order is not the identity.
LABELS = np.random.default_rng(0).permutation(
  np.repeat(np.arange(5), [30, 10, 25, 5, 30]))


def test_negatives_are_distinct_other_class_examples_when_the_pool_allows():
  batch_labels = [0, 1, 2, 3, 4, 4]
  k = 40  # every pool here has at least 50 examples
  negatives = _draw(LABELS, 5, batch_labels, k)
  assert negatives.shape == (len(batch_labels), k)
  for row, label in zip(negatives, batch_labels):
    assert len(set(row.tolist())) == k
    assert np.all(LABELS[row] != label)


def test_a_pool_smaller_than_k_is_drawn_with_replacement():
  # Class 0's pool has 70 examples, class 3's 95: k = 80 fits only the
  # second, which must then be distinct; the first repeats.
  negatives = _draw(LABELS, 5, [0, 3], 80)
  assert np.all(LABELS[negatives[0]] != 0)
  assert len(set(negatives[0].tolist())) < 80
  assert np.all(LABELS[negatives[1]] != 3)
  assert len(set(negatives[1].tolist())) == 80


def test_k_above_the_data_set_size_is_drawn_with_replacement():
  negatives = _draw(LABELS, 5, [1, 2], 500)
  assert negatives.shape == (2, 500)
  assert np.all(LABELS[negatives[0]] != 1)
  assert np.all(LABELS[negatives[1]] != 2)


def test_one_class_draws_distinct_examples_of_the_whole_set():
  labels = np.zeros(40, np.int32)
  negatives = _draw(labels, 1, [0, 0, 0], 30)
  for row in negatives:
    assert len(set(row.tolist())) == 30
    assert np.all((row >= 0) & (row < 40))


def test_every_pool_member_is_equally_likely():
  # 2,000 draws of 20 of class 1's 90 other-class examples: each is drawn
  # 2000 * 20 / 90 = 444 times in expectation (sd ~ 19 for a k-subset).
  batch_labels = np.full(2000, 1)
  negatives = _draw(LABELS, 5, batch_labels, 20, seed=3)
  counts = np.bincount(negatives.ravel(), minlength=len(LABELS))
  pool = np.flatnonzero(LABELS != 1)
  assert np.all(counts[LABELS == 1] == 0)
  expected = 2000 * 20 / len(pool)
  assert np.max(np.abs(counts[pool] - expected)) < 5 * np.sqrt(expected)
  chi2 = np.sum((counts[pool] - expected) ** 2 / expected)
  assert chi2 < len(pool) + 5 * np.sqrt(2 * len(pool))


def test_always_replace_draws_with_replacement():
  trainable = _sampler(LABELS, 5)
  batch = types.SimpleNamespace(labels=np.asarray([0, 4], np.int32))
  negatives = np.asarray(crd._draw_negatives(  # pylint: disable=protected-access
    trainable, batch, 60, jax.random.key(0), always_replace=True))
  # 60 draws from a pool of 70 repeat with probability 1 - 70!/(10! 70^60).
  for row, label in zip(negatives, [0, 4]):
    assert np.all(LABELS[row] != label)
    assert len(set(row.tolist())) < 60
