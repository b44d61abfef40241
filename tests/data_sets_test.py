"""Tiny-ImageNet, SVHN and ImageNet: builders, preparation, configs.

Nothing is downloaded: Tiny-ImageNet is built by the real builder from a
small zip in the original layout that the test writes; SVHN is served by
``tfds.testing.mock_data``; ImageNet's manual files are only checked.
"""

import io
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mhkd_jax.data import datasets, streaming

WNIDS = ('n01443537', 'n01629819', 'n01641577')
TRAIN_PER_CLASS = 4
VAL = 5


def _jpeg(seed, mode='RGB'):
  rng = np.random.default_rng(seed)
  shape = (64, 64, 3) if mode == 'RGB' else (64, 64)
  out = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, shape, np.uint8)).save(
    out, format='JPEG'
  )
  return out.getvalue()


def write_tiny_imagenet_zip(directory):
  """A tiny-imagenet-200.zip with the original layout, a few images.

  One training image per class is grayscale, as some real ones are.
  Returns {file name: (label, jpeg bytes)}.
  """
  root = 'tiny-imagenet-200'
  files = {}
  path = os.path.join(directory, 'tiny-imagenet-200.zip')
  with zipfile.ZipFile(path, 'w') as z:
    # wnids.txt is not sorted in the original; labels are by sorted wnid.
    z.writestr(f'{root}/wnids.txt', '\n'.join(WNIDS[::-1]) + '\n')
    z.writestr(f'{root}/words.txt', '')
    for label, wnid in enumerate(WNIDS):
      z.writestr(f'{root}/train/{wnid}/{wnid}_boxes.txt', '')
      for i in range(TRAIN_PER_CLASS):
        name = f'{wnid}_{i}.JPEG'
        data = _jpeg(label * 100 + i, 'L' if i == 0 else 'RGB')
        z.writestr(f'{root}/train/{wnid}/images/{name}', data)
        files[name] = (label, data)
    lines = []
    for i in range(VAL):
      name = f'val_{i}.JPEG'
      label = i % len(WNIDS)
      data = _jpeg(1000 + i)
      z.writestr(f'{root}/val/images/{name}', data)
      lines.append(f'{name}\t{WNIDS[label]}\t0\t0\t63\t63')
      files[name] = (label, data)
    z.writestr(f'{root}/val/val_annotations.txt', '\n'.join(lines) + '\n')
    z.writestr(f'{root}/test/images/test_0.JPEG', _jpeg(5000))
  return files


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  manual = str(tmp_path_factory.mktemp('manual'))
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  files = write_tiny_imagenet_zip(manual)
  builder = datasets.prepare('tiny_imagenet', data_dir, manual_dir=manual)
  return builder, files, data_dir


def test_tiny_imagenet_builder_reads_the_zip(tiny):
  builder, files, data_dir = tiny
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert splits == {'train': TRAIN_PER_CLASS * len(WNIDS), 'validation': VAL}
  source = builder.as_data_source(
    split='train', decoders={'image': tfds.decode.SkipDecoding()}
  )
  for record in source:
    label, data = files[record['file_name'].decode()]
    assert record['label'] == label
    assert record['image'] == data  # stored as is, not re-encoded


def test_tiny_imagenet_streams_and_loads_as_64x64_rgb(tiny):
  _, files, data_dir = tiny
  info = datasets.dataset_info('tiny_imagenet')
  source = streaming.open_source(info, 'validation', data_dir)
  batch = streaming.eval_dataset(
    source, streaming.ExampleTransform(image_shape=info.image_shape),
    batch_size=8, rows=np.arange(8),
  )[0]
  assert batch['images'].shape == (8, 64, 64, 3)
  assert batch['mask'].tolist() == [True] * VAL + [False] * 3
  split = datasets.load_split('tiny_imagenet', 'train', data_dir=data_dir)
  assert split.images.shape == (TRAIN_PER_CLASS * len(WNIDS), 64, 64, 3)
  assert sorted(np.bincount(split.labels).tolist()) == [TRAIN_PER_CLASS] * 3
  # A grayscale JPEG comes back with three equal channels.
  gray = [i for i, im in enumerate(split.images)
          if (im[..., 0] == im[..., 1]).all() and (im[..., 1] == im[..., 2]
                                                    ).all()]
  assert len(gray) == len(WNIDS)


def test_manual_dir_without_the_files_names_them(tmp_path):
  with pytest.raises(datasets.ManualFilesMissingError) as e:
    datasets.prepare('tiny_imagenet', str(tmp_path), manual_dir=str(tmp_path))
  assert 'tiny-imagenet-200.zip' in str(e.value)
  (tmp_path / 'ILSVRC2012_img_val.tar').write_bytes(b'')
  with pytest.raises(datasets.ManualFilesMissingError) as e:
    datasets.check_manual_dir('imagenet2012', str(tmp_path))
  message = str(e.value)
  assert 'ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar' in message
  assert message.endswith('missing: ILSVRC2012_img_train.tar.')
  with pytest.raises(datasets.ManualFilesMissingError,
                     match='pass --manual_dir=DIR, a directory holding '
                     'tiny-imagenet-200.zip'):
    datasets.check_manual_dir('tiny_imagenet', None)


def test_prepare_cli_exits_non_zero_naming_the_imagenet_tars(tmp_path):
  result = subprocess.run(
    [sys.executable, '-m', 'mhkd_jax.data.prepare', '--dataset=imagenet2012',
     f'--manual_dir={tmp_path}', f'--data_dir={tmp_path}'],
    capture_output=True, text=True, timeout=120,
    cwd=os.path.dirname(os.path.dirname(__file__)),
  )
  assert result.returncode != 0
  assert 'ILSVRC2012_img_train.tar' in result.stderr
  assert 'ILSVRC2012_img_val.tar' in result.stderr


def test_svhn_loads_through_mock_data(tmp_path):
  info = datasets.dataset_info('svhn_cropped')
  with tfds.testing.mock_data(num_examples=12):
    split = datasets.load_split('svhn_cropped', 'train',
                                data_dir=str(tmp_path))
  assert split.images.shape == (12, 32, 32, 3)
  assert split.images.dtype == np.uint8
  assert 0 <= split.labels.min() and split.labels.max() < info.num_classes
  assert not info.random_flip  # digits are not mirror-symmetric
