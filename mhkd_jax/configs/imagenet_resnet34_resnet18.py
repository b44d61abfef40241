"""ImageNet, ResNet34 -> ResNet18 (torchvision layout): the ImageNet KD pair.

  C=configs/imagenet_resnet34_resnet18.py
  python -m mhkd_jax.main --config=$C:METHOD \
      --workdir=runs/imagenet/imagenet_resnet34-imagenet_resnet18/METHOD

METHOD is any method (``ce``, ``kd``, ``fitnet``, ``at``, ... ``crd``,
``dkd``, ``fit_teacher_heads``, ``mhkd``) but MLKD (its strong view needs
the device or host input; ImageNet streams) or ``teacher`` (trains
ResNet34 itself); workdirs follow ``configs/distillation.py`` under
``runs/imagenet``. The recipe is torchvision's and the CRD ImageNet run's:
batch 256, 100 epochs, SGD 0.1 momentum 0.9, weight decay 1e-4, x0.1 after
epochs 30, 60, 90; random-resized crop 224 (scale 0.08-1, ratio 3/4-4/3) +
flip for training, resize 256 + centre crop 224 for evaluation, ImageNet
mean/std. KD and DKD (and their ``+dot`` runs) take mdistiller's ImageNet
recipe (``configs/imagenet/r34_r18/{kd,dkd,dot}.yaml``): batch 512 at LR
0.2, and its weights: KD 0.5 CE + 0.5 KD at
T 1; DKD CE 1, alpha 1, beta 0.5, T 1, warm-up 1 epoch. Published top-1
(docs/benchmark.md): teacher 73.31 and student 69.75 (HSAKD
README), KD 71.03 (mdistiller's run), CRD 71.17 (CRD paper), DKD 71.70
(mdistiller). ``METHOD+dot`` trains with DOT at mdistiller's ImageNet
delta 0.09 (``configs/imagenet/r34_r18/dot.yaml``); KD+DOT 71.72
(mdistiller's README, best epoch). ReviewKD takes mdistiller's
``reviewkd.yaml`` (weight 1, warm-up 1 epoch, the student's
pre-activations; batch 256, LR 0.1); 71.61 (the ReviewKD authors' README).

Any run takes another batch with ``METHOD,batch=N``: the rate follows by
linear scaling (0.1 per 256 images, which both recipes share), for example
``kd,batch=256`` is KD at batch 256 and LR 0.1, this config's recipe before
it took mdistiller's.

Data (streamed: config.data.pipeline='stream'; the two tars from
image-net.org in DIR, about 150 GB of array_record written):

  python -m mhkd_jax.data.prepare --dataset=imagenet2012 --manual_dir=DIR

Teacher: torchvision's ResNet34 weights, imported once (torch needed only
for this):

  python -m mhkd_jax.interop.repdistiller --name=imagenet_resnet34 \
      --num_classes=1000 --pth=resnet34-b627a593.pth \
      --workdir=runs/imagenet/imagenet_resnet34

MHKD reads its teacher heads from runs/imagenet/imagenet_resnet34_heads, the
``fit_teacher_heads`` run. Set config.data.num_workers to the cores per
process (docs/datasets.md, "The streaming input").
"""

from mhkd_jax import distill
from mhkd_jax.configs import distillation
from mhkd_jax.run import errors
from mhkd_jax.tools import published

DATA = 'imagenet2012'
RUNS_ROOT = 'runs/imagenet'
# Methods that train on a second, strongly augmented view (MLKD): the
# streaming input makes one view, so they have no ImageNet run here.
STRONG_VIEW_METHODS = tuple(
  m for m in distillation.methods()
  if distill.get_method(m).needs_strong_view
)
METHODS = tuple(r for r in distillation.runs()
                if r not in STRONG_VIEW_METHODS)
TEACHER, STUDENT = 'imagenet_resnet34', 'imagenet_resnet18'


def _published(pair: str, label: str) -> float | None:
  record = published.lookup(DATA, pair, label)
  return None if record is None else record.top1


# Published top-1 per run, from mhkd_jax/tools/published.py (sources and
# epochs there): the teacher, the student alone, and each method that a
# source reports for this pair (KD, CRD, DKD, KD+DOT, DIST, CTKD, ReviewKD).
PUBLISHED = {'teacher': _published(TEACHER, 'ce'),
             'ce': _published(STUDENT, 'ce')}
PUBLISHED.update({
  r.method: _published(f'{TEACHER}-{STUDENT}', r.method)
  for r in published.records(data=DATA, pair=f'{TEACHER}-{STUDENT}')
})


# mdistiller trains these runs at batch 512, LR 0.2; the others follow the
# CRD ImageNet recipe, batch 256, LR 0.1.
MDISTILLER_RECIPE = ('kd', 'dkd')
LR_PER_256 = 0.1


def _parse(run: str) -> tuple[str, int | None]:
  """'kd' -> ('kd', None); 'kd,batch=256' -> ('kd', 256)."""
  run, _, option = run.partition(',')
  if not option:
    return run, None
  key, _, value = option.partition('=')
  if key != 'batch' or not value.isdigit() or int(value) < 1:
    raise errors.ConfigError(
      f'Unknown ImageNet run option {option!r}: the only option is '
      f'batch=N (a positive integer), e.g. {run},batch=256.'
    )
  return run, int(value)


def get_config(run: str = 'kd'):
  run, batch = _parse(run)
  if distillation.split_run(run)[0] in STRONG_VIEW_METHODS:
    raise errors.ConfigError(
      f'No ImageNet run {run!r}: it trains on a weak and a strong view of '
      'every image, which only the device and host inputs make, and '
      'ImageNet streams (data.pipeline=\'stream\'). Its CIFAR-100 runs '
      'are configs/cifar100.py:PAIR,' + run + '.'
    )
  config = distillation.distillation_config(
    data=DATA, teacher=TEACHER, student=STUDENT,
    run=run, runs_root=RUNS_ROOT,
  )
  config.data.train_split = 'train'
  config.data.eval_split = 'validation'
  config.data.pipeline = 'stream'
  config.data.num_workers = 8
  config.data.num_threads = 4
  config.data.prefetch_batches = 2
  if batch is None:
    method = distillation.split_run(run)[0]
    batch = 512 if method in MDISTILLER_RECIPE else 256
  config.batch_size = batch
  config.learning_rate = LR_PER_256 * batch / 256
  config.eval_batch_size = 256
  config.num_epochs = 100
  config.momentum = 0.9
  config.weight_decay = 1e-4
  config.lr_decay_fractions = (0.3, 0.6, 0.9)
  config.lr_decay_rate = 0.1
  config.eval_every_epochs = 1
  config.log_every_steps = 100
  config.checkpoint.every_steps = 1000
  # mdistiller's ImageNet KD and DKD (see the module docstring).
  config.kd.temperature, config.kd.w_ce, config.kd.w_kd = 1.0, 0.5, 0.5
  config.dkd.beta, config.dkd.temperature = 0.5, 1.0
  config.dkd.warmup_epochs = 1
  # mdistiller's configs/imagenet/r34_r18/reviewkd.yaml (its batch 256
  # and rate 0.1 are this recipe's): weight 1, warm-up 1 epoch, the
  # student's pre-activations.
  config.reviewkd.reviewkd_weight = 1.0
  config.reviewkd.warmup_epochs = 1
  config.reviewkd.student_preact = True
  # Runs 'METHOD+dot': mdistiller's configs/imagenet/r34_r18/dot.yaml.
  config.optimizer.dot_delta = 0.09
  return config
