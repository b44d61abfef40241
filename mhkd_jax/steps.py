"""The pure train and eval steps that get jitted.

``train_step(state, batch, teacher_state) -> (state, metrics)``: the
frozen teacher (and its frozen heads) once in eval mode, then the method's
loss over the student, its heads and every other trainable part under one
``value_and_grad``, and the optimizer update. The graph is split once: the
jitted functions take ``nnx.State`` pytrees and merge inside, so no
per-step Python graph walk is paid. The teacher's state is an argument (a
closed-over array would become a compile-time constant) and never enters
the optimizer. Batches come from an input (``mhkd_jax.data.input_pipeline``); the
step does not know which.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mhkd_jax import dot, losses, train_state
from mhkd_jax.distill import base
from mhkd_jax.distill.base import TeacherOutputs
from mhkd_jax.models import features
from mhkd_jax.run import platform

# XLA:CPU (jaxlib 0.10) hands convolutions to YNNPACK unless the list of
# library fusions is given explicitly, and YNNPACK's weight-gradient
# convolutions (whose window is the whole feature map) are several times
# slower than Eigen's on the CPUs this project is tested on. Naming the
# list leaves standalone convolutions to Eigen. Reductions stay with
# YNNPACK: XLA's own reduction loops sum BatchNorm statistics and their
# gradients less accurately (tests/step_parity_test.py's parameters then
# drift from PyTorch's by three orders of magnitude more), at the price of
# YNNPACK keeping the conv-BN-ReLU-pool chains that end in a reduction. It
# only picks the library that runs each op (no fast-math, float32
# throughout), and applies to the train and eval steps on CPU meshes only.
# This jaxlib's oneDNN/XNNPACK switches left the convolutions in YNNPACK
# (checked in the compiled HLO). The step constructors take the options as
# an argument; None compiles with XLA's defaults. The measurements:
# docs/performance.md ("The CPU compiler options"), made with
# experiments/benchmark_step.py --also-xla-defaults.
CPU_COMPILER_OPTIONS: dict[str, str] = {
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
  """The XLA options the steps are compiled with on ``mesh`` by default:
  ``CPU_COMPILER_OPTIONS`` on CPU meshes (if this jaxlib knows them), none
  elsewhere. Callers pass the result (or None, for XLA's defaults) to the
  step constructors."""
  devices = list(mesh.devices.flat)
  if any(d.platform != 'cpu' for d in devices):
    return None
  options = tuple(sorted(CPU_COMPILER_OPTIONS.items()))
  return dict(options) if _accepted_by_xla(devices[0], options) else None



def teacher_forward(teacher: base.Teacher, x: jax.Array, *,
                    batch_statistics: bool = False) -> TeacherOutputs:
  """The frozen teacher, every output stop-gradiented. In eval mode, or
  with ``batch_statistics`` normalising by the batch's statistics (OFD's
  authors run the teacher in train mode); the running statistics it would
  update are dropped with the merged module, so the teacher stays frozen."""
  logits, feats = features.forward_with_features(
    teacher.model, x, train=batch_statistics
  )
  head_logits = None
  if teacher.heads is not None:
    head_logits = teacher.heads(feats, train=False)
  return jax.lax.stop_gradient(TeacherOutputs(logits, feats, head_logits))


def named_teacher_outputs(teacher_out: TeacherOutputs) -> dict:
  """The frozen teacher's logits under their output names: 'teacher' and
  'teacher/<stage>' for each frozen head."""
  outputs = {base.TEACHER: teacher_out.logits}
  for stage, logits in (teacher_out.head_logits or {}).items():
    outputs[f'{base.TEACHER}/{stage}'] = logits
  return outputs


def create_train_step(
  *,
  method: base.Method,
  graphdef: nnx.GraphDef,
  teacher_graphdef: nnx.GraphDef | None,
  tx: optax.GradientTransformation,
  data: base.DataSpec,
  compiler_options: dict[str, str] | None,
  num_students: int = 1,
  share_data: bool = True,
  students_loop: str = 'unroll',
  state_sharding=None,
) -> Callable:
  """Returns the jitted ``train_step(state, batch, teacher_state)``.

  It returns ``(state, metrics)``: the state after one optimizer step and
  ``{'loss': total, **terms, 'acc': train accuracy}``. The incoming state
  is donated. ``compiler_options``: ``compiler_options(mesh)``, or None
  for XLA's defaults. ``state_sharding``: the state's shardings (a pytree
  like the state, ``state_shardings(state)``); the new state is then
  given exactly these and the metrics are replicated, so XLA cannot pick
  another layout for an output and the next step never reshards its
  input. None leaves the outputs' shardings to XLA.

  With ``num_students`` > 1 the state and the metrics carry a leading
  students axis (``mhkd_jax.students``) and the one-student update is
  mapped over it as ``students_loop`` says (``over_students``). ``share_data``: one batch for all, so the teacher runs once and its
  outputs are broadcast; otherwise the batch has the students axis too and
  the teacher runs on each student's batch (its state broadcast).
  """
  if method.config.optimizer.name == dot.DOT:
    update = _dot_update(method, graphdef, tx, data)
  else:
    update = _student_update(method, graphdef, tx, data)

  def teacher_outputs(teacher_state, batch):
    if teacher_graphdef is None:
      return None
    teacher = nnx.merge(teacher_graphdef, teacher_state)
    out = teacher_forward(teacher, batch.images,
                          batch_statistics=method.teacher_batch_statistics)
    if method.needs_strong_view:
      out.strong = teacher_forward(
        teacher, base.strong_images(method.name, batch),
        batch_statistics=method.teacher_batch_statistics,
      )
    return out

  def train_step(state, batch, teacher_state):
    return update(state, batch, teacher_outputs(teacher_state, batch))

  if num_students > 1 and share_data:
    students_update = over_students(update, (0, None, None), students_loop)

    def train_step(state, batch, teacher_state):  # noqa: F811
      teacher_out = teacher_outputs(teacher_state, batch)
      return students_update(state, batch, teacher_out)

  elif num_students > 1:
    train_step = over_students(train_step, (0, 0, None), students_loop)
  out_shardings = None
  if state_sharding is not None:
    mesh = jax.tree.leaves(state_sharding)[0].mesh
    out_shardings = (state_sharding, NamedSharding(mesh, P()))
  return jax.jit(
    train_step, donate_argnums=0, compiler_options=compiler_options,
    out_shardings=out_shardings,
  )


def state_shardings(state):
  """The sharding of every array of ``state`` (``create_train_step``'s
  ``state_sharding``)."""
  return jax.tree.map(lambda x: x.sharding, state)


STUDENTS_LOOPS = ('unroll', 'vmap')


def over_students(fn: Callable, in_axes: tuple, how: str) -> Callable:
  """``fn`` mapped over the leading students axis of the arguments whose
  ``in_axes`` is 0 (the others are shared).

  'unroll' traces the one-student program once per student into the one
  compiled step: each student computes exactly what a one-student run
  computes, and XLA may overlap the students' independent work. On this
  CPU it is the fast choice: 'vmap' turns every convolution into a
  grouped one (slow in XLA:CPU, and its gradient sums in another order),
  and a ``jax.lax.map`` loop was slower still (docs/performance.md).
  'vmap' (one batched program) is there for accelerators, where wide
  kernels pay. The cost of 'unroll' is compile
  time, which grows with the number of students. 'auto' is this
  platform's default (``run.platform``: unroll on CPU, vmap elsewhere).
  """
  how = platform.choice('students_loop', how)
  if how == 'vmap':
    return jax.vmap(fn, in_axes=in_axes)

  def unrolled(*args):
    n = next(
      jax.tree.leaves(a)[0].shape[0] for a, axis in zip(args, in_axes)
      if axis == 0
    )
    outs = [
      fn(*(jax.tree.map(lambda x, k=k: x[k], a) if axis == 0 else a
           for a, axis in zip(args, in_axes)))
      for k in range(n)
    ]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

  return unrolled


def _student_update(method, graphdef, tx, data) -> Callable:
  """``update(state, batch, teacher_out) -> (state, metrics)``: one
  student's loss, gradients and optimizer step given the teacher's
  outputs (pure; mapped over the students by ``over_students``)."""

  def update(state, batch, teacher_out):
    context = base.StepContext(
      step=state.step, epoch=state.step // data.steps_per_epoch,
      rng=train_state.method_rng(state.rng, state.step),
      num_train_examples=data.num_train_examples,
      steps_per_epoch=data.steps_per_epoch,
    )

    def loss_fn(params, buffers):
      # copy=True makes fresh Variables in this (differentiated) trace:
      # BatchNorm and method state may only be mutated from the trace that
      # made them.
      trainable = nnx.merge(graphdef, params, buffers, copy=True)
      total, terms, logits = method.loss(
        trainable, teacher_out, batch, context
      )
      _, _, new_buffers = train_state.split_trainable(
        trainable, method.trained_parameters()
      )
      return total, (terms, logits, new_buffers)

    (total, (terms, logits, buffers)), grads = jax.value_and_grad(
      loss_fn, has_aux=True
    )(state.params, state.buffers)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
      step=state.step + 1, params=optax.apply_updates(state.params, updates),
      buffers=buffers, opt_state=opt_state,
    )
    metrics = {'loss': total, **terms}
    if logits is not None:
      metrics['acc'] = losses.accuracy(logits, batch.labels)
    return new_state, metrics

  return update


def _dot_update(method, graphdef, tx, data) -> Callable:
  """``_student_update`` with DOT (``mhkd_jax.dot``): the task and the
  distillation gradient apart, and ``tx`` (``dot.dot``) given both.

  The total is split at the method's cross-entropy term (``TASK_TERM``,
  weight ``method.task_weight()``): task = w * ce, distillation = total -
  task. One forward pass (``jax.vjp``) and two backward passes from it,
  with cotangents (0, w) and (1, -w) on (total, ce): mdistiller's forward
  once, ``loss_kd.backward(retain_graph=True)``, ``loss_ce.backward()``.
  On the distillation side the two contributions to the ce node (w and
  -w) cancel exactly, so that pass carries the distillation loss's
  gradient alone. Two ``value_and_grad`` calls would run the forward
  (and the BatchNorm statistics' update) twice. Which parameters each
  loss reaches is read from the traced program (``dot.gradient_masks``).
  """
  weight = method.task_weight()

  def update(state, batch, teacher_out):
    context = base.StepContext(
      step=state.step, epoch=state.step // data.steps_per_epoch,
      rng=train_state.method_rng(state.rng, state.step),
      num_train_examples=data.num_train_examples,
      steps_per_epoch=data.steps_per_epoch,
    )

    def loss_fn(params):
      # As in _student_update: fresh Variables in this trace.
      trainable = nnx.merge(graphdef, params, state.buffers, copy=True)
      total, terms, logits = method.loss(
        trainable, teacher_out, batch, context
      )
      _, _, new_buffers = train_state.split_trainable(
        trainable, method.trained_parameters()
      )
      return (total, terms[base.TASK_TERM]), (terms, logits, new_buffers)

    task_mask, kd_mask = dot.gradient_masks(
      lambda p: loss_fn(p)[0], state.params
    )
    (total, task), vjp_fn, (terms, logits, buffers) = jax.vjp(
      loss_fn, state.params, has_aux=True
    )
    one = jnp.ones_like(total)
    (task_grads,) = vjp_fn((jnp.zeros_like(total), weight * one))
    (kd_grads,) = vjp_fn((one, -weight * one))
    del task
    updates, opt_state = tx.update(
      task_grads, state.opt_state, state.params, kd_updates=kd_grads,
      task_mask=task_mask, kd_mask=kd_mask,
    )
    new_state = state.replace(
      step=state.step + 1, params=optax.apply_updates(state.params, updates),
      buffers=buffers, opt_state=opt_state,
    )
    metrics = {'loss': total, **terms}
    if logits is not None:
      metrics['acc'] = losses.accuracy(logits, batch.labels)
    return new_state, metrics

  return update


# --------------------------------------------------------------------------
# Evaluation.


def accuracy_metric(output: str) -> str:
  """The eval metric that scores an output: 'student' -> 'acc',
  'student/stage1' -> 'acc/stage1', 'teacher/stage1' ->
  'teacher_acc/stage1', any other role r -> 'r_acc[/...]'."""
  role, sep, rest = output.partition('/')
  name = 'acc' if role == base.STUDENT else f'{role}_acc'
  return name + sep + rest


def eval_sums(
  outputs: dict[str, jax.Array],
  labels: jax.Array,
  mask: jax.Array,
  pairs: dict[str, tuple[str, str]],
) -> dict[str, jax.Array]:
  """Sums over the unmasked rows of one batch (divide by ``count``): each
  output's correct predictions, the student's NLL, each pair's top-1
  agreement."""
  weight = mask.astype(jnp.float32)
  total = lambda per_example: jnp.sum(per_example * weight)
  sums = {
    accuracy_metric(name): total(losses.correct(logits, labels))
    for name, logits in outputs.items()
  }
  if base.STUDENT in outputs:
    sums['loss'] = total(
      losses.negative_log_likelihood(outputs[base.STUDENT], labels)
    )
  for metric, (a, b) in pairs.items():
    if a in outputs and b in outputs:
      sums[metric] = total(losses.agrees(outputs[a], outputs[b]))
  sums['count'] = jnp.sum(weight)
  return sums


def create_teacher_eval_step(
  *,
  teacher_graphdef: nnx.GraphDef,
  compiler_options: dict[str, str] | None,
) -> Callable:
  """Returns the jitted ``teacher_eval_step(teacher_state, batch)``.

  It gives the frozen teacher's named logits (``named_teacher_outputs``)
  on one eval batch. They never change during a run, so the loop computes
  them once per eval batch and the eval step reads them instead of
  re-running the teacher every epoch (for resnet32x4 -> resnet8x4 that
  forward is ~85% of an eval pass's FLOPs).
  """

  def teacher_eval_step(teacher_state, batch):
    teacher = nnx.merge(teacher_graphdef, teacher_state)
    return named_teacher_outputs(teacher_forward(teacher, batch.images))

  return jax.jit(teacher_eval_step, compiler_options=compiler_options)


def create_eval_step(
  *,
  method: base.Method,
  graphdef: nnx.GraphDef,
  teacher_graphdef: nnx.GraphDef | None,
  compiler_options: dict[str, str] | None,
  num_students: int = 1,
  students_loop: str = 'unroll',
) -> Callable:
  """Returns the jitted ``eval_step(state, teacher_state, batch,
  teacher_logits)``: ``eval_sums`` of one padded eval batch (each sum with
  a leading students axis when ``num_students`` > 1; the batch and the
  teacher are shared).

  ``teacher_logits`` holds the frozen teacher's outputs on this batch
  (``create_teacher_eval_step``), or is None: then the teacher runs here,
  as it must when the method evaluates heads trained on its features.
  The same compiler options as the train step: forward convolutions are
  also faster in Eigen on CPU, and train and eval then round alike.
  """

  def eval_step(state, teacher_state, batch, teacher_logits):
    trainable = nnx.merge(graphdef, state.params, state.buffers)
    teacher_out = None
    if teacher_logits is None and teacher_graphdef is not None:
      teacher = nnx.merge(teacher_graphdef, teacher_state)
      teacher_out = teacher_forward(teacher, batch.images)
      teacher_logits = named_teacher_outputs(teacher_out)
    outputs = dict(teacher_logits or {})
    outputs.update(method.eval_logits(trainable, batch.images, teacher_out))
    return eval_sums(
      outputs, batch.labels, batch.mask, method.agreement_pairs(trainable)
    )

  if num_students > 1:
    eval_step = over_students(eval_step, (0, None, None, None),
                              students_loop)
  return jax.jit(eval_step, compiler_options=compiler_options)
