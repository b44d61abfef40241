"""CIFAR-100, resnet32x4 -> resnet8x4: the CRD benchmark's headline pair.

The argument picks the run (RepDistiller's recipe: 240 epochs, batch 64,
SGD 0.05 momentum 0.9, wd 5e-4, x0.1 after epochs 150/180/210):

  teacher        CE on resnet32x4                  (published: 79.42)
  ce             vanilla resnet8x4                 (published: 72.50)
  kd             0.1 CE + 0.9 KD, T 4              (published: 73.33)
  fit_teacher_heads  MHKD phase 1: 'dih' heads on the frozen teacher's
                 stage1 and stage2, CE only
  mhkd           MHKD phase 2, teacher heads frozen (project default)
  mhkd_online    MHKD with teacher heads trained online
  mhkd_dih       the DIH-repo reading: online heads, alpha 0.1, beta 0.5
                 (w_ce 0.9, w_kd 0.1, w_head 0.05, w_head_ce 9)

Published numbers are last-epoch top-1 (RepDistiller README); MHKD has no
published number for this pair: the MHKD paper's table is not public.
Prepare the data once (needs the internet):

  python -m mhkd_jax.data.prepare --dataset=cifar100

then, in order (each command resumes if re-run):

  C=configs/cifar100_resnet32x4_resnet8x4.py
  python -m mhkd_jax.main --config=$C:teacher --workdir=runs/r32x4
  python -m mhkd_jax.main --config=$C:fit_teacher_heads \
      --workdir=runs/r32x4_heads
  python -m mhkd_jax.main --config=$C:mhkd --workdir=runs/r8x4_mhkd
  python -m mhkd_jax.main --config=$C:kd --workdir=runs/r8x4_kd

Default teacher paths follow these workdirs; override with
--config.teacher.init=DIR (e.g. a RepDistiller teacher imported with
``python -m mhkd_jax.interop.repdistiller``).
"""

from mhkd_jax import errors
from mhkd_jax.configs import default

RUNS = (
  'teacher', 'ce', 'kd', 'fit_teacher_heads', 'mhkd', 'mhkd_online',
  'mhkd_dih',
)


def get_config(run: str = 'mhkd'):
  if run not in RUNS:
    raise errors.ConfigError(
      f'Unknown run {run!r}; valid runs: {", ".join(RUNS)}.'
    )
  config = default.get_config()
  config.data.name = 'cifar100'
  config.model = 'resnet8x4'
  config.teacher.model = 'resnet32x4'
  config.teacher.init = 'runs/r32x4'
  config.fit_teacher_heads.head = 'dih'
  config.mhkd.head = 'dih'
  if run == 'teacher':
    config.method = 'ce'
    config.model = 'resnet32x4'
    config.teacher.init = ''
  elif run == 'ce':
    config.method = 'ce'
    config.teacher.init = ''
  elif run == 'kd':
    config.method = 'kd'
  elif run == 'fit_teacher_heads':
    config.method = 'fit_teacher_heads'
  elif run == 'mhkd':
    config.method = 'mhkd'
    config.mhkd.teacher_head_mode = 'pretrain'
    config.teacher.init = 'runs/r32x4_heads'
  elif run in ('mhkd_online', 'mhkd_dih'):
    config.method = 'mhkd'
    config.mhkd.teacher_head_mode = 'online'
  if run == 'mhkd_dih':
    alpha, beta = 0.1, 0.5
    config.mhkd.w_ce = 1 - alpha
    config.mhkd.w_kd = alpha
    config.mhkd.w_head = beta * alpha
    config.mhkd.w_head_ce = (1 - alpha) / alpha
  return config
