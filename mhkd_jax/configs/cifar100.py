"""The CRD benchmark on CIFAR-100: every pair of its table x every method.

  python -m mhkd_jax.main --config=configs/cifar100.py:PAIR,METHOD \
      --workdir=runs/cifar100/PAIR/METHOD

``PAIR,METHOD,ls`` is the logit-standardization run of ``kd``, ``dkd``
(or ``mhkd``) with the LS code's per-pair temperature and weight
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
its defaults (RepDistiller's scripts; DKD: mdistiller's, beta per pair).
docs/benchmark.md has the recipe and the published numbers with their
sources.

Workdirs follow ``configs/distillation.py``: teachers are read from
``runs/cifar100/<teacher>`` (train them with the teacher config, or import
RepDistiller's with ``python -m mhkd_jax.interop.repdistiller``), MHKD's
teacher heads from ``runs/cifar100/<teacher>_heads`` (the
``fit_teacher_heads`` run of any pair with that teacher); override with
``--config.teacher.init``. ``PUBLISHED`` holds each cell's published top-1
(last epoch; RepDistiller's README for the CRD table, CRD+KD from
giakoumoglou/distillers, mdistiller's README for DKD and KD+DOT, where
mdistiller reports the best epoch), keyed ``(PAIR,
METHOD)`` (and ``(TEACHER, 'teacher')``), None where the literature
reports none.

  python -m mhkd_jax.data.prepare --dataset=cifar100      # once
  C=configs/cifar100.py
  python -m mhkd_jax.main --config=$C:resnet32x4 \
      --workdir=runs/cifar100/resnet32x4
  python -m mhkd_jax.main --config=$C:resnet32x4-resnet8x4,crd \
      --workdir=runs/cifar100/resnet32x4-resnet8x4/crd
"""

from mhkd_jax.configs import distillation
from mhkd_jax.run import errors

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
}
LS_METHODS = ('kd', 'dkd', 'mhkd')
# The LS README's CIFAR-100 numbers (its best epoch, as mdistiller's
# trainer logs), keyed (PAIR, METHOD) for the LS runs of the pairs here.
_LS_PUBLISHED = {
  'kd': {('resnet32x4', 'resnet8x4'): 76.62, ('vgg13', 'vgg8'): 74.36,
         ('wrn_40_2', 'wrn_40_1'): 74.37, ('wrn_40_2', 'wrn_16_2'): 76.11,
         ('resnet56', 'resnet20'): 71.43, ('resnet110', 'resnet32'): 74.17,
         ('resnet110', 'resnet20'): 71.48, ('resnet32x4', 'ShuffleV2'): 75.56,
         ('vgg13', 'MobileNetV2'): 68.61, ('ResNet50', 'MobileNetV2'): 69.02},
  'dkd': {('resnet32x4', 'resnet8x4'): 77.01, ('vgg13', 'vgg8'): 74.81,
          ('wrn_40_2', 'wrn_40_1'): 74.89, ('wrn_40_2', 'wrn_16_2'): 76.39,
          ('resnet56', 'resnet20'): 72.32, ('resnet110', 'resnet32'): 74.29,
          ('resnet110', 'resnet20'): 71.85,
          ('resnet32x4', 'ShuffleV2'): 77.37,
          ('vgg13', 'MobileNetV2'): 69.98,
          ('ResNet50', 'MobileNetV2'): 70.45},
}
PUBLISHED_LS = {
  (f'{t}-{s}', method): column.get((t, s))
  for method, column in _LS_PUBLISHED.items() for t, s in PAIRS
}


def _column(*values):
  return dict(zip(PAIRS, values))


# Published top-1 (%), per pair, for the methods the references report.
_TABLE = {
  'teacher': _column(75.61, 75.61, 72.34, 74.31, 74.31, 79.42, 74.64,
                     74.64, 79.34, 79.34, 79.42, 79.42, 75.61),
  'ce': _column(73.26, 71.98, 69.06, 69.06, 71.14, 72.50, 70.36, 64.60,
                64.60, 70.36, 70.50, 71.82, 70.50),
  'kd': _column(74.92, 73.54, 70.66, 70.67, 73.08, 73.33, 72.98, 67.37,
                67.35, 73.81, 74.07, 74.45, 74.83),
  'fitnet': _column(73.58, 72.24, 69.21, 68.99, 71.06, 73.50, 71.02, 64.14,
                    63.16, 70.69, 73.59, 73.54, 73.73),
  'at': _column(74.08, 72.77, 70.55, 70.22, 72.31, 73.44, 71.43, 59.40,
                58.58, 71.84, 71.73, 72.73, 73.32),
  'sp': _column(73.83, 72.43, 69.67, 70.04, 72.69, 72.94, 72.68, 66.30,
                68.08, 73.34, 73.48, 74.56, 74.52),
  'cc': _column(73.56, 72.21, 69.63, 69.48, 71.48, 72.97, 70.71, 64.86,
                65.43, 70.25, 71.14, 71.29, 71.38),
  'vid': _column(74.11, 73.30, 70.38, 70.16, 72.61, 73.09, 71.23, 65.56,
                 67.57, 70.30, 73.38, 73.40, 73.61),
  'rkd': _column(73.35, 72.22, 69.61, 69.25, 71.82, 71.90, 71.48, 64.52,
                 64.43, 71.50, 72.28, 73.21, 72.21),
  'pkt': _column(74.54, 73.45, 70.34, 70.25, 72.61, 73.64, 72.88, 67.13,
                 66.52, 73.01, 74.10, 74.69, 73.89),
  'ab': _column(72.50, 72.38, 69.47, 69.53, 70.98, 73.17, 70.94, 66.06,
                67.20, 70.65, 73.55, 74.31, 73.34),
  'ft': _column(73.25, 71.59, 69.84, 70.22, 72.37, 72.86, 70.58, 61.78,
                60.99, 70.29, 71.75, 72.50, 72.03),
  # RepDistiller reports FSP for same-type pairs only (N/A for wrn-40-1).
  'fsp': _column(72.91, None, 69.95, 70.11, 71.89, 72.62, 70.23, None,
                 None, None, None, None, None),
  'nst': _column(73.68, 72.24, 69.60, 69.53, 71.96, 73.30, 71.53, 58.16,
                 64.96, 71.28, 74.12, 74.68, 74.89),
  'crd': _column(75.48, 74.14, 71.16, 71.46, 73.48, 75.51, 73.94, 69.73,
                 69.11, 74.30, 75.11, 75.65, 76.05),
  'crd_kd': _column(75.64, 74.38, 71.63, 71.56, 73.75, 75.46, 74.29, 69.94,
                    69.54, 74.58, 75.12, 76.05, 76.27),
  'dkd': _column(76.23, 74.81, 71.97, None, 74.11, 76.32, 74.68, 69.71,
                 70.35, None, 76.45, 77.07, 76.70),
}
# hunto/DIST_KD's README (mean of its runs) for the pairs it shares.
_TABLE['dist'] = {
  ('wrn_40_2', 'wrn_40_1'): 74.43, ('resnet56', 'resnet20'): 71.75,
  ('resnet32x4', 'resnet8x4'): 76.31, ('ResNet50', 'MobileNetV2'): 68.66,
  ('resnet32x4', 'ShuffleV1'): 76.34, ('resnet32x4', 'ShuffleV2'): 77.35,
}
# The LS README's CTKD+Ours (ctkd's default has LS on, as its runs).
_TABLE['ctkd'] = {
  ('resnet32x4', 'resnet8x4'): 76.67, ('vgg13', 'vgg8'): 74.47,
  ('wrn_40_2', 'wrn_40_1'): 74.58, ('wrn_40_2', 'wrn_16_2'): 76.08,
  ('resnet56', 'resnet20'): 71.34, ('resnet110', 'resnet32'): 74.01,
  ('resnet110', 'resnet20'): 71.39, ('resnet32x4', 'ShuffleV2'): 76.18,
  ('vgg13', 'MobileNetV2'): 68.98, ('ResNet50', 'MobileNetV2'): 69.36,
}
PUBLISHED = {
  (f'{t}-{s}', method): _TABLE.get(method, {}).get((t, s))
  for t, s in PAIRS for method in METHODS
}
# KD trained with DOT (mdistiller's README; its trainer reports the best
# epoch's top-1), for the pairs of mdistiller's configs/cifar100/dot/.
DOT_PUBLISHED = {
  ('resnet32x4', 'resnet8x4'): 75.12, ('vgg13', 'vgg8'): 73.77,
  ('resnet32x4', 'ShuffleV2'): 75.55,
}
PUBLISHED.update({(f'{t}-{s}', 'kd' + distillation.DOT_SUFFIX): v
                  for (t, s), v in DOT_PUBLISHED.items()})
# Which epoch each source's numbers are: RepDistiller's README reports
# the last epoch (its train_student.py); mdistiller's trainer, and the LS
# and CTKD code built on it, report the best. Methods not listed (CRD+KD,
# DIST) come from READMEs that do not say.
LAST_EPOCH_METHODS = ('teacher', 'ce', 'kd', 'fitnet', 'at', 'sp', 'cc',
                      'vid', 'rkd', 'pkt', 'ab', 'ft', 'fsp', 'nst', 'crd')
BEST_EPOCH_METHODS = ('dkd', 'ctkd', 'kd' + distillation.DOT_SUFFIX)


def published_epoch(method: str) -> str | None:
  """'last', 'best' or None (unstated) for a method's published cells."""
  if method in LAST_EPOCH_METHODS:
    return 'last'
  return 'best' if method in BEST_EPOCH_METHODS else None


# mdistiller's DOT delta (configs/cifar100/dot/*.yaml: 0.075 for all three
# pairs; the rate is RepDistiller's per student, as here).
DOT_DELTA = 0.075
PUBLISHED.update({(t, 'teacher'): _TABLE['teacher'][pair]
                  for pair in PAIRS for t in [pair[0]]})


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
  else:  # kd; mhkd (no source) takes KD's reading on its KD terms
    setattr(section, 'w_kd', weight)


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
  if ls:
    _logit_standardization(config, method, (teacher, student))
  config.optimizer.dot_delta = DOT_DELTA
  return config
