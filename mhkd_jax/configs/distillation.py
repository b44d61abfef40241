"""The one builder of a distillation run, shared by every data set's configs.

A run is (data set, teacher, student, method). Its config starts from
``default.py`` and names the data, the student and, for every method that
distils, the teacher's architecture and where its checkpoint is. Every
data set's runs live under one root, ``runs/<data set>`` by default, in one
layout:

  ROOT/<teacher>                     the teacher, trained with CE (run 'teacher')
  ROOT/<teacher>_heads               its fitted MHKD heads (fit_teacher_heads)
  ROOT/<teacher>-<student>/<method>  a student run (<method>+dot with DOT)

``teacher.init`` defaults to the first (the second for MHKD with frozen
teacher heads); ``--config.teacher.init`` points anywhere else, for example
at a RepDistiller teacher imported with ``python -m
mhkd_jax.interop.repdistiller``.
"""

import ml_collections

from mhkd_jax import distill
from mhkd_jax.configs import default
from mhkd_jax.run import errors

# The run that trains a teacher (CE on the teacher's architecture).
TEACHER = 'teacher'
# 'METHOD+dot': that method trained with DOT (mhkd_jax/dot.py).
DOT_SUFFIX = '+dot'


def methods() -> tuple[str, ...]:
  """Every registered method but the preliminary phases of others (``ce``
  is the student alone)."""
  return distill.method_names(phases=False)


def runs() -> tuple[str, ...]:
  """What the argument of a data set's config may name."""
  return (TEACHER, *methods())


def root(data: str) -> str:
  return f'runs/{data}'


def teacher_dir(runs_root: str, teacher: str) -> str:
  return f'{runs_root}/{teacher}'


def teacher_heads_dir(runs_root: str, teacher: str) -> str:
  return f'{runs_root}/{teacher}_heads'


def student_dir(runs_root: str, teacher: str, student: str,
                method: str) -> str:
  return f'{runs_root}/{teacher}-{student}/{method}'


def split_run(run: str) -> tuple[str, bool]:
  """'kd+dot' -> ('kd', True): a method's run with DOT
  (``config.optimizer.name='dot'``, mdistiller's distillation-oriented
  trainer); 'kd' -> ('kd', False)."""
  if run.endswith(DOT_SUFFIX):
    return run[:-len(DOT_SUFFIX)], True
  return run, False


def run_label(method: str, optimizer: str) -> str:
  """The run's name in results tables: the method, '+dot' with DOT."""
  return method + (DOT_SUFFIX if optimizer == 'dot' else '')


def check_run(run: str, valid: tuple[str, ...] | None = None) -> None:
  """A clear error for a run name a config does not know. Any run of a
  valid method may carry the DOT suffix ('kd+dot')."""
  valid = runs() if valid is None else valid
  name, with_dot = split_run(run)
  if name not in valid or (with_dot and name == TEACHER):
    raise errors.ConfigError(
      f'Unknown run {run!r}; valid runs: {", ".join(valid)}.'
    )


def distillation_config(
  *, data: str, teacher: str, student: str, run: str,
  runs_root: str | None = None,
) -> ml_collections.ConfigDict:
  """The config of one run: ``run`` is 'teacher' (CE on ``teacher``) or a
  method, which trains ``student`` (from ``teacher`` unless it is ``ce``);
  'METHOD+dot' trains it with DOT.

  MHKD runs use the 'dih' heads on both networks (the reading of the
  public third-party code, docs/methods.md); their teacher is the
  ``fit_teacher_heads`` run's export.
  """
  check_run(run)
  run, with_dot = split_run(run)
  runs_root = root(data) if runs_root is None else runs_root
  config = default.get_config()
  config.data.name = data
  if with_dot:
    config.optimizer.name = 'dot'
  config.fit_teacher_heads.head = config.mhkd.head = 'dih'
  if run == TEACHER:
    config.method = 'ce'
    config.model = teacher
    return config
  config.method = run
  config.model = student
  if run != 'ce':
    config.teacher.model = teacher
    config.teacher.init = teacher_dir(runs_root, teacher)
  if run == 'mhkd' and config.mhkd.teacher_head_mode == 'pretrain':
    config.teacher.init = teacher_heads_dir(runs_root, teacher)
  return config
