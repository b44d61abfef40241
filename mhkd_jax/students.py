"""Several students per teacher in one compiled program.

Papers report mean ± std over several runs, and every run re-computes the
same frozen teacher forward. With ``config.num_students = N`` the train
state of N students is stacked along a leading axis and the step is
``vmap``-ed over it (``mhkd_jax.step``): student k is initialised from
seed ``seed + k`` and carries its own RNG (method randomness), BatchNorm
statistics, method state (e.g. a CRD memory) and optimizer state. With
``students_share_data`` they all see student 0's batches and the teacher
runs once per batch; without it student k draws its own data order and
augmentation, so it equals a one-student run with seed ``seed + k``.

``num_students = 1`` is the one-student program, unstacked and unchanged.
This module holds the stacking and the per-student bookkeeping of metrics
and results.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mhkd_jax import parallel
from mhkd_jax import train_state as train_state_lib


def seeds(config) -> list[int]:
  """The initialisation seed of each student."""
  return [config.seed + k for k in range(config.num_students)]


def with_seed(config, seed: int):
  """``config`` for one student with ``seed`` (a one-student run)."""
  one = copy.deepcopy(config)
  with one.unlocked():
    one.seed = seed
    one.num_students = 1
  return one


def stack(states: list):
  """The students' states stacked along a new leading axis (on the host;
  the caller places the result)."""
  host = jax.device_get(states)
  return jax.tree.map(lambda *xs: np.stack(xs), *host)


def unstack(tree, k: int):
  """Student ``k``'s slice of a stacked pytree."""
  return jax.tree.map(lambda x: x[k], tree)


def student_trainable(graphdef, state, k: int):
  """Student ``k``'s trainable module (network, heads, method parts) from
  a stacked state."""
  one = unstack(state, k)
  return nnx.merge(graphdef, one.params, one.buffers)


def create_train_state(config, method, *, teacher, data, mesh,
                       preliminary=None):
  """``train_state.create_train_state`` for ``config.num_students``
  students: the one-student state itself for one, else the students'
  states stacked (student k from seed ``seed + k``), replicated.
  ``preliminary``: what a preliminary phase trained, a student each for
  several students."""
  if config.num_students == 1:
    return train_state_lib.create_train_state(
      config, method, teacher=teacher, data=data, mesh=mesh,
      preliminary=preliminary,
    )
  states = []
  for k, seed in enumerate(seeds(config)):
    state, graphdef, tx = train_state_lib.create_train_state(
      with_seed(config, seed), method, teacher=teacher, data=data,
      mesh=mesh,
      preliminary=None if preliminary is None else preliminary[k],
    )
    states.append(state)
  return parallel.replicate(stack(states), mesh), graphdef, tx


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
    return train_input.batches(start, train_state_lib.data_rng(rngs))
  if share_data:
    return train_input.batches(start, train_state_lib.data_rng(rngs[0]))
  streams = [
    train_input.batches(start, train_state_lib.data_rng(rngs[k]))
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
  for k, seed in enumerate(seeds(config)):
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
