"""Vanilla training with cross-entropy: students without a teacher, and
the teachers themselves."""

from mhkd_jax import features, losses
from mhkd_jax.distill import base
from mhkd_jax.models import create_model


@base.register
class CrossEntropy(base.Method):
  """``CE(s, y)``: no teacher."""

  name = 'ce'
  needs_teacher = False

  def create_trainable(self, teacher, data, rngs):
    del teacher
    model = create_model(
      self.config.model, num_classes=data.num_classes, rngs=rngs
    )
    return base.Trainable(student=model)

  def loss(self, trainable, teacher_out, batch, context):
    del teacher_out, context
    logits, _ = features.forward_with_features(
      trainable.student, batch.images, train=True
    )
    ce = losses.cross_entropy(logits, batch.labels)
    return ce, {'ce': ce}, logits
