"""The interface every distillation method implements, and its registry.

A method is one class in one module of this package, registered with
``@base.register``. It declares:

* ``name``: its registry key and the name of its config section;
* ``default_config()``: that section with its defaults (the default config
  assembles every registered method's section, so adding a method never
  edits ``configs/default.py``);
* ``needs_teacher``: whether a run of it loads a frozen teacher;
* ``validate_config(check)``: the impossible values of its section;
* ``create_trainable(teacher, data, rngs)``: everything the run optimises,
  as named parts of a ``Trainable`` (a student, heads, a regressor, an
  embedding...). Variables of type ``MethodState`` (a memory bank, a
  counter) are carried from step to step, checkpointed and never given to
  the optimizer; ``nnx.Param`` leaves are trained;
* ``loss(trainable, teacher_out, batch, context)``: ``(total, terms,
  logits)``: the scalar to minimise, a flat dict of every named term (all
  logged), and the student's logits for the training accuracy (or None);
* ``eval_logits(trainable, images, teacher_out)``: the named logits that
  evaluation scores (``'student'``, ``'student/stage1'``, an online
  teacher head ``'teacher/stage1'``...); the frozen teacher's own outputs
  are added by the trainer;
* ``agreement_pairs(trainable)``: metric name -> two output names whose
  top-1 agreement evaluation reports;
* ``export(trainable, teacher)``: the network the run leaves behind as a
  teacher checkpoint (``workdir/export``), or None;
* ``task_weight()``: the weight of its ``'ce'`` term in the total (the task
  loss that DOT gives its own momentum), or None;
* ``needs_strong_view``: whether its batches carry a second, strongly
  augmented view of every image (MLKD), on which the teacher runs too;
* optionally ``preliminary()`` / ``load_preliminary(...)``: a phase trained
  first, in the same run's workdir (FT's paraphraser, FSP's and AB's
  student initialisation), and ``trained_parameters()``, the parameters the
  optimizer trains (the rest are used frozen).

The step runs the frozen teacher (and its frozen heads, if any) once per
batch outside the gradient, and hands the method a ``TeacherOutputs``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import ml_collections
from flax import nnx

from mhkd_jax import models
from mhkd_jax.models import features
from mhkd_jax.run import errors

# Output names: the student's logits, and the frozen teacher's. A head on
# stage k of either network is '<role>/stage<k>'.
STUDENT = 'student'
TEACHER = 'teacher'
# The ``Batch.extras`` entry that holds a batch's strong view (normalised
# like ``images``) for a method with ``needs_strong_view``.
STRONG_IMAGES = 'strong_images'
# The term every method that trains a student on labels logs its
# cross-entropy under (``Method.task_weight`` says its weight).
TASK_TERM = 'ce'


class MethodState(nnx.Variable):
  """A method's non-differentiated state (e.g. CRD's memory bank).

  Updated inside the jitted step (assign in ``loss``:
  ``trainable.memory[...] = new``), saved in checkpoints with the BatchNorm
  statistics, never optimised.
  """


class Trainable(nnx.Module):
  """Everything one run optimises, as named parts.

  ``Trainable(student=model, heads=aux_heads)``; the names are the method's
  own and become the top-level keys of the parameters, the optimizer state
  and the checkpoints. Absent parts are simply not there:
  ``trainable.get('heads')`` returns None for a method without heads.
  Non-module values (tuples of names) are static: part of the graph
  definition, not of the state.
  """

  def __init__(self, **parts: Any):
    for name, part in parts.items():
      setattr(self, name, part)

  def get(self, name: str, default: Any = None) -> Any:
    return getattr(self, name, default)


class Teacher(nnx.Module):
  """The frozen teacher role: a backbone and, optionally, frozen heads."""

  def __init__(self, model, heads=None, *, name: str):
    self.model = model
    self.heads = heads
    self.name = name  # the architecture, e.g. 'resnet32x4'.


@dataclasses.dataclass
class TeacherOutputs:
  """The frozen teacher's outputs on one batch (all stop-gradiented).

  ``feats`` is None in evaluation when the teacher's logits were cached
  (methods that need teacher features in evaluation say so with
  ``eval_needs_teacher_features``). ``strong``: the teacher's outputs on
  the batch's strong view, in training, for a method that asks for one
  (``Method.needs_strong_view``); None otherwise.
  """

  logits: jax.Array
  feats: dict[str, jax.Array] | None
  head_logits: dict[str, jax.Array] | None
  strong: TeacherOutputs | None = None


jax.tree_util.register_dataclass(
  TeacherOutputs, data_fields=['logits', 'feats', 'head_logits', 'strong'],
  meta_fields=[],
)


def strong_images(method: str, batch) -> jax.Array:
  """The batch's strong view (``STRONG_IMAGES``), or an error that names
  what makes one (a batch built by hand, or an input that makes none)."""
  images = batch.extras.get(STRONG_IMAGES)
  if images is None:
    raise errors.ConfigError(
      f'Method {method!r} trains on a weak and a strong view of every '
      f"image, and this batch has no strong view (Batch.extras"
      f"['{STRONG_IMAGES}']). The device and host inputs make it "
      '(input_pipeline.create_inputs(..., strong_view=True), as the '
      'trainer calls it for such a method), and so does '
      'input_pipeline.Preprocessing.train_batch with strong_view=True.'
    )
  return images


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What a method may need to know about the training data at setup.

  Attributes:
    num_classes: number of labels.
    example_shape: one input example, (height, width, channels).
    num_train_examples: size of the training split as trained on (a CRD
      memory bank has one row per example).
    steps_per_epoch: optimizer steps per epoch.
    train_labels: int [num_train_examples], the label of every training
      example by its index (CRD draws negatives from other classes), or
      None when an input cannot tell them up front.
  """

  num_classes: int
  example_shape: tuple[int, int, int]
  num_train_examples: int
  steps_per_epoch: int
  train_labels: Any = None

  @property
  def input_shape(self) -> tuple[int, int, int, int]:
    """A batch-of-one NHWC shape, for tracing feature shapes."""
    return (1, *self.example_shape)


@dataclasses.dataclass(frozen=True)
class StepContext:
  """Where the train step is, for losses that depend on it.

  Attributes:
    step: the optimizer step about to be taken (0-based; traced int32).
    epoch: the 0-based epoch of that step (traced int32).
    rng: a key for the method's own randomness at this step, independent
      of the data order and augmentation keys.
    num_train_examples: size of the training split.
    steps_per_epoch: optimizer steps per epoch.
  """

  step: jax.Array
  epoch: jax.Array
  rng: jax.Array
  num_train_examples: int
  steps_per_epoch: int


@dataclasses.dataclass(frozen=True)
class Export:
  """A network a run leaves behind in the teacher-checkpoint format."""

  model: nnx.Module
  heads: nnx.Module | None
  model_name: str


class Method:
  """Base class of distillation methods; see the module docstring.

  Instances hold the full config (``self.config``) and their own section
  (``self.cfg``, None for a method without one). Everything a method
  computes from the config at trace time is a compile-time constant.
  """

  name: ClassVar[str] = ''
  needs_teacher: ClassVar[bool] = True
  # The method whose preliminary phase this one is (FT's paraphraser,
  # AB's and FSP's initialisation), or None for a method of its own.
  phase_of: ClassVar[str | None] = None
  # True: the train step runs the frozen teacher with its BatchNorms on
  # the batch's statistics (train mode) instead of the running ones.
  teacher_batch_statistics: ClassVar[bool] = False
  # True: every training batch also carries a strongly augmented view of
  # its images (``Batch.extras['strong_images']``: MLKD's RandAugment,
  # ``data/augment.py``), and the step runs the frozen teacher on it too
  # (``TeacherOutputs.strong``). Only the device and host inputs make it.
  needs_strong_view: ClassVar[bool] = False

  @classmethod
  def default_config(cls) -> ml_collections.ConfigDict | None:
    """This method's config section with its defaults (None: no section)."""
    return None

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.cfg = config.get(self.name) if self.default_config() else None

  def config_sections(self) -> tuple[str, ...]:
    """The method sections of the config this method reads (its own). A
    run's record keeps only these: a section another method adds later
    does not change what the run is."""
    return (self.name,) if self.default_config() else ()

  def validate_config(self, check) -> None:
    """Records impossible values of this method's section on ``check``
    (a ``validation.Checker``: ``check.number('kd.temperature',
    minimum=0, strict=True)``); called before any data is read."""
    del check

  def create_trainable(
    self, teacher: Teacher | None, data: DataSpec, rngs: nnx.Rngs
  ) -> Trainable:
    raise NotImplementedError

  def create_student(self, data: DataSpec, rngs: nnx.Rngs) -> nnx.Module:
    """The student network that ``config.model`` names."""
    return models.create_model(
      self.config.model, num_classes=data.num_classes, rngs=rngs
    )

  def loss(
    self,
    trainable: Trainable,
    teacher_out: TeacherOutputs | None,
    batch: Any,
    context: StepContext,
  ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array | None]:
    raise NotImplementedError

  def task_weight(self) -> float | None:
    """The weight of the student's cross-entropy ``terms[TASK_TERM]`` in
    the total, or None for a method without that term. DOT
    (``config.optimizer.name='dot'``) splits the total there: the weighted
    term is the task loss (mdistiller's ``loss_ce``), everything else the
    distillation loss (its ``loss_kd``), each with its own momentum."""
    return None

  def trained_parameters(self):
    """The nnx filter of the parameters the optimizer trains: all by
    default. Parameters left out (a paraphraser fitted in a preliminary
    phase) are used frozen: never differentiated, decayed or updated."""
    return nnx.Param

  def preliminary(self):
    """``(name, config)`` of a run to train before this one (a phase that
    fits connectors or a paraphraser), or None. The trainer runs it in
    ``workdir/<name>`` (resuming it if it was interrupted) and hands what
    it trained to ``load_preliminary``."""
    return None

  def load_preliminary(self, trainable: Trainable,
                       preliminary: Trainable) -> None:
    """Copies the preliminary phase's fitted parts into ``trainable``."""
    del trainable, preliminary

  def eval_needs_teacher_features(self) -> bool:
    """True if ``eval_logits`` reads ``teacher_out.feats`` (e.g. teacher
    heads trained in this run); otherwise the frozen teacher's test-split
    logits are computed once per run and reused."""
    return False

  def eval_logits(
    self,
    trainable: Trainable,
    images: jax.Array,
    teacher_out: TeacherOutputs | None,
  ) -> dict[str, jax.Array]:
    """Named logits to score; by default the student's final logits."""
    del teacher_out
    student = trainable.get(STUDENT)
    if student is None:
      return {}
    logits, _ = features.forward_with_features(student, images, train=False)
    return {STUDENT: logits}

  def agreement_pairs(self, trainable: Trainable) -> dict[str, tuple]:
    """Metric name -> (output a, output b) whose top-1 agreement is
    reported; pairs whose outputs are absent are skipped."""
    del trainable
    return {'agree_top1': (STUDENT, TEACHER)}

  def export(self, trainable: Trainable, teacher: Teacher | None):
    """By default the student (with its heads, if it has any)."""
    del teacher
    student = trainable.get(STUDENT)
    if student is None:
      return None
    return Export(student, trainable.get('heads'), self.config.model)


# --------------------------------------------------------------------------
# Registry.

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
  """Class decorator: makes a method available under ``cls.name``."""
  if not cls.name:
    raise ValueError(f'{cls.__name__} must set a class attribute `name`.')
  existing = _REGISTRY.get(cls.name)
  if existing is not None and existing.__qualname__ != cls.__qualname__:
    raise ValueError(
      f'Two methods are called {cls.name!r}: {existing.__module__}.'
      f'{existing.__qualname__} and {cls.__module__}.{cls.__qualname__}.'
    )
  _REGISTRY[cls.name] = cls
  return cls


def registry() -> dict[str, type[Method]]:
  return dict(_REGISTRY)
