"""resnet32x4 -> resnet8x4 on the other small-image data sets of the
distillation literature, with RepDistiller's CIFAR recipe.

Shared by ``svhn_resnet32x4_resnet8x4.py`` and
``tiny_imagenet_resnet32x4_resnet8x4.py``: the argument is ``teacher``
(CE on resnet32x4) or any METHOD of ``configs/cifar100.py``.
"""

from mhkd_jax import errors
from mhkd_jax.configs import cifar100, default

METHODS = cifar100.METHODS + ('teacher',)


def get_config(dataset: str, method: str, runs_dir: str):
  if method not in METHODS:
    raise errors.ConfigError(
      f'Unknown method {method!r}; valid: {", ".join(METHODS)}.'
    )
  config = default.get_config()
  config.data.name = dataset
  if method == 'teacher':
    config.method = 'ce'
    config.model = 'resnet32x4'
    return config
  config.method = method
  config.model = 'resnet8x4'
  if method != 'ce':
    config.teacher.model = 'resnet32x4'
    config.teacher.init = f'{runs_dir}/resnet32x4'
  config.fit_teacher_heads.head = config.mhkd.head = 'dih'
  if method == 'mhkd':
    config.teacher.init = f'{runs_dir}/resnet32x4_heads'
  return config
