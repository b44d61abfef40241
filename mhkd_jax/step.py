"""The pure train and eval steps that get jitted.

One compiled program per step: gather the batch from the device-resident
split, augment it, run the frozen teacher (and its frozen heads) once in
eval mode, then the student, its heads and every loss term under one
``value_and_grad``, and the SGD update. The graph is split once: the jitted
functions take ``nnx.State`` pytrees and merge inside, so no per-step
Python graph walk is paid. The teacher's state is an argument (a
closed-over array would become a compile-time constant) and never enters
the optimizer.
"""

import dataclasses
import functools
from collections.abc import Callable
from types import ModuleType

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from mhkd_jax import features, losses, parallel
from mhkd_jax.data import augment
from mhkd_jax.distill.base import TeacherOutputs


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """How raw uint8 batches become model inputs."""

  mean: tuple[float, ...]
  std: tuple[float, ...]
  crop_padding: int
  random_flip: bool


# XLA:CPU (jaxlib 0.10) hands convolutions to YNNPACK unless the list of
# library fusions is given explicitly. YNNPACK's weight-gradient
# convolutions (whose window is the whole feature map) run at ~4 GFLOP/s on
# a 2-core AVX2 host, Eigen's at ~45: one resnet8x4 layer1 weight gradient
# takes 1.35 s instead of 0.1 s, a resnet32x4 -> resnet8x4 KD step twice as
# long, MHKD with 'dih' heads four times. Naming the list leaves standalone
# convolutions to Eigen. Reductions stay with YNNPACK: XLA's own reduction
# loops sum BatchNorm statistics and their gradients less accurately
# (parameters after three steps of tests/step_parity_test.py then differ
# from PyTorch's by 2.7e-4 relative instead of 2e-7), at the price of
# YNNPACK keeping the conv-BN-ReLU-pool chains that end in a reduction (the
# frozen 'dih' teacher heads' forward: 1.3x slower than in Eigen). It only
# picks the library that runs each op (no fast-math, float32 throughout),
# and applies to the train and eval steps on CPU meshes only. This jaxlib
# also knows xla_cpu_use_onednn and the oneDNN/XNNPACK fusion-type flags,
# but with them the convolutions still went to YNNPACK (checked in the
# compiled HLO) and the step time did not change. Set to None to compile
# with XLA's defaults (experiments/benchmark_step.py --also-xla-defaults
# measures the difference).
CPU_COMPILER_OPTIONS: dict[str, str] | None = {
  'xla_cpu_experimental_ynn_fusion_type': (
    'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'
  ),
}


@functools.cache
def _accepted_by_xla(device: jax.Device, options: tuple) -> bool:
  """Whether this jaxlib knows the options (they are experimental flags)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(
      jax.device_put(jnp.zeros((), jnp.float32), device)
    ).compile()
  except Exception:  # pylint: disable=broad-except
    return False
  return True


def compiler_options(mesh: Mesh) -> dict[str, str] | None:
  """Per-program XLA options for steps compiled for ``mesh``."""
  devices = list(mesh.devices.flat)
  if not CPU_COMPILER_OPTIONS or any(d.platform != 'cpu' for d in devices):
    return None
  options = tuple(sorted(CPU_COMPILER_OPTIONS.items()))
  return dict(options) if _accepted_by_xla(devices[0], options) else None


def split_trainable(trainable: nnx.Module):
  """(graphdef, params, rest): only params are differentiated/optimised."""
  return nnx.split(trainable, nnx.Param, ...)


def teacher_forward(teacher, x) -> TeacherOutputs:
  """The frozen teacher in eval mode; every output stop-gradiented."""
  logits, feats = features.forward_with_features(
    teacher.model, x, train=False
  )
  head_logits = None
  if teacher.heads is not None:
    head_logits = teacher.heads(feats, train=False)
  return jax.lax.stop_gradient(TeacherOutputs(logits, feats, head_logits))


def create_train_step(
  *,
  graphdef: nnx.GraphDef,
  teacher_graphdef: nnx.GraphDef | None,
  method: ModuleType,
  config,
  tx: optax.GradientTransformation,
  mesh: Mesh,
  input_spec: InputSpec,
) -> Callable:
  """Returns the jitted ``train_step``.

  ``train_step(params, rest, opt_state, teacher_state, images, labels,
  perm, position, rng) -> (params, rest, opt_state, metrics)`` where
  ``images``/``labels`` are the whole resident training split, ``perm``
  the epoch's permutation and ``position`` the batch index in the epoch.
  Params, rest and optimizer state are donated.
  """
  batch_size = config.batch_size
  batch_sharding = parallel.data_sharded(mesh)

  def train_step(
    params, rest, opt_state, teacher_state, images, labels, perm, position,
    rng,
  ):
    idx = jax.lax.dynamic_slice_in_dim(perm, position * batch_size, batch_size)
    # The batch is split over the 'data' axis; state stays replicated.
    idx = jax.lax.with_sharding_constraint(idx, batch_sharding)
    batch_images = augment.random_crop_flip(
      rng, images[idx], padding=input_spec.crop_padding,
      flip=input_spec.random_flip,
    )
    x = augment.normalize(batch_images, input_spec.mean, input_spec.std)
    y = labels[idx]
    teacher_out = None
    if teacher_graphdef is not None:
      teacher = nnx.merge(teacher_graphdef, teacher_state)
      teacher_out = teacher_forward(teacher, x)

    def loss_fn(params, rest):
      # copy=True makes fresh Variables in this (differentiated) trace:
      # BatchNorm may only mutate its statistics from the trace that made
      # them.
      trainable = nnx.merge(graphdef, params, rest, copy=True)
      total, terms, logits = method.compute_loss(
        trainable, teacher_out, x, y, config
      )
      _, _, new_rest = split_trainable(trainable)
      return total, (terms, logits, new_rest)

    (total, (terms, logits, new_rest)), grads = jax.value_and_grad(
      loss_fn, has_aux=True
    )(params, rest)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {'loss': total, **terms}
    if logits is not None:
      metrics['acc'] = losses.accuracy(logits, y)
    return params, new_rest, opt_state, metrics

  return jax.jit(
    train_step, donate_argnums=(0, 1, 2),
    compiler_options=compiler_options(mesh),
  )


def _eval_batch(a, index, batch_size, batch_sharding):
  """Rows ``[index * batch_size, (index + 1) * batch_size)``, sharded."""
  return jax.lax.with_sharding_constraint(
    jax.lax.dynamic_slice_in_dim(a, index * batch_size, batch_size),
    batch_sharding,
  )


def _named_teacher_outputs(logits, head_logits) -> dict:
  """Teacher logits under the eval metric names they are scored as."""
  outputs = {'teacher_acc': logits}
  for stage, stage_logits in (head_logits or {}).items():
    outputs[f'teacher_acc/{stage}'] = stage_logits
  return outputs


def create_teacher_eval_step(
  *,
  teacher_graphdef: nnx.GraphDef,
  config,
  mesh: Mesh,
  input_spec: InputSpec,
) -> Callable:
  """Returns the jitted ``teacher_eval_step(teacher_state, images, index)``.

  It gives the frozen teacher's logits, and its frozen heads' (keys
  ``teacher_acc`` and ``teacher_acc/<stage>``), on batch ``index`` of the
  padded test split. They never change during a run, so the loop computes
  them once and the eval step reads them instead of re-running the
  teacher every epoch (for resnet32x4 -> resnet8x4 that forward is ~85%
  of an eval pass's FLOPs).
  """
  batch_size = config.eval_batch_size
  batch_sharding = parallel.data_sharded(mesh)

  def teacher_eval_step(teacher_state, images, index):
    x = augment.normalize(
      _eval_batch(images, index, batch_size, batch_sharding),
      input_spec.mean, input_spec.std,
    )
    t_out = teacher_forward(nnx.merge(teacher_graphdef, teacher_state), x)
    return _named_teacher_outputs(t_out.logits, t_out.head_logits)

  return jax.jit(teacher_eval_step, compiler_options=compiler_options(mesh))


def create_eval_step(
  *,
  graphdef: nnx.GraphDef,
  teacher_graphdef: nnx.GraphDef | None,
  config,
  mesh: Mesh,
  input_spec: InputSpec,
  head_pairs: tuple[tuple[str, str], ...],
) -> Callable:
  """Returns the jitted ``eval_step``: sums of correct predictions.

  ``eval_step(params, rest, teacher_state, teacher_logits, images, labels,
  mask, index)`` evaluates batch ``index`` of the padded, resident test
  split and returns sums (divide by ``count``) for the student, each
  student head, the teacher, each teacher head, and the teacher-student
  top-1 agreement of the final logits and of each head pair.
  ``teacher_logits`` holds the frozen teacher's outputs on the whole split
  (``create_teacher_eval_step``), or is None: then the teacher runs here,
  as it must when its heads are trained in this run.
  """
  batch_size = config.eval_batch_size
  batch_sharding = parallel.data_sharded(mesh)

  def eval_step(params, rest, teacher_state, teacher_logits, images, labels,
                mask, index):
    take = lambda a: _eval_batch(a, index, batch_size, batch_sharding)
    x = augment.normalize(take(images), input_spec.mean, input_spec.std)
    y, m = take(labels), take(mask).astype(jnp.float32)
    trainable = nnx.merge(graphdef, params, rest)
    outputs = {}
    if trainable.model is not None:
      outputs['acc'], feats = features.forward_with_features(
        trainable.model, x, train=False
      )
      if trainable.heads is not None:
        for stage, logits in trainable.heads(feats, train=False).items():
          outputs[f'acc/{stage}'] = logits
    if teacher_logits is not None:
      outputs.update({k: take(v) for k, v in teacher_logits.items()})
    elif teacher_graphdef is not None:
      teacher = nnx.merge(teacher_graphdef, teacher_state)
      t_out = teacher_forward(teacher, x)
      t_heads = t_out.head_logits
      if trainable.teacher_heads is not None:
        t_heads = trainable.teacher_heads(t_out.feats, train=False)
      outputs.update(_named_teacher_outputs(t_out.logits, t_heads))
    sums = {
      name: jnp.sum((jnp.argmax(logits, -1) == y) * m)
      for name, logits in outputs.items()
    }
    if 'acc' in outputs:
      log_probs = jax.nn.log_softmax(outputs['acc'].astype(jnp.float32))
      nll = -jnp.take_along_axis(log_probs, y[:, None], -1)[:, 0]
      sums['loss'] = jnp.sum(nll * m)
    pairs = [('acc', 'teacher_acc', 'agree_top1')] + [
      (f'acc/{s}', f'teacher_acc/{t}', f'agree_top1/{s}')
      for s, t in head_pairs
    ]
    for s_name, t_name, key in pairs:
      if s_name in outputs and t_name in outputs:
        same = jnp.argmax(outputs[s_name], -1) == jnp.argmax(
          outputs[t_name], -1
        )
        sums[key] = jnp.sum(same * m)
    sums['count'] = jnp.sum(m)
    return sums

  # The same library choice as the train step: forward convolutions are
  # also faster in Eigen here (a resnet32x4 eval batch: 1.95 s vs 2.18 s on
  # one core), and train and eval then round alike.
  return jax.jit(eval_step, compiler_options=compiler_options(mesh))
