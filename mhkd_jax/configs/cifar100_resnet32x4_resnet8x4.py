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
  any other method, as configs/cifar100.py:resnet32x4-resnet8x4,METHOD
  RUN+dot        any of these trained with DOT (kd+dot: mdistiller's KD+DOT,
                 published 75.12, best epoch)

Published numbers are last-epoch top-1 (RepDistiller README); MHKD has no
published number for this pair: the MHKD paper's table is not public.
Prepare the data once (needs the internet):

  python -m mhkd_jax.data.prepare --dataset=cifar100

then, in order (each command resumes if re-run; the workdirs are
``configs/distillation.py``'s, which the teacher paths default to):

  C=configs/cifar100_resnet32x4_resnet8x4.py
  R=runs/cifar100
  python -m mhkd_jax.main --config=$C:teacher --workdir=$R/resnet32x4
  python -m mhkd_jax.main --config=$C:fit_teacher_heads \
      --workdir=$R/resnet32x4_heads
  python -m mhkd_jax.main --config=$C:mhkd \
      --workdir=$R/resnet32x4-resnet8x4/mhkd
  python -m mhkd_jax.main --config=$C:kd --workdir=$R/resnet32x4-resnet8x4/kd

Override the teacher with --config.teacher.init=DIR (e.g. a RepDistiller
teacher imported with ``python -m mhkd_jax.interop.repdistiller``).
"""

from mhkd_jax.configs import cifar100, distillation

# The pair's own MHKD variants, beside every method of the benchmark.
MHKD_VARIANTS = ('mhkd_online', 'mhkd_dih')
RUNS = distillation.runs() + MHKD_VARIANTS


def get_config(run: str = 'mhkd'):
  distillation.check_run(run, RUNS)
  run, with_dot = distillation.split_run(run)
  if run in MHKD_VARIANTS:
    config = cifar100.get_config('resnet32x4-resnet8x4,mhkd')
    config.mhkd.teacher_head_mode = 'online'
    config.teacher.init = distillation.teacher_dir(
      distillation.root(cifar100.DATA), 'resnet32x4'
    )
  elif run == distillation.TEACHER:
    config = cifar100.get_config('resnet32x4')
  else:
    config = cifar100.get_config(f'resnet32x4-resnet8x4,{run}')
  if run == 'mhkd_dih':
    alpha, beta = 0.1, 0.5
    config.mhkd.w_ce = 1 - alpha
    config.mhkd.w_kd = alpha
    config.mhkd.w_head = beta * alpha
    config.mhkd.w_head_ce = (1 - alpha) / alpha
  if with_dot:
    config.optimizer.name = 'dot'
  return config
