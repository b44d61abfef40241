"""``validate(config)``: every impossible value, found before a run starts.

The config flags already refuse unknown keys and values of the wrong type
(``--config.batch_size=abc``). What is left are values of the right type
that cannot work: an unknown method, model or data set name, a batch that
does not split over the devices, zero epochs, decay points out of order, a
non-positive temperature, a negative loss weight. ``validate`` checks the
trainer's keys here and asks the method to check its own section
(``Method.validate_config``), and raises one ``ConfigError`` that lists
every problem, before any data is read or anything compiles.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from mhkd_jax.run import errors


class Checker:
  """Collects the problems of one config; keys are dotted paths."""

  def __init__(self, config):
    self.config = config
    self.problems: list[str] = []

  def value(self, key: str) -> Any:
    node = self.config
    for part in key.split('.'):
      node = node[part]
    return node

  def require(self, ok: bool, key: str, must: str) -> bool:
    """Records ``config.<key>=<value> <must>`` unless ``ok``."""
    if not ok:
      self.problems.append(f'config.{key}={self.value(key)!r} {must}')
    return ok

  def number(self, key: str, *, minimum: float, strict: bool = False,
             integer: bool = False, optional: bool = False) -> bool:
    """A finite number >= minimum (> minimum if strict), an int if
    ``integer``; None passes if ``optional``."""
    v = self.value(key)
    if v is None and optional:
      return True
    kind = 'an integer' if integer else 'a number'
    bound = f'{">" if strict else ">="} {minimum:g}'
    is_number = isinstance(v, int) if integer else isinstance(v, (int, float))
    ok = (
      is_number and not isinstance(v, bool) and math.isfinite(v)
      and (v > minimum if strict else v >= minimum)
    )
    return self.require(ok, key, f'must be {kind} {bound}.')

  def choice(self, key: str, choices: Iterable[str], what: str) -> bool:
    choices = tuple(choices)
    return self.require(
      self.value(key) in choices, key,
      f'is not a known {what}; valid: {", ".join(choices)}.',
    )

  def names(self, key: str) -> bool:
    """A tuple of names (e.g. stages); () is allowed."""
    v = self.value(key)
    ok = isinstance(v, (tuple, list)) and all(isinstance(s, str) for s in v)
    return self.require(ok, key, "must be a tuple of names, e.g. "
                        "('stage1', 'stage2').")


def _data_parallel_devices(checker: Checker) -> int | None:
  import jax  # noqa: PLC0415  (devices: only when validating a run)

  available = jax.device_count()
  requested = checker.value('num_devices')
  if not checker.number('num_devices', minimum=0, integer=True):
    return None
  if not checker.require(
    requested <= available, 'num_devices',
    f'is more than the {available} devices present (0 = all).',
  ):
    return None
  return requested or available


def _check_trainer(checker: Checker) -> None:
  from mhkd_jax import models, steps  # noqa: PLC0415
  from mhkd_jax.data import datasets, input_pipeline  # noqa: PLC0415
  from mhkd_jax.models import precision  # noqa: PLC0415
  from mhkd_jax.run import platform  # noqa: PLC0415

  c = checker
  c.choice('model', models.MODEL_NAMES, 'model')
  if c.value('teacher.model'):
    c.choice('teacher.model', models.MODEL_NAMES, 'model')
  known_data = c.choice('data.name', datasets.dataset_names(), 'data set')
  if c.choice('data.pipeline', input_pipeline.PIPELINES, 'input pipeline') and (
    known_data
  ):
    info = datasets.dataset_info(c.value('data.name'))
    c.require(
      info.train_crop == 'pad' or c.value('data.pipeline') == 'stream',
      'data.pipeline', f"cannot read {info.name}: its images differ in size "
      "and are decoded one by one; set config.data.pipeline='stream'.",
    )
  for key in ('data.num_train_examples', 'data.num_eval_examples'):
    c.number(key, minimum=1, integer=True, optional=True)
  c.number('data.crop_padding', minimum=0, integer=True)
  for key in ('data.num_workers', 'data.num_threads'):
    c.number(key, minimum=0, integer=True)
  c.number('data.prefetch_batches', minimum=1, integer=True)
  c.choice('compute_dtype', (*precision.COMPUTE_DTYPES, platform.AUTO),
           'compute dtype')
  c.number('seed', minimum=0, integer=True)
  c.number('num_students', minimum=1, integer=True)
  c.choice('students_loop', (*steps.STUDENTS_LOOPS, platform.AUTO),
           'students loop')
  devices = _data_parallel_devices(c)
  for key in ('batch_size', 'eval_batch_size'):
    v = c.value(key)
    if c.number(key, minimum=1, integer=True) and devices:
      c.require(
        v % devices == 0, key,
        f'must be a positive multiple of the {devices} devices of the '
        f'data mesh; use a multiple of {devices}.',
      )
  c.number('num_epochs', minimum=1, integer=True)
  c.number('learning_rate', minimum=0, strict=True)
  c.number('momentum', minimum=0)
  c.number('weight_decay', minimum=0)
  c.number('lr_decay_rate', minimum=0, strict=True)
  fractions = c.value('lr_decay_fractions')
  c.require(
    isinstance(fractions, (tuple, list))
    and all(isinstance(f, (int, float)) and 0 < f <= 1 for f in fractions)
    and all(a < b for a, b in zip(fractions, fractions[1:])),
    'lr_decay_fractions',
    'must be increasing fractions of num_epochs in (0, 1], e.g. '
    '(0.625, 0.75, 0.875).',
  )
  for key in ('log_every_steps', 'eval_every_epochs',
              'checkpoint.every_steps', 'checkpoint.max_to_keep'):
    c.number(key, minimum=1, integer=True)
  c.number('checkpoint.every_minutes', minimum=0)  # 0: by steps only


def _check_optimizer(checker: Checker, method) -> None:
  """``config.optimizer``: DOT needs a task term and a distillation term to
  give their own momenta, and mdistiller's heavy-ball momentum."""
  from mhkd_jax import dot  # noqa: PLC0415

  c = checker
  if not c.choice('optimizer.name', dot.OPTIMIZERS, 'optimizer'):
    return
  if c.value('optimizer.name') != dot.DOT:
    return
  name = c.value('method')
  c.require(
    method.needs_teacher, 'optimizer.name',
    f'needs a method with a distillation loss, and method {name!r} has '
    "none; use config.optimizer.name='sgd' for it.",
  )
  c.require(
    not method.needs_teacher or method.task_weight() is not None,
    'optimizer.name',
    f'needs a method with a task term (the student\'s cross-entropy, '
    f'logged as \'ce\') to give its own momentum, and method {name!r} '
    "declares none (Method.task_weight); use config.optimizer.name='sgd', "
    'or return the weight of its ce term from task_weight().',
  )
  c.require(
    not c.value('nesterov'), 'nesterov',
    "cannot be used with config.optimizer.name='dot' (mdistiller's DOT "
    'is heavy-ball momentum); set config.nesterov=False.',
  )
  if c.number('optimizer.dot_delta', minimum=0) and isinstance(
    c.value('momentum'), (int, float)
  ):
    c.require(
      c.value('momentum') - c.value('optimizer.dot_delta') >= 0,
      'optimizer.dot_delta',
      f"is more than config.momentum={c.value('momentum')!r}: DOT's task "
      'momentum, momentum - dot_delta, must be >= 0; lower dot_delta.',
    )


def validate(config) -> None:
  """Raises one ``ConfigError`` listing every impossible value."""
  from mhkd_jax import distill  # noqa: PLC0415  (methods import the trainer)

  checker = Checker(config)
  if checker.choice('method', distill.method_names(), 'method'):
    method = distill.create_method(config)
    checker.require(
      bool(config.teacher.init) or not method.needs_teacher, 'teacher.init',
      f'must name a teacher checkpoint or the workdir of a teacher run: '
      f'method {config.method!r} distils from a teacher.',
    )
    method.validate_config(checker)
    _check_optimizer(checker, method)
  _check_trainer(checker)
  problems = checker.problems
  if len(problems) == 1:
    raise errors.ConfigError(problems[0])
  if problems:
    raise errors.ConfigError(
      f'The config has {len(problems)} problems:\n  '
      + '\n  '.join(problems)
    )
