"""Vanilla training with cross-entropy: students without a teacher, and
the teachers themselves."""

from flax import nnx

from mhkd_jax import features, losses
from mhkd_jax.distill.base import Trainable
from mhkd_jax.models import create_model

NEEDS_TEACHER = False


def create_trainable(config, *, teacher, num_classes, input_shape, rngs):
  del teacher, input_shape
  model = create_model(config.model, num_classes=num_classes, rngs=rngs)
  return Trainable(model=model)


def compute_loss(trainable, teacher_out, images, labels, config):
  del teacher_out, config
  logits, _ = features.forward_with_features(
    trainable.model, images, train=True
  )
  ce = losses.cross_entropy(logits, labels)
  return ce, {'ce': ce}, logits
