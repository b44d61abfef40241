"""Hinton's knowledge distillation, RepDistiller's KD run:
``w_ce * CE(s, y) + w_kd * KD_T(s, t)`` (0.1, 0.9, T 4 by default)."""

from mhkd_jax import features, losses
from mhkd_jax.distill.base import Trainable
from mhkd_jax.models import create_model

NEEDS_TEACHER = True


def create_trainable(config, *, teacher, num_classes, input_shape, rngs):
  del teacher, input_shape
  model = create_model(config.model, num_classes=num_classes, rngs=rngs)
  return Trainable(model=model)


def compute_loss(trainable, teacher_out, images, labels, config):
  kd = config.kd
  logits, _ = features.forward_with_features(
    trainable.model, images, train=True
  )
  terms = {
    'ce': losses.cross_entropy(logits, labels),
    'kd/logits': losses.kd_loss(logits, teacher_out.logits, kd.temperature),
  }
  total = kd.w_ce * terms['ce'] + kd.w_kd * terms['kd/logits']
  return total, terms, logits
