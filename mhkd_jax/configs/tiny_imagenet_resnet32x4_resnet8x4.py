"""Tiny-ImageNet-200 (100k train / 10k validation, 64x64), resnet32x4 ->
resnet8x4 with RepDistiller's CIFAR recipe (240 epochs, batch 64, SGD
0.05, x0.1 after 150/180/210); random crop 64 with padding 8 + flip. The
CIFAR networks end in a global pool, so 64x64 inputs need no change.

  # tiny-imagenet-200.zip (cs231n.stanford.edu) in DIR:
  python -m mhkd_jax.data.prepare --dataset=tiny_imagenet --manual_dir=DIR
  C=configs/tiny_imagenet_resnet32x4_resnet8x4.py
  python -m mhkd_jax.main --config=$C:teacher \
      --workdir=runs/tiny_imagenet/resnet32x4
  python -m mhkd_jax.main --config=$C:kd \
      --workdir=runs/tiny_imagenet/resnet32x4-resnet8x4/kd

The split (1.2 GB as uint8) stays on the accelerator by default;
``--config.data.pipeline=stream`` streams it instead. The argument is
``teacher`` or any method; workdirs follow ``configs/distillation.py``.
"""

from mhkd_jax.configs import distillation

METHODS = distillation.runs()


def get_config(run: str = 'kd'):
  config = distillation.distillation_config(
    data='tiny_imagenet', teacher='resnet32x4', student='resnet8x4', run=run
  )
  config.data.eval_split = 'validation'
  config.data.crop_padding = 8
  return config
