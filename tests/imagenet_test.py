"""ImageNet through the real TFDS `imagenet2012` builder and the streaming
pipeline, on a few JPEGs packed in the layout of the two ILSVRC2012 tars.

The train tar holds one tar per synset (``n01440764.tar``) of JPEGs; the
validation tar holds ``ILSVRC2012_val_%08d.JPEG``, labelled by TFDS's
packaged validation_labels.txt in sorted-name order.
"""

import io
import os
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mhkd_jax.data import datasets, streaming

SYNSETS = ('n01440764', 'n01443537')  # labels 0 and 1 in TFDS's labels.txt
SIZES = ((300, 200), (180, 260), (500, 375))
# The first five lines of TFDS's imagenet2012 validation_labels.txt.
VAL_SYNSETS = ('n01751748', 'n09193705', 'n02105855', 'n04263257',
               'n03125729')


def _jpeg(size, seed):
  rng = np.random.default_rng(seed)
  # Smooth content, so that resampling is not dominated by noise.
  w, h = size
  y, x = np.mgrid[0:h, 0:w]
  image = np.stack([x * 255 // w, y * 255 // h,
                    np.full_like(x, rng.integers(256))], -1).astype(np.uint8)
  out = io.BytesIO()
  Image.fromarray(image).save(out, format='JPEG', quality=90)
  return out.getvalue()


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_imagenet_tars(directory):
  with tarfile.open(os.path.join(directory, 'ILSVRC2012_img_train.tar'),
                    'w') as train:
    for s, synset in enumerate(SYNSETS):
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as t:
        for i, size in enumerate(SIZES):
          _add(t, f'{synset}_{i}.JPEG', _jpeg(size, 10 * s + i))
      _add(train, f'{synset}.tar', inner.getvalue())
  with tarfile.open(os.path.join(directory, 'ILSVRC2012_img_val.tar'),
                    'w') as val:
    for i in range(len(VAL_SYNSETS)):
      _add(val, f'ILSVRC2012_val_{i + 1:08d}.JPEG',
           _jpeg(SIZES[i % len(SIZES)], 100 + i))


@pytest.fixture(scope='module')
def imagenet_dir(tmp_path_factory):
  manual = str(tmp_path_factory.mktemp('manual'))
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  write_imagenet_tars(manual)
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
  # A smooth gradient image: the centre crop keeps the middle of the ramp.
  centre = batches[0]['images'][:, 112, 112, :2].astype(int)
  assert np.all(np.abs(centre - 128) < 20)


def test_device_pipelines_are_refused_for_imagenet():
  from mhkd_jax import errors, parallel  # noqa: PLC0415
  from mhkd_jax.configs import imagenet_resnet34_resnet18 as imagenet  # noqa
  from mhkd_jax.data import inputs  # noqa: PLC0415

  config = imagenet.get_config('ce')
  config.data.pipeline = 'device'
  with pytest.raises(errors.ConfigError, match="pipeline='stream'"):
    inputs.create_inputs(config, parallel.create_mesh())
