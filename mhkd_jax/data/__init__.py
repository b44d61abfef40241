"""Input pipelines: data sets, and the inputs that feed the train step.

`load_datasets` / `load_split` read a prepared TFDS data set into host memory
(uint8 [N, H, W, C] + int32 labels); `inputs` turns splits into `Batch`es
(`create_inputs`: device-resident or host-fed); `augment` holds the pure-JAX
epoch permutation, crop/flip and normalisation they apply on the device.
`python -m mhkd_jax.data.prepare` prepares a data set.
"""

from mhkd_jax.data.augment import epoch_permutation, normalize, random_crop_flip
from mhkd_jax.data.datasets import (
  ArraySplit,
  DatasetInfo,
  DatasetNotPreparedError,
  dataset_info,
  dataset_names,
  load_datasets,
  load_split,
  prepare_command,
)
from mhkd_jax.data.input_pipeline import Batch, create_inputs

__all__ = [
  'ArraySplit',
  'Batch',
  'DatasetInfo',
  'DatasetNotPreparedError',
  'create_inputs',
  'dataset_info',
  'dataset_names',
  'epoch_permutation',
  'load_datasets',
  'load_split',
  'normalize',
  'prepare_command',
  'random_crop_flip',
]
