"""Several students per teacher in one compiled program: the bookkeeping.

Papers report mean ± std over several runs, and every run re-computes the
same frozen teacher forward. With ``config.num_students = N``,
``train_state.create_train_state`` stacks the states of N students along a
leading axis (student k from seed ``seed + k``, with its own RNG,
BatchNorm statistics, method state such as a CRD memory, and optimizer
state), and the step maps the one-student update over that axis
(``steps.over_students``: traced once per student by default, or
``vmap``-ed). With ``students_share_data`` they all see student 0's
batches and the teacher runs once per batch; without it student k draws
its own data order and augmentation, so it equals a one-student run with
seed ``seed + k``.

``num_students = 1`` is the one-student program, unstacked and unchanged.
This module holds what the loop does per student: the batches, one
student's slice of the state, and the metrics and results of each.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mhkd_jax import train_state


def student_trainable(graphdef, state, k: int):
  """Student ``k``'s trainable module (network, heads, method parts) from
  a stacked state."""
  one = train_state.unstack(state, k)
  return nnx.merge(graphdef, one.params, one.buffers)


def start_step(state) -> int:
  """The step of a (possibly stacked) state; students move in step."""
  return int(np.asarray(jax.device_get(state.step)).reshape(-1)[0])


def train_batches(train_input, state, start: int, num_students: int,
                  share_data: bool):
  """The batches of the run from ``start``: one stream for one student or
  shared data (student 0's data key), else the students' streams stacked
  along a leading axis."""
  rngs = np.asarray(jax.device_get(state.rng))
  if num_students == 1:
    return train_input.batches(start, train_state.data_rng(rngs))
  if share_data:
    return train_input.batches(start, train_state.data_rng(rngs[0]))
  streams = [
    train_input.batches(start, train_state.data_rng(rngs[k]))
    for k in range(num_students)
  ]
  return (_stack_batches(batches) for batches in zip(*streams))


@jax.jit
def _stack_batches(batches):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *batches)


# --------------------------------------------------------------------------
# Metrics and results.


def student_prefix(k: int) -> str:
  return f'student{k}'


def summarise(per_student: dict[str, np.ndarray], kind: str) -> dict:
  """Flat scalars from metrics with a leading students axis.

  ``{'eval/acc': [N]}`` becomes ``eval/acc`` (the mean over students),
  ``eval_std/acc`` (their standard deviation, numpy's population std as
  mdistiller reports) and ``student<k>/eval/acc`` for each student.
  ``kind`` is the metric family ('train' or 'eval').
  """
  out = {}
  for name, values in per_student.items():
    values = np.asarray(values, np.float64)
    out[name] = float(values.mean())
    rest = name[len(kind) + 1:]
    out[f'{kind}_std/{rest}'] = float(values.std())
    for k, v in enumerate(values):
      out[f'{student_prefix(k)}/{name}'] = float(v)
  return out


def student_metrics(metrics: dict, k: int) -> dict:
  """Student ``k``'s entries of summarised metrics, without the prefix."""
  prefix = f'{student_prefix(k)}/'
  return {
    key[len(prefix):]: v for key, v in metrics.items()
    if key.startswith(prefix)
  }


def results(config, history: list[dict]) -> dict:
  """The per-student part of ``results.json``: each student's seed, final
  eval metrics and best eval accuracy, and mean ± std over students of
  the final and best accuracy."""
  final = history[-1] if history else {}
  students = []
  for k, seed in enumerate(train_state.student_seeds(config)):
    accs = [
      h[f'{student_prefix(k)}/eval/acc'] for h in history
      if f'{student_prefix(k)}/eval/acc' in h
    ]
    students.append({
      'seed': seed,
      'final': {
        key: v for key, v in student_metrics(final, k).items()
        if key.startswith('eval/')
      },
      'best_eval_acc': max(accs, default=None),
    })
  return {
    'num_students': config.num_students,
    'students_share_data': config.students_share_data,
    'students': students,
    'mean_std': {
      'final_eval_acc': _mean_std(
        [s['final'].get('eval/acc') for s in students]),
      'best_eval_acc': _mean_std([s['best_eval_acc'] for s in students]),
    },
  }


def _mean_std(values) -> list[float] | None:
  if not values or any(v is None for v in values):
    return None
  return [float(np.mean(values)), float(np.std(values))]
