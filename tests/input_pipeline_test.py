"""The train inputs make each batch in one program from the step, with
the very batches the step-by-step host derivation gave."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhkd_jax import parallel
from mhkd_jax.data import datasets, input_pipeline

NUM_EXAMPLES, BATCH = 40, 8  # 5 steps per epoch
PREPROCESSING = input_pipeline.Preprocessing(
  mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.3), crop_padding=4,
  random_flip=True,
)


def _split():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (NUM_EXAMPLES, 16, 16, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, (NUM_EXAMPLES,)).astype(np.int32)
  return datasets.ArraySplit(images, labels)


def _previous_device_batches(train_input, start_step, rng):
  """DeviceResidentInput as it was: an eager fold_in and a host position
  per step, then the gather program."""
  gather = jax.jit(train_input.gather,
                   out_shardings=parallel.data_sharded(train_input.mesh))
  for order, position, key in train_input._keyed_positions(  # noqa: SLF001
    start_step, rng
  ):
    yield gather(train_input.images, train_input.labels, order,
                 jnp.int32(position), key)


def _previous_host_batches(train_input, split, start_step, rng):
  """HostFedInput as it was: the same rows, augmented with the eager key."""
  sharding = parallel.data_sharded(train_input.mesh)
  augment = jax.jit(
    lambda key, images, labels, indices: input_pipeline.Batch(
      PREPROCESSING.train(key, images), labels, indices),
    out_shardings=sharding,
  )
  for order, position, key in train_input._keyed_positions(  # noqa: SLF001
    start_step, rng
  ):
    rows = np.asarray(order)[position * BATCH:(position + 1) * BATCH]
    yield augment(key, *(
      parallel.global_batch(x, sharding, BATCH)
      for x in (split.images[rows], split.labels[rows], rows)
    ))


def _assert_same(new, old, num_steps):
  for step, (a, b) in enumerate(zip(itertools.islice(new, num_steps),
                                    itertools.islice(old, num_steps))):
    for name in ('images', 'labels', 'indices'):
      x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
      assert x.dtype == y.dtype and np.array_equal(x, y), (step, name)
    assert a.images.sharding.is_equivalent_to(b.images.sharding, 4)


@pytest.mark.parametrize('num_devices', [1, 8])
@pytest.mark.parametrize('start_step', [0, 3, 10])
def test_device_resident_batches_are_bit_identical_to_before(num_devices,
                                                             start_step):
  mesh = parallel.create_mesh(num_devices)
  train_input = input_pipeline.DeviceResidentInput(
    _split(), PREPROCESSING, batch_size=BATCH, mesh=mesh)
  rng = jax.random.key(5)
  # 12 steps: across two epoch boundaries, and a resume mid-epoch.
  _assert_same(train_input.batches(start_step, rng),
               _previous_device_batches(train_input, start_step, rng), 12)


@pytest.mark.parametrize('start_step', [0, 7])
def test_host_fed_batches_are_bit_identical_to_before(start_step):
  mesh = parallel.create_mesh(8)
  split = _split()
  train_input = input_pipeline.HostFedInput(
    split, PREPROCESSING, batch_size=BATCH, mesh=mesh)
  rng = jax.random.key(6)
  _assert_same(train_input.batches(start_step, rng),
               _previous_host_batches(train_input, split, start_step, rng), 9)


def test_device_resident_input_does_no_eager_work_per_step(monkeypatch):
  mesh = parallel.create_mesh(8)
  train_input = input_pipeline.DeviceResidentInput(
    _split(), PREPROCESSING, batch_size=BATCH, mesh=mesh)
  batches = train_input.batches(0, jax.random.key(0))
  next(batches)  # traces and compiles the batch program
  calls = []
  for name in ('fold_in', 'split'):
    real = getattr(jax.random, name)
    monkeypatch.setattr(
      jax.random, name,
      lambda *a, _real=real, _name=name, **k: calls.append(_name)
      or _real(*a, **k),
    )
  monkeypatch.setattr(jax, 'device_put', lambda *a, **k: calls.append(
    'device_put'))
  for _ in range(3):  # inside the epoch: one cached program per step
    next(batches)
  assert calls == []
