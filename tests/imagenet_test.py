"""ImageNet through the real TFDS `imagenet2012` builder and the streaming
pipeline, on a few JPEGs packed in the layout of the two ILSVRC2012 tars.

The train tar holds one tar per synset (``n01440764.tar``) of JPEGs; the
validation tar holds ``ILSVRC2012_val_%08d.JPEG``, labelled by TFDS's
packaged validation_labels.txt in sorted-name order.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mhkd_jax.data import datasets, fixtures, streaming

SYNSETS = ('n01440764', 'n01443537')  # labels 0 and 1 in TFDS's labels.txt
SIZES = ((300, 200), (180, 260), (500, 375))
# The first five lines of TFDS's imagenet2012 validation_labels.txt.
VAL_SYNSETS = ('n01751748', 'n09193705', 'n02105855', 'n04263257',
               'n03125729')


@pytest.fixture(scope='module')
def imagenet_dir(tmp_path_factory):
  manual = str(tmp_path_factory.mktemp('manual'))
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  fixtures.write_imagenet_tars(manual, SYNSETS, SIZES, len(VAL_SYNSETS))
  builder = datasets.prepare('imagenet2012', data_dir, manual_dir=manual)
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  return data_dir


def test_prepared_with_the_tfds_builder(imagenet_dir):
  builder = datasets.create_builder('imagenet2012', imagenet_dir)
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert splits == {'train': 6, 'validation': 5}


def test_streamed_train_and_eval_batches(imagenet_dir):
  info = datasets.dataset_info('imagenet2012')
  names = tfds.features.ClassLabel(
    names_file=tfds.core.tfds_path('datasets/imagenet2012/labels.txt'))
  train = streaming.open_source(info, 'train', imagenet_dir)
  transform = streaming.ExampleTransform(
    image_shape=info.image_shape, crop='inception', flip=True)
  batch = streaming.train_dataset(
    train, transform, batch_size=6, rows=np.arange(6), seeds=(1, 2))[0]
  assert batch['images'].shape == (6, 224, 224, 3)
  assert batch['images'].dtype == np.uint8
  assert sorted(batch['labels'].tolist()) == sorted(
    [names.str2int(s) for s in SYNSETS] * len(SIZES))
  assert sorted(batch['indices'].tolist()) == list(range(6))

  val = streaming.open_source(info, 'validation', imagenet_dir)
  batches = list(streaming.eval_dataset(
    val, transform, batch_size=4, rows=np.arange(4)))
  labels = np.concatenate([b['labels'][b['mask']] for b in batches])
  assert sorted(labels.tolist()) == sorted(
    names.str2int(s) for s in VAL_SYNSETS)
  assert sum(b['mask'].sum() for b in batches) == 5
  # Eval is deterministic: resize 256 + centre 224 of each image.
  again = streaming.eval_dataset(
    val, transform, batch_size=4, rows=np.arange(4))[0]
  np.testing.assert_array_equal(again['images'], batches[0]['images'])
  # Gradient images: the centre crop keeps the middle of the ramps.
  centre = batches[0]['images'][:, 110:114, 110:114, :2].astype(float)
  assert np.all(np.abs(centre.mean(axis=(1, 2)) - 128) < 20)


def test_device_pipelines_are_refused_for_imagenet():
  from mhkd_jax.configs import imagenet_resnet34_resnet18 as imagenet  # noqa
  from mhkd_jax.run import errors, validation  # noqa: PLC0415

  config = imagenet.get_config('ce')
  for pipeline in ('device', 'host'):
    config.data.pipeline = pipeline
    with pytest.raises(errors.ConfigError, match="pipeline='stream'"):
      validation.validate(config)
  config.data.pipeline = 'stream'
  validation.validate(config)


def test_unprepared_imagenet_stops_before_compiling(tmp_path, monkeypatch):
  from mhkd_jax import steps, train  # noqa: PLC0415
  from mhkd_jax.configs import imagenet_resnet34_resnet18 as imagenet  # noqa

  def no_compiling(**kwargs):
    raise AssertionError('compiled a step for an unprepared data set')

  monkeypatch.setattr(steps, 'create_train_step', no_compiling)
  config = imagenet.get_config('ce')
  config.data.data_dir = str(tmp_path / 'empty')
  config.batch_size = config.eval_batch_size = 8
  with pytest.raises(datasets.DatasetNotPreparedError) as e:
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  message = str(e.value)
  assert ('python -m mhkd_jax.data.prepare --dataset=imagenet2012 '
          f'--data_dir={tmp_path / "empty"} --manual_dir=DIR') in message
  assert 'ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar' in message
