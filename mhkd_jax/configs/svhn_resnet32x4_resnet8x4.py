"""SVHN (``svhn_cropped``, 73,257 train / 26,032 test digits, 32x32),
resnet32x4 -> resnet8x4 with RepDistiller's CIFAR recipe (240 epochs,
batch 64, SGD 0.05, x0.1 after 150/180/210); no flips (digits are not
mirror-symmetric), random crop with padding 4; device-resident input.

  python -m mhkd_jax.data.prepare --dataset=svhn_cropped   # needs internet
  C=configs/svhn_resnet32x4_resnet8x4.py
  python -m mhkd_jax.main --config=$C:teacher --workdir=runs/svhn/resnet32x4
  python -m mhkd_jax.main --config=$C:kd --workdir=runs/svhn/resnet8x4/kd

METHOD: ``teacher`` or any of ``configs/cifar100.py``'s.
"""

from mhkd_jax.configs import small_datasets

METHODS = small_datasets.METHODS


def get_config(method: str = 'kd'):
  return small_datasets.get_config('svhn_cropped', method, 'runs/svhn')
