"""``train_and_evaluate(config, workdir)``: build, restore, loop, evaluate,
checkpoint, log, export.

One loop serves every method: the method decides what is trained
(``create_trainable``) and the loss (``compute_loss``); the loop owns the
data, the optimizer, the teacher role, evaluation and checkpoints.
"""

import functools
import json
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from flax import nnx

from mhkd_jax import checkpointing, data, parallel, precision
from mhkd_jax import step as step_lib
from mhkd_jax.data import augment
from mhkd_jax.distill import get_method

# The models are built for 32x32 RGB inputs (the data pipeline yields them).
INPUT_SHAPE = (1, 32, 32, 3)


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


# --------------------------------------------------------------------------
# Optimizer.


def lr_decay_epochs(config) -> tuple[int, ...]:
  """Decay epochs from num_epochs-relative fractions (240 -> 150/180/210)."""
  return tuple(
    int(round(f * config.num_epochs)) for f in config.lr_decay_fractions
  )


def create_learning_rate_fn(config, steps_per_epoch: int):
  """RepDistiller's step schedule in optimizer steps.

  RepDistiller multiplies the rate by ``lr_decay_rate`` once for every
  decay epoch that the 1-based epoch exceeds. 1-based epoch e + 1 > d is
  0-based epoch e >= d, i.e. step >= d * steps_per_epoch.
  """
  boundaries = jnp.asarray(
    [d * steps_per_epoch for d in lr_decay_epochs(config)], jnp.int32
  )
  base, rate = config.learning_rate, config.lr_decay_rate

  def learning_rate(count):
    num_decays = jnp.sum(jnp.asarray(count) >= boundaries)
    return base * rate**num_decays

  return learning_rate


def create_optimizer(config, steps_per_epoch: int):
  """SGD with momentum and PyTorch-style coupled weight decay.

  torch's ``SGD(weight_decay=wd)`` adds ``wd * w`` to the gradient of every
  parameter it holds (BatchNorm scales and biases included) before the
  momentum; ``add_decayed_weights`` before ``sgd`` does the same. The
  teacher is never given to the optimizer.
  """
  return optax.chain(
    optax.add_decayed_weights(config.weight_decay),
    optax.sgd(
      create_learning_rate_fn(config, steps_per_epoch),
      momentum=config.momentum,
      nesterov=config.nesterov,
    ),
  )


# --------------------------------------------------------------------------
# Preemption.

_preemption_requested = False


def _on_sigterm(signum, frame):
  del signum, frame
  global _preemption_requested
  _preemption_requested = True
  logging.warning('SIGTERM: saving a checkpoint and stopping at this step.')


def preemption_requested(step: int) -> bool:
  """True once the job was told to stop (SIGTERM from the scheduler)."""
  del step
  return _preemption_requested


# --------------------------------------------------------------------------
# Evaluation.


def _pad_split(split: data.ArraySplit, batch_size: int):
  """Pads a split to whole batches and returns (images, labels, mask)."""
  n = len(split.labels)
  padded = math.ceil(n / batch_size) * batch_size
  extra = padded - n
  images = np.concatenate(
    [split.images, np.zeros((extra,) + split.images.shape[1:], np.uint8)]
  )
  labels = np.concatenate([split.labels, np.zeros((extra,), np.int32)])
  mask = np.concatenate([np.ones((n,), bool), np.zeros((extra,), bool)])
  return images, labels, mask


def evaluate(eval_step, params, rest, teacher_state, teacher_logits,
             eval_arrays, num_batches):
  sums = None
  for i in range(num_batches):
    batch = eval_step(params, rest, teacher_state, teacher_logits,
                      *eval_arrays, jnp.int32(i))
    sums = batch if sums is None else jax.tree.map(jnp.add, sums, batch)
  sums = jax.device_get(sums)
  count = float(sums.pop('count'))
  return {f'eval/{k}': float(v) / count for k, v in sorted(sums.items())}


def frozen_teacher_logits(teacher_eval_step, teacher_state, images,
                          num_batches, mesh):
  """The frozen teacher's (and frozen heads') logits on the whole padded
  test split, computed once per run and kept replicated on the devices
  (10,000 x 100 classes: 4 MB per output)."""
  batches = [
    teacher_eval_step(teacher_state, images, jnp.int32(i))
    for i in range(num_batches)
  ]
  concat = lambda *bs: jax.tree.map(lambda *xs: jnp.concatenate(xs), *bs)
  return jax.jit(concat, out_shardings=parallel.replicated(mesh))(*batches)


# --------------------------------------------------------------------------
# The loop.


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


def _mean_metrics(history: list[dict]) -> dict:
  stacked = jax.device_get(history)
  return {
    k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]
  }


def _load_teacher(config, method, num_classes):
  """The frozen teacher role, or None for methods that need none."""
  if not method.NEEDS_TEACHER:
    return None
  if not config.teacher.init:
    raise ValueError(
      f'Method {config.method!r} needs a teacher: set '
      '--config.teacher.init to a teacher checkpoint or the workdir of a '
      'teacher run.'
    )
  return checkpointing.load_teacher(
    config.teacher.init, model_name=config.teacher.model or None,
    num_classes=num_classes,
  )


def _restore_latest(checkpointer, params, rest, opt_state, base_key):
  """The latest checkpoint's state if there is one, else the fresh one.

  Returns (params, rest, opt_state, start_step, base_key); restored arrays
  take the shardings of the fresh ones.
  """
  latest = checkpointer.latest_step()
  if latest is None:
    return params, rest, opt_state, 0, base_key
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
    {'params': params, 'rest': rest, 'opt_state': opt_state},
  )
  abstract['step'] = 0
  abstract['rng'] = jax.ShapeDtypeStruct(base_key.shape, base_key.dtype)
  restored = checkpointer.restore(latest, abstract)
  start_step = int(restored['step'])
  logging.info('Resumed from %s at step %d.', checkpointer.directory,
               start_step)
  # A host copy of the key: it is then placed like a fresh run's.
  return (restored['params'], restored['rest'], restored['opt_state'],
          start_step, np.asarray(restored['rng']))


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains and evaluates one run; resumes from ``workdir`` if it can.

  Returns the final results (also written to ``workdir/results.json``), or
  ``{'preempted': True, ...}`` if the run was asked to stop early.
  """
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  method = get_method(config.method)
  compute_dtype = precision.compute_dtype(config.compute_dtype)
  mesh = parallel.create_mesh(config.num_devices or None)
  parallel.check_batch_size(config.batch_size, mesh)
  parallel.check_batch_size(config.eval_batch_size, mesh)

  train_split, eval_split, info = data.load_datasets(config.data)
  num_train = len(train_split.labels)
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(
      f'config.batch_size={config.batch_size} is larger than the '
      f'{num_train} training examples.'
    )
  num_train_steps = steps_per_epoch * config.num_epochs
  logging.info(
    'Data %s: %d train, %d eval examples; %d steps/epoch, %d steps.',
    info.name, num_train, len(eval_split.labels), steps_per_epoch,
    num_train_steps,
  )

  teacher = _load_teacher(config, method, info.num_classes)

  trainable = method.create_trainable(
    config, teacher=teacher, num_classes=info.num_classes,
    input_shape=INPUT_SHAPE, rngs=nnx.Rngs(config.seed),
  )
  # Before splitting: the compute dtype is part of the compiled graphdef.
  precision.set_compute_dtype(trainable, compute_dtype)
  precision.set_compute_dtype(teacher, compute_dtype)
  graphdef, params, rest = step_lib.split_trainable(trainable)
  tx = create_optimizer(config, steps_per_epoch)
  opt_state = tx.init(params)
  params, rest, opt_state = parallel.replicate((params, rest, opt_state), mesh)
  teacher_graphdef, teacher_state = None, None
  if teacher is not None:
    teacher_graphdef, teacher_state = nnx.split(teacher)
    teacher_state = parallel.replicate(teacher_state, mesh)

  # Randomness: model init uses config.seed; data order and augmentation
  # use a base key derived from it (saved in checkpoints), folded with the
  # epoch / step, so a resumed run draws exactly what an uninterrupted one
  # would have.
  base_key = jax.random.key_data(
    jax.random.fold_in(jax.random.key(config.seed), 1)
  )

  checkpointer = checkpointing.TrainCheckpointer(
    workdir, max_to_keep=config.checkpoint.max_to_keep
  )
  params, rest, opt_state, start_step, base_key = _restore_latest(
    checkpointer, params, rest, opt_state, base_key
  )
  data_rng, train_rng = jax.random.split(jax.random.wrap_key_data(base_key))

  input_spec = step_lib.InputSpec(
    mean=info.mean, std=info.std, crop_padding=config.data.crop_padding,
    random_flip=(info.random_flip if config.data.random_flip is None
                 else config.data.random_flip),
  )
  head_pairs = _head_pairs(config, trainable)
  train_step = step_lib.create_train_step(
    graphdef=graphdef, teacher_graphdef=teacher_graphdef, method=method,
    config=config, tx=tx, mesh=mesh, input_spec=input_spec,
  )
  eval_step = step_lib.create_eval_step(
    graphdef=graphdef, teacher_graphdef=teacher_graphdef, config=config,
    mesh=mesh, input_spec=input_spec, head_pairs=head_pairs,
  )
  train_images, train_labels = parallel.replicate(
    (train_split.images, train_split.labels), mesh
  )
  eval_arrays = parallel.replicate(
    _pad_split(eval_split, config.eval_batch_size), mesh
  )
  num_eval_batches = len(eval_arrays[1]) // config.eval_batch_size
  # A frozen teacher's test-split outputs never change: compute them once.
  # Teacher heads trained in this run (online, teacher_heads) need the
  # teacher's features at every eval, so then the eval step runs it.
  teacher_logits = None
  if teacher is not None and trainable.teacher_heads is None:
    teacher_eval_step = step_lib.create_teacher_eval_step(
      teacher_graphdef=teacher_graphdef, config=config, mesh=mesh,
      input_spec=input_spec,
    )
    teacher_logits = frozen_teacher_logits(
      teacher_eval_step, teacher_state, eval_arrays[0], num_eval_batches,
      mesh,
    )
  permutation = jax.jit(
    functools.partial(augment.epoch_permutation, num_examples=num_train),
    out_shardings=parallel.replicated(mesh),
  )
  learning_rate = create_learning_rate_fn(config, steps_per_epoch)

  writer = metric_writers.create_default_writer(
    workdir, just_logging=jax.process_index() > 0
  )
  if start_step == 0:
    writer.write_hparams(_flat_hparams(config))
  report_progress = periodic_actions.ReportProgress(
    num_train_steps=num_train_steps, writer=writer
  )
  previous_signal = signal.signal(signal.SIGTERM, _on_sigterm)
  history = _read_history(workdir, start_step)
  train_history, last_train = [], {}
  perm, perm_epoch = None, -1
  start_time = time.time()
  try:
    for step in range(start_step, num_train_steps):
      epoch, position = divmod(step, steps_per_epoch)
      if epoch != perm_epoch:
        perm, perm_epoch = permutation(data_rng, epoch), epoch
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        params, rest, opt_state, metrics = train_step(
          params, rest, opt_state, teacher_state, train_images, train_labels,
          perm, jnp.int32(position), jax.random.fold_in(train_rng, step),
        )
      train_history.append(metrics)
      done = step + 1
      report_progress(done)
      end_of_epoch = done % steps_per_epoch == 0
      if done % config.log_every_steps == 0 or done == num_train_steps:
        last_train = _mean_metrics(train_history)
        train_history = []
        if not np.isfinite(last_train['loss']):
          _raise_non_finite(
            f'The training loss is {last_train["loss"]}', done, checkpointer
          )
        scalars = {f'train/{k}': v for k, v in last_train.items()}
        scalars['train/lr'] = float(learning_rate(step))
        writer.write_scalars(done, scalars)
      if end_of_epoch and (
        (epoch + 1) % config.eval_every_epochs == 0
        or done == num_train_steps
      ):
        eval_metrics = evaluate(
          eval_step, params, rest, teacher_state, teacher_logits,
          eval_arrays, num_eval_batches,
        )
        writer.write_scalars(done, eval_metrics)
        history.append({'step': done, 'epoch': epoch + 1, **eval_metrics})
        _write_history(workdir, history)
        logging.info('epoch %d: %s', epoch + 1, eval_metrics)
      stop = preemption_requested(done)
      if (
        done % config.checkpoint.every_steps == 0
        or done == num_train_steps
        or stop
      ):
        # Never overwrite good checkpoints with a diverged state.
        if not _all_finite(params):
          _raise_non_finite('The parameters are not finite', done,
                            checkpointer)
        checkpointer.save(
          done,
          {'params': params, 'rest': rest, 'opt_state': opt_state,
           'step': done, 'rng': base_key},
        )
      if stop:
        return {'preempted': True, 'step': done}
  finally:
    signal.signal(signal.SIGTERM, previous_signal)
    # Whatever happens, finish the checkpoint writes already under way.
    checkpointer.close()
    writer.flush()

  trained = nnx.merge(graphdef, params, rest)
  _export(trained, teacher, config, info, workdir)
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
    'train_seconds_this_session': time.time() - start_time,
  }
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2)
  return results


def _head_pairs(config, trainable) -> tuple[tuple[str, str], ...]:
  """(student stage, teacher stage) pairs whose agreement eval reports."""
  if trainable.heads is None:
    return ()
  s_stages = trainable.heads.spec.stages
  t_stages = tuple(config.mhkd.teacher_stages) or s_stages
  return tuple(zip(s_stages, t_stages))


def _export(trained, teacher, config, info, workdir) -> None:
  """Writes the trained network (with its heads) as a teacher checkpoint."""
  directory = os.path.join(workdir, checkpointing.EXPORT_DIR)
  if trained.model is not None:
    checkpointing.save_teacher(
      directory, trained.model, trained.heads, model_name=config.model,
      num_classes=info.num_classes,
    )
  else:  # teacher_heads phase: the frozen teacher plus its fitted heads.
    checkpointing.save_teacher(
      directory, teacher.model, trained.teacher_heads,
      model_name=teacher.name, num_classes=info.num_classes,
    )


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
