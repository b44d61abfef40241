"""The CRD benchmark on CIFAR-100: every pair of its table x every method.

  python -m mhkd_jax.main --config=configs/cifar100.py:PAIR,METHOD \
      --workdir=runs/cifar100/PAIR/METHOD

``PAIR,METHOD,ls`` is the logit-standardization run of ``kd``, ``dkd``,
``mlkd`` (or ``mhkd``) with the LS code's per-pair temperature and weight
(``LS_SETTINGS``).

PAIR is ``teacher-student`` (``resnet32x4-resnet8x4``, ``vgg13-MobileNetV2``,
... the 13 of ``PAIRS``); METHOD is any registered method (``ce``: the
student alone, ``kd``, ``fitnet``, ... ``dkd``, ``fit_teacher_heads``: MHKD
phase 1, ``mhkd``), or ``METHOD+dot``: that method trained with DOT
(mdistiller's distillation-oriented trainer, delta 0.075; mdistiller
reports ``kd+dot`` for resnet32x4-resnet8x4, vgg13-vgg8 and
resnet32x4-ShuffleV2). ``configs/cifar100.py:TEACHER`` trains a teacher.
RepDistiller's recipe throughout: 240 epochs, batch 64, SGD 0.05 (0.01
for MobileNetV2, ShuffleV1 and ShuffleV2 students), momentum 0.9, weight
decay 5e-4, x0.1 after epochs 150, 180, 210; each method's weights are
its defaults (RepDistiller's scripts; DKD: mdistiller's, beta per pair;
ReviewKD: mdistiller's, its weight per pair, ``REVIEWKD_WEIGHT``).
MLKD runs its authors' recipe instead (``MLKD_RECIPES``: 240 to 960
epochs, SGD 0.025 or 0.01; ``PAIR,mlkd,ls`` the LS code's).
docs/benchmark.md has the recipe and the published numbers with their
sources.

Workdirs follow ``configs/distillation.py``: teachers are read from
``runs/cifar100/<teacher>`` (train them with the teacher config, or import
RepDistiller's with ``python -m mhkd_jax.interop.repdistiller``), MHKD's
teacher heads from ``runs/cifar100/<teacher>_heads`` (the
``fit_teacher_heads`` run of any pair with that teacher); override with
``--config.teacher.init``. ``PUBLISHED`` is the published top-1 of the
run each ``(PAIR, METHOD)`` (``METHOD+dot`` too, and ``(TEACHER,
'teacher')``) builds, None where no source reports one; ``PUBLISHED_LS``
the same for the ``,ls`` runs. Both are read from
``mhkd_jax/tools/published.py``, which holds every published number with
its source and the epoch that source reports (RepDistiller: last;
mdistiller and the LS code: best).

  python -m mhkd_jax.data.prepare --dataset=cifar100      # once
  C=configs/cifar100.py
  python -m mhkd_jax.main --config=$C:resnet32x4 \
      --workdir=runs/cifar100/resnet32x4
  python -m mhkd_jax.main --config=$C:resnet32x4-resnet8x4,crd \
      --workdir=runs/cifar100/resnet32x4-resnet8x4/crd
"""

from mhkd_jax import distill
from mhkd_jax.configs import distillation
from mhkd_jax.run import errors
from mhkd_jax.tools import published

DATA = 'cifar100'

# (teacher, student): the CRD table's same- and cross-architecture pairs.
PAIRS = (
  ('wrn_40_2', 'wrn_16_2'), ('wrn_40_2', 'wrn_40_1'),
  ('resnet56', 'resnet20'), ('resnet110', 'resnet20'),
  ('resnet110', 'resnet32'), ('resnet32x4', 'resnet8x4'),
  ('vgg13', 'vgg8'), ('vgg13', 'MobileNetV2'), ('ResNet50', 'MobileNetV2'),
  ('ResNet50', 'vgg8'), ('resnet32x4', 'ShuffleV1'),
  ('resnet32x4', 'ShuffleV2'), ('wrn_40_2', 'ShuffleV1'),
)
METHODS = distillation.methods()
TEACHERS = tuple(sorted({t for t, _ in PAIRS}))
# RepDistiller's train_student.py: 0.01 for these students.
LOW_LR_STUDENTS = ('MobileNetV2', 'ShuffleV1', 'ShuffleV2')
# mdistiller's configs/cifar100/dkd/*.yaml (beta; 8 where it has none).
DKD_BETA = {
  ('resnet56', 'resnet20'): 2.0, ('resnet110', 'resnet32'): 2.0,
  ('vgg13', 'vgg8'): 6.0, ('vgg13', 'MobileNetV2'): 6.0,
  ('wrn_40_2', 'wrn_16_2'): 6.0, ('wrn_40_2', 'wrn_40_1'): 6.0,
}
# ReviewKD's weight: 5 in mdistiller's configs/cifar100/reviewkd.yaml
# (resnet32x4 -> resnet8x4, its only CIFAR-100 config); the other pairs
# from the ReviewKD authors' CIFAR-100/script/reviewKD.sh
# (--kd-loss-weight); 5 for the pairs neither reports.
REVIEWKD_WEIGHT_DEFAULT = 5.0
REVIEWKD_WEIGHT = {
  ('resnet32x4', 'resnet8x4'): 5.0, ('wrn_40_2', 'wrn_16_2'): 5.0,
  ('wrn_40_2', 'wrn_40_1'): 5.0, ('wrn_40_2', 'ShuffleV1'): 5.0,
  ('resnet32x4', 'ShuffleV1'): 5.0, ('resnet32x4', 'ShuffleV2'): 8.0,
  ('resnet56', 'resnet20'): 0.6, ('resnet110', 'resnet32'): 1.0,
}


# The LS code's runs (sunshangquan/logit-standardization-KD, the names of
# its logs: METHOD,TEACHER,STUDENT,BASE_TEMPERATURE,KD_WEIGHT[,DKD BETA]):
# (temperature, weight[, beta]) per pair; the pairs it does not report take
# its command-line defaults (--base-temp 2 --kd-weight 9). KD+LS sets
# kd.temperature and kd.w_kd (w_ce stays 0.1); DKD+LS sets the
# temperature and multiplies alpha and beta by the weight.
LS_DEFAULT = (2.0, 9.0)
LS_SETTINGS = {
  'kd': {
    ('resnet32x4', 'resnet8x4'): (2.0, 9.0), ('vgg13', 'vgg8'): (3.0, 9.0),
    ('wrn_40_2', 'wrn_40_1'): (2.0, 9.0), ('wrn_40_2', 'wrn_16_2'): (2.0, 9.0),
    ('resnet56', 'resnet20'): (2.0, 9.0), ('resnet110', 'resnet32'): (2.0, 9.0),
    ('resnet110', 'resnet20'): (4.0, 12.0),
    ('resnet32x4', 'ShuffleV2'): (2.0, 9.0),
    ('vgg13', 'MobileNetV2'): (3.0, 9.0),
    ('ResNet50', 'MobileNetV2'): (3.0, 1.0),
  },
  'dkd': {
    ('resnet32x4', 'resnet8x4'): (2.0, 9.0, 8.0),
    ('vgg13', 'vgg8'): (2.0, 15.0, 2.0),
    ('wrn_40_2', 'wrn_40_1'): (2.0, 12.0, 2.0),
    ('wrn_40_2', 'wrn_16_2'): (2.0, 12.0, 2.0),
    ('resnet56', 'resnet20'): (3.0, 18.0, 2.0),
    ('resnet110', 'resnet32'): (2.0, 15.0, 2.0),
    ('resnet110', 'resnet20'): (2.0, 15.0, 2.0),
    ('resnet32x4', 'ShuffleV2'): (2.0, 9.0, 8.0),
    ('vgg13', 'MobileNetV2'): (3.0, 9.0, 2.0),
    ('ResNet50', 'MobileNetV2'): (2.0, 15.0, 2.0),
  },
  # MLKD+LS sets mlkd.temperature and mlkd.kd_weight (ce_weight stays 0.1).
  'mlkd': {
    ('resnet32x4', 'resnet8x4'): (2.0, 9.0), ('vgg13', 'vgg8'): (2.0, 6.0),
    ('wrn_40_2', 'wrn_40_1'): (2.0, 9.0), ('wrn_40_2', 'wrn_16_2'): (2.0, 9.0),
    ('resnet110', 'resnet32'): (2.0, 9.0),
    ('resnet110', 'resnet20'): (2.0, 9.0),
    ('resnet32x4', 'ShuffleV2'): (2.0, 6.0),
    ('vgg13', 'MobileNetV2'): (2.0, 6.0),
    ('ResNet50', 'MobileNetV2'): (2.0, 9.0),
  },
}
LS_METHODS = ('kd', 'dkd', 'mlkd', 'mhkd')

# MLKD's recipe, (epochs, learning rate) per pair: its authors' configs
# (Jin-Ying/Multi-Level-Logit-Distillation, configs/cifar100/ours/*.yaml)
# for PAIR,mlkd; the LS code's (configs/cifar100/mlkd/*.yaml) for
# PAIR,mlkd,ls. Batch 64, weight decay 5e-4 as everywhere here; both keep
# the x0.1 steps after epochs 150, 180 and 210 however long the run
# (MLKD_DECAY_EPOCHS). Pairs a source does not list take its rule for the
# student: 0.01 for MobileNetV2 and ShuffleNet students, 0.025 otherwise,
# at its most common length for that rate.
MLKD_DECAY_EPOCHS = (150, 180, 210)
MLKD_RECIPES = {
  ('resnet56', 'resnet20'): (240, 0.025),
  ('resnet110', 'resnet32'): (240, 0.025),
  ('resnet32x4', 'resnet8x4'): (240, 0.025),
  ('vgg13', 'vgg8'): (240, 0.025),
  ('wrn_40_2', 'wrn_16_2'): (240, 0.025),
  ('wrn_40_2', 'wrn_40_1'): (240, 0.025),
  ('vgg13', 'MobileNetV2'): (480, 0.01),
  ('ResNet50', 'MobileNetV2'): (480, 0.01),
  ('wrn_40_2', 'ShuffleV1'): (480, 0.01),
  ('resnet32x4', 'ShuffleV1'): (960, 0.01),
  ('resnet32x4', 'ShuffleV2'): (960, 0.01),
}
MLKD_DEFAULT = {'low_lr': (480, 0.01), 'other': (240, 0.025)}
MLKD_LS_RECIPES = {
  ('resnet56', 'resnet20'): (480, 0.025),
  ('resnet110', 'resnet20'): (480, 0.025),
  ('resnet110', 'resnet32'): (480, 0.025),
  ('resnet32x4', 'resnet8x4'): (480, 0.025),
  ('wrn_40_2', 'wrn_16_2'): (480, 0.025),
  ('wrn_40_2', 'wrn_40_1'): (480, 0.025),
  ('vgg13', 'vgg8'): (480, 0.01),
  ('vgg13', 'MobileNetV2'): (480, 0.01),
  ('ResNet50', 'MobileNetV2'): (480, 0.01),
  ('wrn_40_2', 'ShuffleV1'): (480, 0.01),
  ('resnet32x4', 'ShuffleV1'): (960, 0.01),
  ('resnet32x4', 'ShuffleV2'): (960, 0.01),
}
MLKD_LS_DEFAULT = {'low_lr': (480, 0.01), 'other': (480, 0.025)}


def _published(pair: str, label: str) -> float | None:
  record = published.lookup(DATA, pair, label)
  return None if record is None else record.top1


def _label(method: str) -> str:
  """The results row of the run ``PAIR,METHOD`` builds: '+ls' where the
  method's default has logit standardization on (ctkd, as its runs)."""
  section = distill.method_config_sections().get(method, {})
  return method + ('+ls' if section.get('logit_standardize') else '')


# Published top-1 (%) of the run each (PAIR, METHOD) builds, and of every
# teacher, from mhkd_jax/tools/published.py (which has the sources and the
# epoch each reports); None where the literature reports none.
PUBLISHED = {
  # A 'ce' run is the student alone: its number is the student model's.
  (f'{t}-{s}', method): _published(s if method == 'ce' else f'{t}-{s}',
                                   _label(method))
  for t, s in PAIRS for method in METHODS
}
# KD trained with DOT (mdistiller's README), 'METHOD+dot' runs.
PUBLISHED.update({
  (f'{t}-{s}', method + distillation.DOT_SUFFIX): _published(
    f'{t}-{s}', method + distillation.DOT_SUFFIX)
  for t, s in PAIRS for method in METHODS
  if _published(f'{t}-{s}', method + distillation.DOT_SUFFIX) is not None
})
PUBLISHED.update({(t, 'teacher'): _published(t, 'ce') for t in TEACHERS})
# The LS runs' (PAIR,METHOD,ls) numbers.
PUBLISHED_LS = {
  (f'{t}-{s}', method): _published(f'{t}-{s}', method + '+ls')
  for method in LS_METHODS for t, s in PAIRS
}


# mdistiller's DOT delta (configs/cifar100/dot/*.yaml: 0.075 for all three
# pairs; the rate is RepDistiller's per student, as here).
DOT_DELTA = 0.075


def _parse(arg: str):
  """'resnet32x4-resnet8x4,crd' -> (teacher, student, method, False); a
  trailing ',ls' sets the last to True; a teacher name alone -> (teacher,
  None, 'teacher', False)."""
  if arg in TEACHERS:
    return arg, None, distillation.TEACHER, False
  pair, _, method = arg.partition(',')
  method, _, variant = method.partition(',')
  if variant and (variant != 'ls' or method not in LS_METHODS):
    raise errors.ConfigError(
      f'Unknown run {arg!r}: the only variant is logit standardization, '
      f'PAIR,METHOD,ls with METHOD one of {", ".join(LS_METHODS)}.'
    )
  teacher, _, student = pair.partition('-')
  if (teacher, student) not in PAIRS or (
    distillation.split_run(method)[0] not in METHODS
  ):
    pairs = ', '.join(f'{t}-{s}' for t, s in PAIRS)
    raise errors.ConfigError(
      f'Unknown run {arg!r}: use PAIR,METHOD with PAIR one of {pairs} and '
      f'METHOD one of {", ".join(METHODS)}; or a teacher alone: '
      f'{", ".join(TEACHERS)}. METHOD{distillation.DOT_SUFFIX} trains it '
      'with DOT.'
    )
  return teacher, student, method, variant == 'ls'


def _logit_standardization(config, method, pair) -> None:
  """The LS code's switch, temperature and weight for this pair."""
  section = config[method]
  section.logit_standardize = True
  settings = LS_SETTINGS.get(method, {}).get(pair, LS_DEFAULT)
  temperature, weight = settings[:2]
  section.temperature = temperature
  if method == 'dkd':
    beta = settings[2] if len(settings) > 2 else config.dkd.beta
    config.dkd.alpha *= weight
    config.dkd.beta = beta * weight
  elif method == 'mlkd':
    config.mlkd.kd_weight = weight
  else:  # kd; mhkd (no source) takes KD's reading on its KD terms
    setattr(section, 'w_kd', weight)


def _mlkd_recipe(config, pair, ls: bool) -> None:
  """MLKD's epochs, rate and schedule for this pair (MLKD_RECIPES)."""
  recipes, default = ((MLKD_LS_RECIPES, MLKD_LS_DEFAULT) if ls
                      else (MLKD_RECIPES, MLKD_DEFAULT))
  kind = 'low_lr' if pair[1] in LOW_LR_STUDENTS else 'other'
  epochs, rate = recipes.get(pair, default[kind])
  config.num_epochs = epochs
  config.learning_rate = rate
  config.lr_decay_fractions = tuple(e / epochs for e in MLKD_DECAY_EPOCHS)


def get_config(arg: str = 'resnet32x4-resnet8x4,kd'):
  teacher, student, method, ls = _parse(arg)
  config = distillation.distillation_config(
    data=DATA, teacher=teacher, student=student, run=method
  )
  if method == distillation.TEACHER:
    return config
  if student in LOW_LR_STUDENTS:
    config.learning_rate = 0.01
  config.dkd.beta = DKD_BETA.get((teacher, student), 8.0)
  config.reviewkd.reviewkd_weight = REVIEWKD_WEIGHT.get(
    (teacher, student), REVIEWKD_WEIGHT_DEFAULT)
  if distillation.split_run(method)[0] == 'mlkd':
    _mlkd_recipe(config, (teacher, student), ls)
  if ls:
    _logit_standardization(config, method, (teacher, student))
  config.optimizer.dot_delta = DOT_DELTA
  return config
