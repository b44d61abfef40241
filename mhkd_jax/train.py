"""``train_and_evaluate(config, workdir)``: build, restore, loop, evaluate,
checkpoint, log, export.

One loop serves every method and every input: the method decides what is
trained and the loss (``mhkd_jax.distill``), the input where batches come
from (``mhkd_jax.data.input_pipeline``); the loop owns the optimizer, the teacher
role, evaluation, checkpoints and preemption.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from mhkd_jax import configs, distill, parallel, steps, students, train_state
from mhkd_jax.data import datasets, input_pipeline
from mhkd_jax.distill import base
from mhkd_jax.models import fold
from mhkd_jax.run import (
  checkpoints,
  errors,
  metric_writers,
  paths,
  platform,
  periodic_actions,
  preemption,
  progress,
  records,
  validation,
)


class NonFiniteLossError(errors.UserError, FloatingPointError):
  """The training loss became NaN or infinite."""


def _raise_non_finite(what: str, step: int, checkpointer) -> None:
  latest = checkpointer.latest_step()
  kept = (
    f'The last good checkpoint (step {latest}) is kept; nothing after it '
    'was saved, and re-running resumes from it.' if latest is not None
    else 'No checkpoint was saved yet.'
  )
  raise NonFiniteLossError(
    f'{what} at step {step}. {kept} Lower --config.learning_rate, check '
    'the teacher and the data, or reduce a term whose weight is large.'
  )


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(
    jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)])
  )


# --------------------------------------------------------------------------
# Setup.


def _load_teacher(config, method, info):
  """The frozen teacher role, or None for methods that need none. Loaded
  before any data is read: a wrong path or architecture fails fast."""
  if not method.needs_teacher:
    return None
  teacher = checkpoints.load_teacher(
    config.teacher.init, model_name=config.teacher.model or None,
    num_classes=info.num_classes, input_shape=(1, *info.image_shape),
  )
  return teacher


def _teacher_for_steps(config, teacher, data):
  """What the compiled steps run: the teacher, or with
  config.teacher.fold_batchnorm a copy with its BatchNorms folded into
  its convolutions (the same outputs, fewer passes per step)."""
  if teacher is None or not config.teacher.fold_batchnorm:
    return teacher
  return fold.folded_teacher(teacher, data.input_shape)


def _restore_latest(checkpointer, state):
  """The newest readable checkpoint's state if there is one, else
  ``state``. Restored arrays take the shardings of the fresh ones."""
  abstract = train_state.abstract_like(state).to_checkpoint()
  step, restored = checkpointer.restore_latest(abstract)
  if step is None:
    return state
  logging.info('Resumed from %s at step %d.', checkpointer.directory, step)
  return train_state.TrainState.from_checkpoint(restored)


def _preliminary(method, teacher, data, mesh, workdir):
  """Runs the method's preliminary phase, if it has one, in its own
  subdirectory (resuming it, or finding it finished), and returns
  ``(what it trained, None)`` (a list, a student each, for several
  students), or ``(None, its preempted result)``."""
  phase = method.preliminary()
  if phase is None:
    return None, None
  name, config = phase
  phase_dir = paths.join(workdir, name)
  if not paths.exists(paths.join(phase_dir, records.RESULTS)):
    logging.info('Preliminary phase %r in %s.', config.method, phase_dir)
    results = train_and_evaluate(config, phase_dir)
    if results.get('preempted'):
      return None, results
  phase_method = distill.create_method(config)
  state, graphdef, _ = train_state.create_train_state(
    config, phase_method, teacher=teacher, data=data, mesh=mesh
  )
  checkpointer = checkpoints.TrainCheckpointer(phase_dir, max_to_keep=1)
  try:
    state = _restore_latest(checkpointer, state)
  finally:
    checkpointer.close()
  if config.num_students == 1:
    return nnx.merge(graphdef, state.params, state.buffers), None
  # The phase trained the same N students (seeds seed + k, the same data
  # mode): student k of the run continues from student k of the phase.
  state = jax.device_get(state)
  return [students.student_trainable(graphdef, state, k)
          for k in range(config.num_students)], None


class Evaluator:
  """Scores the method's outputs on the whole eval split.

  A frozen teacher's outputs on the split never change, so they are
  computed once per run (kept sharded per batch: 10,000 x 100 classes is
  4 MB per output) and the eval step reads them; methods whose eval needs
  the teacher's features (heads trained in the run) run it every time.
  """

  def __init__(self, method, graphdef, teacher_graphdef, teacher_state,
               eval_input, compiler_options, config=None):
    # config: the run's, for its students (None: one student).
    self._num_students = config.num_students if config else 1
    self._eval_step = steps.create_eval_step(
      method=method, graphdef=graphdef, teacher_graphdef=teacher_graphdef,
      compiler_options=compiler_options, num_students=self._num_students,
      students_loop=config.students_loop if config else 'unroll',
    )
    self._input = eval_input
    self._teacher_state = teacher_state
    self._teacher_logits = [None] * eval_input.num_batches
    if teacher_graphdef is not None and not (
      method.eval_needs_teacher_features()
    ):
      self._teacher_logits = _frozen_teacher_logits(
        teacher_graphdef, teacher_state, eval_input, compiler_options
      )

  def __call__(self, state) -> dict[str, float]:
    sums = None
    for batch, teacher_logits in zip(self._input.batches(),
                                     self._teacher_logits):
      out = self._eval_step(state, self._teacher_state, batch, teacher_logits)
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    count = sums.pop('count')
    if self._num_students > 1:
      return students.summarise(
        {f'eval/{k}': v / count for k, v in sorted(sums.items())}, 'eval'
      )
    count = float(count)
    return {f'eval/{k}': float(v) / count for k, v in sorted(sums.items())}


def _frozen_teacher_logits(teacher_graphdef, teacher_state, eval_input,
                           compiler_options) -> list[dict]:
  teacher_eval_step = steps.create_teacher_eval_step(
    teacher_graphdef=teacher_graphdef, compiler_options=compiler_options
  )
  return [teacher_eval_step(teacher_state, b) for b in eval_input.batches()]


@jax.jit
def _stack_metrics(metrics: list[dict]) -> dict:
  """An interval's per-step metrics as one pytree of [steps, ...] arrays,
  stacked on the device (compiled once per interval length)."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *metrics)


class TrainMetrics:
  """Averages the per-step train metrics over each logging interval.

  The step's metrics stay on the device until the interval ends; then
  they are stacked there and fetched in one transfer (not a scalar per
  metric per step), and averaged on the host as numpy always did, so the
  logged values are unchanged.
  """

  def __init__(self, writer, learning_rate, checkpointer):
    # learning_rate: a host function of the step (no device work per log).
    self._writer, self._learning_rate = writer, learning_rate
    self._checkpointer = checkpointer
    self._pending: list[dict] = []
    self.last: dict[str, float] = {}

  def add(self, metrics: dict) -> None:
    self._pending.append(metrics)

  def write(self, step: int, t: float | None = None) -> None:
    del t
    stacked = jax.device_get(_stack_metrics(self._pending))
    self._pending = []
    mean = {k: np.mean(v, axis=0) for k, v in stacked.items()}
    if np.ndim(mean['loss']):  # several students: a leading students axis
      self.last = students.summarise(
        {f'train/{k}': v for k, v in mean.items()}, 'train'
      )
      self.last = {k[len('train/'):] if k.startswith('train/') else k: v
                   for k, v in self.last.items()}
      if not all(np.isfinite(mean['loss'])):
        _raise_non_finite(f'A student\'s training loss is {mean["loss"]}',
                          step, self._checkpointer)
    else:
      self.last = {k: float(v) for k, v in mean.items()}
    if not np.isfinite(self.last['loss']):
      _raise_non_finite(f'The training loss is {self.last["loss"]}', step,
                        self._checkpointer)
    scalars = {k if '/train' in k or k.startswith('train_std/')
               else f'train/{k}': v for k, v in self.last.items()}
    scalars['train/lr'] = self._learning_rate(step - 1)
    self._writer.write_scalars(step, scalars)


class Reporter:
  """What a run reports: TensorBoard scalars (steps/s, ETA, every metric),
  the eval history, and the progress line a person watches."""

  def __init__(self, config, workdir, data, num_train_steps, start_step,
               checkpointer):
    self.writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0
    )
    if start_step == 0:
      self.writer.write_hparams(_flat_hparams(config))
    self.train_metrics = TrainMetrics(
      self.writer, train_state.create_host_learning_rate_fn(
        config, data.steps_per_epoch), checkpointer,
    )
    self.history = records.read_history(workdir, start_step)
    self._workdir, self._steps_per_epoch = workdir, data.steps_per_epoch
    self._report_progress = periodic_actions.ReportProgress(
      num_train_steps=num_train_steps, writer=self.writer
    )
    self.progress = progress.Progress(
      os.path.basename(workdir), total=num_train_steps, initial=start_step,
      steps_per_epoch=data.steps_per_epoch,
    )

  def after_step(self, step: int) -> None:
    self._report_progress(step)
    self.progress.update(step, self.train_metrics.last.get('loss'))

  def evaluation(self, step: int, metrics: dict[str, float]) -> None:
    epoch = step // self._steps_per_epoch
    self.writer.write_scalars(step, metrics)
    self.history.append({'step': step, 'epoch': epoch, **metrics})
    records.write_history(self._workdir, self.history)
    logging.info('step %d: %s', step, metrics)
    self.progress.note(progress.eval_summary(epoch, metrics))

  def close(self) -> None:
    self.progress.close()
    self.writer.close()


class CheckpointSchedule:
  """When the loop saves: every ``every_steps`` steps, at ``last_step``,
  and once ``every_minutes`` have passed since the last save (0: never by
  time), so a preempted run loses at most that much work however long a
  step takes.

  Reading the clock is host work only. Processes must agree on every
  save (it is collective), and their clocks do not: with several
  processes the clock is read at the steps that are multiples of
  ``agree_every`` only, and process 0's answer is broadcast to all.
  """

  def __init__(self, *, every_steps: int, every_minutes: float,
               last_step: int, agree_every: int, clock=time.monotonic,
               agree=None):
    self._every_steps, self._last_step = every_steps, last_step
    self._seconds = every_minutes * 60
    self._agree_every = agree_every
    self._clock = clock
    # agree(bool) -> bool: process 0's value on every process, or None
    # with one process (the tests pass a fake).
    if agree is None and jax.process_count() > 1:
      agree = _process_0_value
    self._agree = agree
    self._since = clock()

  def due(self, step: int) -> bool:
    if step % self._every_steps == 0 or step == self._last_step:
      return True
    if not self._seconds:
      return False
    if self._agree is None:
      return self._clock() - self._since >= self._seconds
    if step % self._agree_every:
      return False
    return bool(self._agree(self._clock() - self._since >= self._seconds))

  def saved(self) -> None:
    self._since = self._clock()


def _process_0_value(flag: bool) -> bool:
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


def _save_checkpoint(checkpointer, step, state) -> None:
  # Never overwrite good checkpoints with a diverged state. The check is
  # read right before the save, which waits for this same state anyway:
  # it adds a scalar's transfer, not a wait of its own, and steps without
  # a save pay nothing. (Reading it after the save started would let
  # orbax drop the oldest good checkpoint for a diverged one.)
  if not _all_finite(state.params):
    _raise_non_finite('The parameters are not finite', step, checkpointer)
  checkpointer.save(step, state.to_checkpoint())


# --------------------------------------------------------------------------
# The loop.


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains and evaluates one run; resumes from ``workdir`` if it can.

  Returns the final results (also written to ``workdir/results.json``), or
  ``{'preempted': True, 'step': ...}`` if the run was asked to stop early.
  """
  workdir = paths.absolute(workdir)
  validation.validate(config)  # before anything is read or compiled
  # 'auto' values become the platform's choices here, once: everything
  # below, config.json and results.json see the resolved config.
  config = platform.resolve(config, records.recorded_config(workdir))
  method = distill.create_method(config)
  config_changes = records.check_config(workdir, config)
  mesh = parallel.create_mesh(config.num_devices or None)
  teacher = _load_teacher(config, method,
                          datasets.dataset_info(config.data.name))
  train_input, eval_input, info = input_pipeline.create_inputs(
    config, mesh, strong_view=method.needs_strong_view
  )
  data = base.DataSpec(info.num_classes, train_input.example_shape,
                       train_input.num_examples, train_input.steps_per_epoch,
                       train_input.labels_by_index)
  num_train_steps = data.steps_per_epoch * config.num_epochs
  fitted, preempted = _preliminary(method, teacher, data, mesh, workdir)
  if preempted:
    return preempted
  state, graphdef, tx = train_state.create_train_state(
    config, method, teacher=teacher, data=data, mesh=mesh,
    preliminary=fitted,
  )
  teacher_graphdef, teacher_state = train_state.place_teacher(
    _teacher_for_steps(config, teacher, data), config, mesh
  )
  paths.makedirs(workdir)
  checkpointer = checkpoints.TrainCheckpointer(
    workdir, max_to_keep=config.checkpoint.max_to_keep
  )
  state = _restore_latest(checkpointer, state)
  start_step = students.start_step(state)
  records.record_config(workdir, config, config_changes, start_step)
  options = steps.compiler_options(mesh)
  train_step = steps.create_train_step(
    method=method, graphdef=graphdef, teacher_graphdef=teacher_graphdef,
    tx=tx, data=data, compiler_options=options,
    num_students=config.num_students,
    share_data=config.students_share_data,
    students_loop=config.students_loop,
    state_sharding=steps.state_shardings(state),
  )
  evaluator = Evaluator(method, graphdef, teacher_graphdef, teacher_state,
                        eval_input, options, config)
  reporter = Reporter(config, workdir, data, num_train_steps, start_step,
                      checkpointer)
  actions = _periodic_actions(config, data, num_train_steps, reporter,
                              evaluator, checkpointer)
  logging.info('%s: %d train examples, %d steps/epoch, steps %d..%d.',
               info.name, data.num_train_examples, data.steps_per_epoch,
               start_step, num_train_steps)
  batches = students.train_batches(train_input, state, start_step,
                                   config.num_students,
                                   config.students_share_data)
  start_time = time.time()
  with preemption.PreemptionWatcher() as watcher:
    try:
      for step, batch in zip(range(start_step, num_train_steps), batches):
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          state, metrics = train_step(state, batch, teacher_state)
        reporter.train_metrics.add(metrics)
        for action in actions:
          action(step + 1, state=state)
        if watcher.should_stop(step + 1):
          return _stop_for_preemption(checkpointer, step + 1, state)
    finally:
      # Whatever happens, finish the checkpoint writes already under way.
      checkpointer.close()
      reporter.close()
  _export_students(config, method, graphdef, state, teacher, info, data,
                   workdir)
  return _write_results(config, teacher, info, num_train_steps,
                        reporter.history, reporter.train_metrics.last,
                        time.time() - start_time, workdir)


def _stop_for_preemption(checkpointer, step: int, state) -> dict:
  _save_checkpoint(checkpointer, step, state)
  # Every process says so (a warning reaches the terminal): which step a
  # job's processes agreed on is in each one's output.
  logging.warning(
    'Preempted: process %d saves step %d and stops; re-run the same '
    'command to resume.', jax.process_index(), step,
  )
  return {'preempted': True, 'step': step}


# The clock the checkpoint schedule reads (tests replace it).
_clock = time.monotonic


def _periodic_actions(config, data, num_train_steps, reporter, evaluator,
                      checkpointer):
  """What runs after every step, in order, called with the step and the
  state: train metrics (with the non-finite check), evaluation,
  checkpoint (by steps and by time, ``CheckpointSchedule``), progress."""
  last = [num_train_steps]

  def evaluate(step, t, state):
    del t
    reporter.evaluation(step, evaluator(state))

  schedule = CheckpointSchedule(
    every_steps=config.checkpoint.every_steps,
    every_minutes=config.checkpoint.every_minutes,
    last_step=num_train_steps, agree_every=config.log_every_steps,
    clock=_clock,
  )

  def save(step, state):
    if schedule.due(step):
      _save_checkpoint(checkpointer, step, state)
      schedule.saved()

  def log_train(step, t, state):
    del t, state
    reporter.train_metrics.write(step)

  callback = periodic_actions.PeriodicCallback
  return [
    callback(every_steps=config.log_every_steps, on_steps=last,
             callback_fn=log_train),
    callback(every_steps=data.steps_per_epoch * config.eval_every_epochs,
             on_steps=last, callback_fn=evaluate),
    save,
    lambda step, state: reporter.after_step(step),
  ]


# --------------------------------------------------------------------------
# What a run leaves behind.


def _export_students(config, method, graphdef, state, teacher, info, data,
                     workdir) -> None:
  """Exports the run's network, or each student's into ``student<k>/``
  (a teacher checkpoint that ``load_teacher(workdir/student<k>)`` reads).
  """
  if config.num_students == 1:
    export = method.export(
      nnx.merge(graphdef, state.params, state.buffers), teacher
    )
    _export(export, info, data, workdir)
    return
  for k in range(config.num_students):
    export = method.export(
      students.student_trainable(graphdef, state, k), teacher
    )
    _export(export, info, data,
            paths.join(workdir, students.student_prefix(k)))


def _export(export: base.Export | None, info, data, workdir) -> None:
  """Writes the run's network (with its heads) as a teacher checkpoint."""
  if export is None:
    return
  checkpoints.save_teacher(
    paths.join(workdir, checkpoints.EXPORT_DIR), export.model,
    export.heads, model_name=export.model_name,
    num_classes=info.num_classes, input_shape=data.input_shape,
  )


def _write_results(config, teacher, info, num_train_steps, history,
                   last_train, seconds, workdir) -> dict:
  final = history[-1] if history else {}
  results = {
    'method': config.method,
    'model': config.model,
    'teacher': teacher.name if teacher is not None else None,
    'data': info.name,
    'seed': config.seed,
    'compute_dtype': config.compute_dtype,
    'num_epochs': config.num_epochs,
    'num_train_steps': num_train_steps,
    'final': {k: v for k, v in final.items() if k.startswith('eval/')},
    'best_eval_acc': max(
      (h['eval/acc'] for h in history if 'eval/acc' in h), default=None
    ),
    'train': last_train,
    'history': history,
    'train_seconds_this_session': seconds,
  }
  if config.num_students > 1:
    results.update(students.results(config, history))
    best = results['mean_std']['best_eval_acc']
    results['best_eval_acc'] = best[0] if best else None
  records.write_results(workdir, results)
  return results


def _flat_hparams(config) -> dict:
  """The config as TensorBoard hparams: scalars, and the rest as text."""
  return {
    key: value if isinstance(value, (int, float, str, bool)) else str(value)
    for key, value in configs.flatten(config).items()
  }
