"""DOT, the distillation-oriented trainer (Zhao et al., ICCV 2023), as
mdistiller's ``DistillationOrientedTrainer``.

DOT is SGD with two momentum buffers per parameter: one for the gradient
of the task loss (the student's weighted cross-entropy) and one for the
gradient of everything else, the distillation loss. The task buffer uses
``momentum - delta``, the distillation buffer ``momentum + delta``, so the
distillation gradient is smoothed over a longer horizon. Both buffers step
the parameter: ``w -= lr * task_buffer; w -= lr * kd_buffer``.

mdistiller's rules, which ``dot`` reproduces leaf by leaf:

* a parameter that gets both gradients: ``b_task = m_task * b_task +
  (g_task + wd * w)`` and ``b_kd = m_kd * b_kd + g_kd`` (weight decay once,
  on the task side);
* a parameter that gets only one gradient: that buffer with the mean
  momentum ``(m_task + m_kd) / 2`` and weight decay, the other buffer
  untouched;
* a parameter that gets neither is not updated (no decay either);
* on the first step a buffer is its gradient (torch SGD's ``buf = clone(d_p)``,
  dampening 0); mdistiller's distillation buffer of a distillation-only
  parameter starts as the bare gradient, without the weight decay that it
  adds on every later step, and so does this one.

Which parameters get which gradient is PyTorch's "``p.grad`` is not None"
after each backward: whether the loss reaches the parameter through
differentiable operations. ``gradient_masks`` reads that from the traced
program once, so the masks are static: the same parameters get the same
kinds of gradient on every step, and "first step" is ``count == 0``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import optax

# What ``config.optimizer.name`` may be: torch-style SGD, or DOT.
SGD, DOT = 'sgd', 'dot'
OPTIMIZERS = (SGD, DOT)


def momenta(momentum: float, delta: float) -> tuple[float, float]:
  """(task momentum, distillation momentum) as mdistiller's DOT trainer
  derives them from ``SOLVER.MOMENTUM`` and ``SOLVER.DOT.DELTA``."""
  return momentum - delta, momentum + delta


class DotState(NamedTuple):
  """``count``: steps taken; the two momentum buffers, shaped like the
  parameters (zeros until a parameter's first step)."""

  count: jax.Array
  task_momentum: optax.Updates
  kd_momentum: optax.Updates


def dot(
  learning_rate: optax.ScalarOrSchedule,
  *,
  momentum: float,
  momentum_kd: float,
  weight_decay: float,
) -> optax.GradientTransformationExtraArgs:
  """DOT's update as an optax transformation (weight decay and the rate
  included, like torch's optimizer step).

  ``update(task_grads, state, params, *, kd_updates, task_mask, kd_mask)``:
  ``kd_updates`` is the distillation gradient; the masks are pytrees of
  Python bools shaped like ``params`` that say which parameters the task
  and the distillation loss reach (``gradient_masks``). The returned
  updates are added to the parameters (``optax.apply_updates``).
  """
  mean = (momentum + momentum_kd) / 2.0
  lr_fn = learning_rate if callable(learning_rate) else (
    lambda _: learning_rate
  )

  def init(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
    return DotState(jnp.zeros([], jnp.int32), zeros(), zeros())

  def update(updates, state, params=None, *, kd_updates, task_mask,
             kd_mask, **extra):
    del extra
    if params is None:
      raise ValueError('dot needs the parameters (weight decay).')
    first = state.count == 0
    lr = lr_fn(state.count)

    def leaf(g_task, g_kd, has_task, has_kd, w, b_task, b_kd):
      step = jnp.zeros_like(w)
      if has_task:
        d = g_task + weight_decay * w
        m = momentum if has_kd else mean
        b_task = jnp.where(first, d, m * b_task + d)
        step = step - lr * b_task
      if has_kd:
        if has_task:
          d, m = g_kd, momentum_kd
        else:
          d, m = g_kd + weight_decay * w, mean
        b_kd = jnp.where(first, g_kd, m * b_kd + d)
        step = step - lr * b_kd
      return step, b_task, b_kd

    treedef = jax.tree.structure(params)
    flat = lambda tree: treedef.flatten_up_to(tree)  # noqa: E731
    out = [
      leaf(*args) for args in zip(
        flat(updates), flat(kd_updates), flat(task_mask), flat(kd_mask),
        flat(params), flat(state.task_momentum), flat(state.kd_momentum),
      )
    ]
    steps_, b_task, b_kd = (
      treedef.unflatten([o[i] for o in out]) for i in range(3)
    )
    return steps_, DotState(state.count + 1, b_task, b_kd)

  return optax.GradientTransformationExtraArgs(init, update)


# --------------------------------------------------------------------------
# Which parameters each loss reaches.


# Equations that run their inner jaxpr once on exactly their operands, so
# that each output's dependence is the inner one. Loops (scan, while) also
# carry a jaxpr of the same arity, but one pass of their body is not their
# dependence: they, branches and anything else take the union of inputs.
_CALLS = frozenset({
  'jit', 'pjit', 'closed_call', 'core_call', 'remat2', 'checkpoint',
  'custom_jvp_call', 'custom_vjp_call', 'custom_vjp_call_jaxpr', 'shard_map',
})


def _sub_jaxpr(eqn) -> jex.Jaxpr | None:
  """The jaxpr a call-like equation (jit, remat, custom_jvp/vjp) runs on
  exactly its operands, or None (loops, branches, primitives)."""
  if eqn.primitive.name not in _CALLS:
    return None
  for value in eqn.params.values():
    jaxpr = value.jaxpr if isinstance(value, jex.ClosedJaxpr) else value
    if (isinstance(jaxpr, jex.Jaxpr)
        and len(jaxpr.invars) == len(eqn.invars)
        and len(jaxpr.outvars) == len(eqn.outvars)):
      return jaxpr
  return None


def _carries_gradient(var) -> bool:
  dtype = getattr(var.aval, 'dtype', None)
  return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)


def _reach(jaxpr: jex.Jaxpr, in_bits: list[int], cut=None) -> tuple:
  """Forward walk: for each outvar, the bitset of inputs it depends on
  through differentiable operations (stop_gradient and integer or boolean
  values cut the path, as ``detach`` and integer tensors do in autograd).

  ``cut``: a variable of ``jaxpr`` whose dependence is recorded when it is
  made and then dropped, so that what is computed from it does not count
  it. Returns (outvar bits, the cut variable's bits).
  """
  bits: dict[Any, int] = dict(zip(jaxpr.invars, in_bits))
  read = lambda v: 0 if isinstance(v, jex.Literal) else bits.get(v, 0)  # noqa: E731
  cut_bits = 0
  for eqn in jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    if eqn.primitive.name == 'stop_gradient':
      outs = [0] * len(eqn.outvars)
    else:
      sub = _sub_jaxpr(eqn)
      if sub is not None:
        outs = list(_reach(sub, ins)[0])
      else:
        union = 0
        for b in ins:
          union |= b
        outs = [union] * len(eqn.outvars)
    for v, b in zip(eqn.outvars, outs):
      bits[v] = b if _carries_gradient(v) else 0
      if cut is not None and v is cut:
        cut_bits, bits[v] = bits[v], 0
  return tuple(read(v) for v in jaxpr.outvars), cut_bits


def gradient_masks(
  losses_fn: Callable[[Any], tuple[jax.Array, jax.Array]], params
) -> tuple[Any, Any]:
  """(task mask, distillation mask) of ``params``, Python bools.

  ``losses_fn(params) -> (total, task_term)``, where ``total`` is ``w *
  task_term + distillation``. A parameter is in the task mask if
  ``task_term`` depends on it, in the distillation mask if ``total`` does
  through a path that does not pass through ``task_term``: what
  ``loss_kd.backward()`` and ``loss_ce.backward()`` leave non-None in
  mdistiller. Traced once (abstractly, inside the step's own trace).
  """
  closed = jax.make_jaxpr(losses_fn)(params)
  jaxpr = closed.jaxpr
  leaves, treedef = jax.tree.flatten(params)
  n = len(leaves)
  # Constants (closed-over values) carry no parameter.
  in_bits = [1 << i for i in range(n)] + [0] * (len(jaxpr.invars) - n)
  task_var = jaxpr.outvars[1]
  cut = None if isinstance(task_var, jex.Literal) else task_var
  (total_bits, _), task_bits = _reach(jaxpr, in_bits, cut=cut)

  def as_mask(b):
    return treedef.unflatten([bool(b >> i & 1) for i in range(n)])

  return as_mask(task_bits), as_mask(total_bits)


def count(mask) -> int:
  """How many leaves a mask holds (for messages and tests)."""
  return int(np.sum(jax.tree.leaves(mask)))
