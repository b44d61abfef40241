"""Vanilla training with cross-entropy: students without a teacher, and
the teachers themselves."""

from mhkd_jax import losses
from mhkd_jax.distill import base
from mhkd_jax.models import features


@base.register
class CrossEntropy(base.Method):
  """``CE(s, y)``: no teacher."""

  name = 'ce'
  needs_teacher = False

  def create_trainable(self, teacher, data, rngs):
    del teacher
    return base.Trainable(student=self.create_student(data, rngs))

  def task_weight(self):
    return 1.0

  def loss(self, trainable, teacher_out, batch, context):
    del teacher_out, context
    logits, _ = features.forward_with_features(
      trainable.student, batch.images, train=True
    )
    ce = losses.cross_entropy(logits, batch.labels)
    return ce, {'ce': ce}, logits
