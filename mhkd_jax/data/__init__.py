"""Input pipelines: whole splits into numpy, augmentation inside the step.

`load_datasets` / `load_split` read a prepared TFDS data set into host memory
(uint8 [N, 32, 32, 3] + int32 labels); `augment` holds the pure-JAX epoch
permutation, crop/flip and normalisation that the jitted step applies to the
device-resident arrays. `python -m mhkd_jax.data.prepare` prepares a data set.
"""

from mhkd_jax.data.augment import epoch_permutation
from mhkd_jax.data.augment import normalize
from mhkd_jax.data.augment import random_crop_flip
from mhkd_jax.data.datasets import ArraySplit
from mhkd_jax.data.datasets import DatasetInfo
from mhkd_jax.data.datasets import DatasetNotPreparedError
from mhkd_jax.data.datasets import dataset_info
from mhkd_jax.data.datasets import dataset_names
from mhkd_jax.data.datasets import load_datasets
from mhkd_jax.data.datasets import load_split
from mhkd_jax.data.datasets import prepare_command

__all__ = [
  'ArraySplit',
  'DatasetInfo',
  'DatasetNotPreparedError',
  'dataset_info',
  'dataset_names',
  'epoch_permutation',
  'load_datasets',
  'load_split',
  'normalize',
  'prepare_command',
  'random_crop_flip',
]
