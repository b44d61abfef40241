"""The small interface every distillation method implements.

A method is one module in this package with:

  NEEDS_TEACHER: bool
  create_trainable(config, *, teacher, num_classes, input_shape, rngs)
      -> Trainable: the modules this run optimises.
  compute_loss(trainable, teacher_out, images, labels, config)
      -> (total, terms, logits): a scalar, a flat dict of every named term,
      and the student's logits (None when there is no student).

The step runs the frozen teacher (and its frozen heads, if any) once per
batch outside the gradient, and hands the method a ``TeacherOutputs``.
"""

import dataclasses
from typing import Any

import jax
from flax import nnx


class Trainable(nnx.Module):
  """Everything a run optimises. Unused roles are None.

  Attributes:
    model: the student backbone (None when only teacher heads are fitted).
    heads: the student's auxiliary heads (MHKD).
    teacher_heads: teacher heads trained in this run (MHKD 'online', or the
      'teacher_heads' phase); they read stop-gradiented teacher features.
  """

  def __init__(self, model=None, heads=None, teacher_heads=None):
    self.model = model
    self.heads = heads
    self.teacher_heads = teacher_heads


class Teacher(nnx.Module):
  """The frozen teacher role: a backbone and, optionally, frozen heads."""

  def __init__(self, model, heads=None, *, name: str):
    self.model = model
    self.heads = heads
    self.name = name  # the architecture, e.g. 'resnet32x4'.


@dataclasses.dataclass
class TeacherOutputs:
  """The frozen teacher's outputs on one batch (all stop-gradiented)."""

  logits: jax.Array
  feats: dict[str, jax.Array]
  head_logits: dict[str, jax.Array] | None


jax.tree_util.register_dataclass(
  TeacherOutputs, data_fields=['logits', 'feats', 'head_logits'],
  meta_fields=[],
)

Terms = dict[str, Any]
