"""TFDS builder for Tiny-ImageNet-200, from the original zip.

Tiny-ImageNet (200 classes, 500 train and 50 validation 64x64 images each)
is distributed as ``tiny-imagenet-200.zip``; TFDS has no builder for it, so
this one reads the zip from the manual directory (nothing is downloaded)
and stores each JPEG as it is, without re-encoding. The test split has no
labels and is left out. Class ids are the sorted wnids of ``wnids.txt``,
so labels are the same on every machine.

The zip's layout::

  tiny-imagenet-200/wnids.txt
  tiny-imagenet-200/train/<wnid>/images/<wnid>_<i>.JPEG
  tiny-imagenet-200/val/val_annotations.txt   # file<TAB>wnid<TAB>box...
  tiny-imagenet-200/val/images/val_<i>.JPEG

About 2% of the images are grayscale JPEGs; the readers expand them to
three channels.
"""

from __future__ import annotations

import os
import zipfile

import tensorflow_datasets as tfds

ZIP_NAME = 'tiny-imagenet-200.zip'
_ROOT = 'tiny-imagenet-200'
NUM_CLASSES = 200


def read_wnids(archive: zipfile.ZipFile) -> list[str]:
  """The 200 wnids, sorted: label i is the i-th."""
  text = archive.read(f'{_ROOT}/wnids.txt').decode()
  return sorted(line.strip() for line in text.splitlines() if line.strip())


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
  """Tiny-ImageNet-200 from the manually downloaded zip."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'train and validation of tiny-imagenet-200.zip.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    f'Download {ZIP_NAME} (http://cs231n.stanford.edu/{ZIP_NAME}) into '
    'the manual directory (--manual_dir).'
  )

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description='Tiny-ImageNet-200: 64x64 images of 200 ImageNet classes.',
      features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(64, 64, 3),
                                     encoding_format='jpeg'),
        'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        'file_name': tfds.features.Text(),
      }),
      supervised_keys=('image', 'label'),
      homepage='https://www.kaggle.com/c/tiny-imagenet',
    )

  def _split_generators(self, dl_manager):
    path = os.path.join(dl_manager.manual_dir, ZIP_NAME)
    if not os.path.exists(path):
      raise FileNotFoundError(
        f'{path} not found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}'
      )
    return {
      'train': self._generate_examples(path, 'train'),
      'validation': self._generate_examples(path, 'val'),
    }

  def _generate_examples(self, path, split):
    with zipfile.ZipFile(path) as archive:
      labels = {w: i for i, w in enumerate(read_wnids(archive))}
      if split == 'train':
        items = [
          (name, name.split('/')[2]) for name in archive.namelist()
          if name.startswith(f'{_ROOT}/train/') and name.endswith('.JPEG')
        ]
      else:
        text = archive.read(f'{_ROOT}/val/val_annotations.txt').decode()
        items = [
          (f'{_ROOT}/val/images/{fields[0]}', fields[1])
          for fields in (line.split('\t') for line in text.splitlines())
          if len(fields) > 1
        ]
      for name, wnid in sorted(items):
        file_name = os.path.basename(name)
        yield file_name, {
          'image': archive.read(name),
          'label': labels[wnid],
          'file_name': file_name,
        }
