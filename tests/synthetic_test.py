"""The on-the-fly `synthetic_cifar100` data set (mhkd_jax/data/synthetic.py)."""

import numpy as np
import pytest

from mhkd_jax.data import datasets, synthetic
from mhkd_jax.run import errors


def test_shapes_dtypes_and_label_range():
  split = datasets.load_split(
    'synthetic_cifar100', 'train', data_dir=None, num_examples=2500
  )
  assert split.images.shape == (2500, 32, 32, 3)
  assert split.images.dtype == np.uint8
  assert split.labels.shape == (2500,) and split.labels.dtype == np.int32
  assert split.labels.min() >= 0 and split.labels.max() < 100
  # 2,500 draws from 100 classes leave none out (the chance is ~1e-41).
  assert len(np.unique(split.labels)) == 100
  # The noise never reaches 0 or 255: no clipping, statistics exact.
  assert split.images.min() >= 1 and split.images.max() <= 255


def test_info_matches_the_data():
  info = datasets.dataset_info('synthetic_cifar100')
  assert info.num_classes == 100 and info.image_shape == (32, 32, 3)
  images, _ = synthetic.read_split('train', 5000)
  x = images.astype(np.float64) / 255
  np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), info.mean, atol=0.01)
  np.testing.assert_allclose(x.std(axis=(0, 1, 2)), info.std, atol=0.01)


def test_deterministic_and_a_prefix_whatever_the_size():
  a_images, a_labels = synthetic.read_split('train', 1500)
  b_images, b_labels = synthetic.read_split('train', 2600)
  np.testing.assert_array_equal(a_images, b_images[:1500])
  np.testing.assert_array_equal(a_labels, b_labels[:1500])
  c_images, c_labels = synthetic.read_split('train', 1500)
  np.testing.assert_array_equal(a_images, c_images)
  np.testing.assert_array_equal(a_labels, c_labels)
  # The test split is other examples of the same classes.
  t_images, _ = synthetic.read_split('test', 1500)
  assert not np.array_equal(t_images, a_images)


def test_an_image_is_its_class_prototype_plus_bounded_noise():
  images, labels = synthetic.read_split('test', 300)
  diff = images.astype(np.int16) - synthetic.prototypes()[labels]
  assert diff.min() >= -63 and diff.max() <= 63
  # Its own prototype is nearer than another class's: learnable.
  other = synthetic.prototypes()[(labels + 1) % 100]
  own_err = np.abs(diff).mean(axis=(1, 2, 3))
  other_err = np.abs(images.astype(np.int16) - other).mean(axis=(1, 2, 3))
  assert np.all(own_err < other_err)


def test_sizes_and_splits_are_checked_with_the_valid_ones_named():
  assert len(datasets.load_split(
    'synthetic_cifar100', 'test', data_dir=None
  )) == 10_000
  with pytest.raises(errors.ConfigError, match='10000 examples'):
    datasets.load_split('synthetic_cifar100', 'test', data_dir=None,
                        num_examples=10_001)
  with pytest.raises(ValueError, match='train, test'):
    synthetic.read_split('validation')
  with pytest.raises(errors.ConfigError, match='nothing to prepare'):
    datasets.prepare('synthetic_cifar100')
