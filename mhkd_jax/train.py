"""``train_and_evaluate(config, workdir)``: build, restore, loop, evaluate,
checkpoint, log, export.

One loop serves every method and every input: the method decides what is
trained and the loss (``mhkd_jax.distill``), the input where batches come
from (``mhkd_jax.data.inputs``); the loop owns the optimizer, the teacher
role, evaluation, checkpoints and preemption.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from flax import nnx

from mhkd_jax import checkpointing, distill, parallel, preemption
from mhkd_jax import step as step_lib
from mhkd_jax import train_state as train_state_lib
from mhkd_jax.data import inputs as inputs_lib
from mhkd_jax.distill import base


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


def _raise_non_finite(what: str, step: int, checkpointer) -> None:
  raise NonFiniteLossError(
    f'{what} at step {step}. Nothing was saved after the last good '
    f'checkpoint (step {checkpointer.latest_step()}). Lower '
    '--config.learning_rate, check the teacher and the data, or reduce a '
    'term whose weight is large; re-running resumes from that checkpoint.'
  )


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(
    jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)])
  )


# --------------------------------------------------------------------------
# Setup.


def _create_mesh(config):
  mesh = parallel.create_mesh(config.num_devices or None)
  parallel.check_batch_size(config.batch_size, mesh, key='batch_size')
  parallel.check_batch_size(config.eval_batch_size, mesh,
                            key='eval_batch_size')
  return mesh


def _load_teacher(config, method, data: base.DataSpec):
  """The frozen teacher role, or None for methods that need none."""
  if not method.needs_teacher:
    return None
  if not config.teacher.init:
    raise ValueError(
      f'Method {config.method!r} needs a teacher: set '
      '--config.teacher.init to a teacher checkpoint or the workdir of a '
      'teacher run.'
    )
  return checkpointing.load_teacher(
    config.teacher.init, model_name=config.teacher.model or None,
    num_classes=data.num_classes, input_shape=data.input_shape,
  )


def _restore_latest(checkpointer, state):
  """The latest checkpoint's state if there is one, else ``state``.

  Restored arrays take the shardings of the fresh ones.
  """
  latest = checkpointer.latest_step()
  if latest is None:
    return state
  abstract = train_state_lib.abstract_like(state).to_checkpoint()
  restored = checkpointer.restore(latest, abstract)
  logging.info('Resumed from %s at step %d.', checkpointer.directory, latest)
  return train_state_lib.TrainState.from_checkpoint(restored)


class Evaluator:
  """Scores the method's outputs on the whole eval split.

  A frozen teacher's outputs on the split never change, so they are
  computed once per run (kept sharded per batch: 10,000 x 100 classes is
  4 MB per output) and the eval step reads them; methods whose eval needs
  the teacher's features (heads trained in the run) run it every time.
  """

  def __init__(self, method, graphdef, teacher_graphdef, teacher_state,
               eval_input, compiler_options):
    self._eval_step = step_lib.create_eval_step(
      method=method, graphdef=graphdef, teacher_graphdef=teacher_graphdef,
      compiler_options=compiler_options,
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
    count = float(sums.pop('count'))
    return {f'eval/{k}': float(v) / count for k, v in sorted(sums.items())}


def _frozen_teacher_logits(teacher_graphdef, teacher_state, eval_input,
                           compiler_options) -> list[dict]:
  teacher_eval_step = step_lib.create_teacher_eval_step(
    teacher_graphdef=teacher_graphdef, compiler_options=compiler_options
  )
  return [teacher_eval_step(teacher_state, b) for b in eval_input.batches()]


class TrainMetrics:
  """Averages the per-step train metrics over each logging interval."""

  def __init__(self, writer, learning_rate, checkpointer):
    self._writer, self._learning_rate = writer, learning_rate
    self._checkpointer = checkpointer
    self._pending: list[dict] = []
    self.last: dict[str, float] = {}

  def add(self, metrics: dict) -> None:
    self._pending.append(metrics)

  def write(self, step: int, t: float | None = None) -> None:
    del t
    pending = jax.device_get(self._pending)
    self._pending = []
    self.last = {k: float(np.mean([m[k] for m in pending])) for k in pending[0]}
    if not np.isfinite(self.last['loss']):
      _raise_non_finite(f'The training loss is {self.last["loss"]}', step,
                        self._checkpointer)
    scalars = {f'train/{k}': v for k, v in self.last.items()}
    scalars['train/lr'] = float(self._learning_rate(step - 1))
    self._writer.write_scalars(step, scalars)


def _save_checkpoint(checkpointer, step, state) -> None:
  # Never overwrite good checkpoints with a diverged state.
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
  workdir = os.path.abspath(workdir)
  method = distill.create_method(config)
  mesh = _create_mesh(config)
  train_input, eval_input, info = inputs_lib.create_inputs(config, mesh)
  data = base.DataSpec(info.num_classes, train_input.example_shape,
                       train_input.num_examples, train_input.steps_per_epoch)
  num_train_steps = data.steps_per_epoch * config.num_epochs
  teacher = _load_teacher(config, method, data)
  state, graphdef, tx = train_state_lib.create_train_state(
    config, method, teacher=teacher, data=data, mesh=mesh
  )
  teacher_graphdef, teacher_state = train_state_lib.place_teacher(
    teacher, config, mesh
  )
  os.makedirs(workdir, exist_ok=True)
  checkpointer = checkpointing.TrainCheckpointer(
    workdir, max_to_keep=config.checkpoint.max_to_keep
  )
  state = _restore_latest(checkpointer, state)
  start_step = int(state.step)
  options = step_lib.compiler_options(mesh)
  train_step = step_lib.create_train_step(
    method=method, graphdef=graphdef, teacher_graphdef=teacher_graphdef,
    tx=tx, data=data, compiler_options=options,
  )
  evaluator = Evaluator(method, graphdef, teacher_graphdef, teacher_state,
                        eval_input, options)
  writer = metric_writers.create_default_writer(
    workdir, just_logging=jax.process_index() > 0
  )
  if start_step == 0:
    writer.write_hparams(_flat_hparams(config))
  train_metrics = TrainMetrics(
    writer, train_state_lib.create_learning_rate_fn(
      config, data.steps_per_epoch), checkpointer,
  )
  history = _read_history(workdir, start_step)
  report_progress, actions = _periodic_actions(
    config, data, num_train_steps, writer, history, workdir, train_metrics,
    evaluator, checkpointer,
  )
  logging.info('%s: %d train examples, %d steps/epoch, steps %d..%d.',
               info.name, data.num_train_examples, data.steps_per_epoch,
               start_step, num_train_steps)
  batches = train_input.batches(
    start_step, train_state_lib.data_rng(jax.device_get(state.rng))
  )
  start_time = time.time()
  with preemption.PreemptionWatcher() as watcher:
    try:
      for step, batch in zip(range(start_step, num_train_steps), batches):
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          state, metrics = train_step(state, batch, teacher_state)
        train_metrics.add(metrics)
        report_progress(step + 1)
        for action in actions:
          action(step + 1, state=state)
        if watcher.should_stop(step + 1):
          _save_checkpoint(checkpointer, step + 1, state)
          return {'preempted': True, 'step': step + 1}
    finally:
      # Whatever happens, finish the checkpoint writes already under way.
      checkpointer.close()
      writer.flush()
  export = method.export(nnx.merge(graphdef, state.params, state.buffers),
                         teacher)
  _export(export, info, data, workdir)
  return _write_results(config, teacher, info, num_train_steps, history,
                        train_metrics.last, time.time() - start_time, workdir)


def _periodic_actions(config, data, num_train_steps, writer, history,
                      workdir, train_metrics, evaluator, checkpointer):
  """What runs after a step: progress (steps/s, ETA), then, in order and
  called with the state: train metrics (with the non-finite check),
  evaluation, checkpoint."""
  last = [num_train_steps]

  def evaluate(step, t, state):
    del t
    metrics = evaluator(state)
    writer.write_scalars(step, metrics)
    history.append({'step': step, 'epoch': step // data.steps_per_epoch,
                    **metrics})
    _write_history(workdir, history)
    logging.info('step %d: %s', step, metrics)

  def save(step, t, state):
    del t
    _save_checkpoint(checkpointer, step, state)

  callback = periodic_actions.PeriodicCallback
  report_progress = periodic_actions.ReportProgress(
    num_train_steps=num_train_steps, writer=writer
  )
  return report_progress, [
    callback(every_steps=config.log_every_steps, on_steps=last,
             callback_fn=lambda step, t, state: train_metrics.write(step)),
    callback(every_steps=data.steps_per_epoch * config.eval_every_epochs,
             on_steps=last, callback_fn=evaluate),
    callback(every_steps=config.checkpoint.every_steps, on_steps=last,
             callback_fn=save),
  ]


# --------------------------------------------------------------------------
# What a run leaves behind.


def _export(export: base.Export | None, info, data, workdir) -> None:
  """Writes the run's network (with its heads) as a teacher checkpoint."""
  if export is None:
    return
  checkpointing.save_teacher(
    os.path.join(workdir, checkpointing.EXPORT_DIR), export.model,
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
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2)
  return results


def _history_path(workdir):
  return os.path.join(workdir, 'eval_history.json')


def _read_history(workdir, start_step) -> list[dict]:
  """Eval history up to ``start_step`` (kept across restarts)."""
  if not os.path.exists(_history_path(workdir)):
    return []
  with open(_history_path(workdir)) as f:
    return [h for h in json.load(f) if h['step'] <= start_step]


def _write_history(workdir, history) -> None:
  if jax.process_index() == 0:
    with open(_history_path(workdir), 'w') as f:
      json.dump(history, f, indent=2)


def _flat_hparams(config) -> dict:
  flat = {}

  def walk(prefix, d):
    for k, v in d.items():
      key = f'{prefix}{k}'
      if hasattr(v, 'items'):
        walk(key + '.', v)
      elif isinstance(v, (int, float, str, bool)):
        flat[key] = v
      else:
        flat[key] = str(v)

  walk('', config)
  return flat
