"""SVHN (``svhn_cropped``, 73,257 train / 26,032 test digits, 32x32),
resnet32x4 -> resnet8x4 with RepDistiller's CIFAR recipe (240 epochs,
batch 64, SGD 0.05, x0.1 after 150/180/210); no flips (digits are not
mirror-symmetric), random crop with padding 4; device-resident input.

  python -m mhkd_jax.data.prepare --dataset=svhn_cropped   # needs internet
  C=configs/svhn_resnet32x4_resnet8x4.py
  python -m mhkd_jax.main --config=$C:teacher \
      --workdir=runs/svhn_cropped/resnet32x4
  python -m mhkd_jax.main --config=$C:kd \
      --workdir=runs/svhn_cropped/resnet32x4-resnet8x4/kd

The argument is ``teacher`` or any method; workdirs follow
``configs/distillation.py``.
"""

from mhkd_jax.configs import distillation

METHODS = distillation.runs()


def get_config(run: str = 'kd'):
  return distillation.distillation_config(
    data='svhn_cropped', teacher='resnet32x4', student='resnet8x4', run=run
  )
