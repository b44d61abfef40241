"""The train state: one pytree for everything a run optimises and carries.

``create_train_state`` builds it for the training loop, the tests and the
benchmark alike: the method's trainable parts, split once into the
parameters (differentiated, optimised) and the buffers (BatchNorm
statistics and the method's ``MethodState``: carried, never optimised),
the optimizer state, the step and the run's RNG key, placed replicated on
the mesh. The graph definition and the optimizer are returned beside it:
they are static, and the steps close over them.

The teacher is a role, not state: ``place_teacher`` splits and places it,
and it is passed to the steps as an argument.
"""

from __future__ import annotations

import copy

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from mhkd_jax import dot, parallel
from mhkd_jax.distill import base
from mhkd_jax.models import precision

# Salt of the method's key stream (see ``method_rng``).
_METHOD_STREAM = 2


@flax.struct.dataclass
class TrainState:
  """What one run carries from step to step (all arrays).

  Attributes:
    step: optimizer steps taken (int32 scalar).
    params: the trainable parts' ``nnx.Param`` leaves.
    buffers: their other variables: BatchNorm statistics and method state
      (PyTorch calls both buffers).
    opt_state: the optimizer's state of ``params``.
    rng: the run's key as raw uint32 data; data order, augmentation and
      the method's randomness are derived from it (``data_rng``,
      ``method_rng``).
  """

  step: jax.Array
  params: nnx.State
  buffers: nnx.State
  opt_state: optax.OptState
  rng: jax.Array

  def to_checkpoint(self) -> dict:
    return {
      'step': self.step, 'params': self.params, 'buffers': self.buffers,
      'opt_state': self.opt_state, 'rng': self.rng,
    }

  @classmethod
  def from_checkpoint(cls, tree: dict) -> TrainState:
    return cls(**tree)


def split_trainable(trainable: nnx.Module, trained=nnx.Param):
  """(graphdef, params, buffers): only params are differentiated.

  ``trained`` selects the parameters the optimizer trains (the method's
  ``trained_parameters()``); parameters it leaves out (weights fitted in a
  preliminary phase and used frozen) travel with the buffers.
  """
  return nnx.split(trainable, trained, ...)


def base_rng(seed: int) -> np.ndarray:
  """The run's key for ``seed`` (raw data; model init uses ``seed`` itself)."""
  return np.asarray(
    jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1))
  )


def data_rng(rng) -> jax.Array:
  """The key that inputs derive the epoch order and augmentation from."""
  return jax.random.wrap_key_data(jnp.asarray(rng))


def method_rng(rng, step) -> jax.Array:
  """The method's key at ``step``: a stream apart from the data's."""
  key = jax.random.fold_in(jax.random.wrap_key_data(rng), _METHOD_STREAM)
  return jax.random.fold_in(key, step)


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
  base_lr, rate = config.learning_rate, config.lr_decay_rate

  def learning_rate(count):
    num_decays = jnp.sum(jnp.asarray(count) >= boundaries)
    return base_lr * rate**num_decays

  return learning_rate


def create_host_learning_rate_fn(config, steps_per_epoch: int):
  """``create_learning_rate_fn`` as a host function returning floats, for
  logging: no device work per call.

  The schedule takes one value per decay boundary passed, so each value
  is taken once, here, from the schedule itself (at the first step that
  has it): the logged rate is the one the schedule gives, to the bit.
  """
  schedule = create_learning_rate_fn(config, steps_per_epoch)
  boundaries = np.asarray(
    [d * steps_per_epoch for d in lr_decay_epochs(config)], np.int64
  )
  value_after = {
    int(np.sum(first >= boundaries)): float(schedule(int(first)))
    for first in (0, *boundaries)
  }

  def learning_rate(count: int) -> float:
    return value_after[int(np.sum(count >= boundaries))]

  return learning_rate


def create_optimizer(config, steps_per_epoch: int):
  """SGD with momentum and PyTorch-style coupled weight decay.

  torch's ``SGD(weight_decay=wd)`` adds ``wd * w`` to the gradient of every
  parameter it holds (BatchNorm scales and biases included) before the
  momentum; ``add_decayed_weights`` before ``sgd`` does the same. The
  teacher is never given to the optimizer. ``config.optimizer.name='dot'``
  is mdistiller's DOT instead (``mhkd_jax.dot``: two momenta, the same
  rate, schedule and weight decay); its update needs the two gradients.
  """
  if config.optimizer.name == dot.DOT:
    momentum, momentum_kd = dot.momenta(config.momentum,
                                        config.optimizer.dot_delta)
    return dot.dot(
      create_learning_rate_fn(config, steps_per_epoch), momentum=momentum,
      momentum_kd=momentum_kd, weight_decay=config.weight_decay,
    )
  return optax.chain(
    optax.add_decayed_weights(config.weight_decay),
    optax.sgd(
      create_learning_rate_fn(config, steps_per_epoch),
      momentum=config.momentum,
      nesterov=config.nesterov,
    ),
  )


# --------------------------------------------------------------------------
# Building.


def create_train_state(
  config,
  method: base.Method,
  *,
  teacher: base.Teacher | None,
  data: base.DataSpec,
  mesh: Mesh,
  preliminary: base.Trainable | list[base.Trainable] | None = None,
) -> tuple[TrainState, nnx.GraphDef, optax.GradientTransformation]:
  """The initial train state of ``method``'s ``config.num_students``
  students, replicated on ``mesh``.

  One student is initialised from ``config.seed`` and its state is
  unstacked. Several are initialised from seeds ``seed + k`` and their
  states are stacked along a leading students axis (``mhkd_jax.students``
  holds the per-student bookkeeping). ``preliminary`` is what the method's
  preliminary phase trained (a student each for several students), which
  the method takes its fitted parts from. Returns ``(state, graphdef,
  tx)``: the graph definition of the method's ``Trainable`` and the
  optimizer, which the steps are built from.
  """
  if config.num_students == 1:
    return _one_student_state(config, method, teacher, data, mesh,
                              preliminary)
  states = []
  for k, seed in enumerate(student_seeds(config)):
    state, graphdef, tx = _one_student_state(
      with_seed(config, seed), method, teacher, data, mesh,
      None if preliminary is None else preliminary[k],
    )
    states.append(state)
  return parallel.replicate(stack(states), mesh), graphdef, tx


def _one_student_state(config, method, teacher, data, mesh, preliminary):
  trainable = method.create_trainable(teacher, data, nnx.Rngs(config.seed))
  if preliminary is not None:
    method.load_preliminary(trainable, preliminary)
  return train_state_for(
    trainable, config, steps_per_epoch=data.steps_per_epoch, mesh=mesh,
    trained=method.trained_parameters(),
  )


def student_seeds(config) -> list[int]:
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


def train_state_for(
  trainable: base.Trainable, config, *, steps_per_epoch: int, mesh: Mesh,
  trained=nnx.Param,
) -> tuple[TrainState, nnx.GraphDef, optax.GradientTransformation]:
  """``create_train_state`` for a given ``Trainable`` (e.g. one whose
  weights were imported), at step 0."""
  # Before splitting: the compute dtype is part of the compiled graphdef.
  precision.set_compute_dtype(
    trainable, precision.compute_dtype(config.compute_dtype)
  )
  graphdef, params, buffers = split_trainable(trainable, trained)
  tx = create_optimizer(config, steps_per_epoch)
  state = TrainState(
    step=np.int32(0), params=params, buffers=buffers,
    opt_state=tx.init(params), rng=base_rng(config.seed),
  )
  return parallel.replicate(state, mesh), graphdef, tx


def place_teacher(
  teacher: base.Teacher | None, config, mesh: Mesh
) -> tuple[nnx.GraphDef | None, nnx.State | None]:
  """(graphdef, state) of the frozen teacher, its state replicated.

  The teacher's convolution weights are stored in the compute dtype here,
  once (``precision.frozen_weights``), on a copy: the loaded teacher keeps
  float32 weights, since methods read it at setup and fit_teacher_heads
  exports it as a checkpoint.
  """
  if teacher is None:
    return None, None
  teacher = nnx.clone(teacher)
  precision.set_compute_dtype(
    teacher, precision.compute_dtype(config.compute_dtype)
  )
  precision.frozen_weights(teacher)
  graphdef, state = nnx.split(teacher)
  return graphdef, parallel.replicate(state, mesh)


def abstract_like(state: TrainState):
  """Shapes, dtypes and shardings of ``state`` (a restore target)."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
    state,
  )
